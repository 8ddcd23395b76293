"""Runs inside the tritonclient virtualenv (see test_model_control.py); prints JSON results.

argv: ADDRESS LOADED_MODEL OTHER_MODEL
"""

import json
import sys

import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

address, loaded, other = sys.argv[1:4]
client = grpcclient.InferenceServerClient(url=address)
out = {"index_before": client.get_model_repository_index(as_json=True)}
client.load_model(other)
out["other_ready_after_load"] = client.is_model_ready(other)
out["index_loaded"] = client.get_model_repository_index(as_json=True)
client.unload_model(loaded)
out["loaded_ready_after_unload"] = client.is_model_ready(loaded)
out["index_after"] = client.get_model_repository_index(as_json=True)
try:
    client.load_model("no-such-model")
    out["missing"] = "loaded"
except InferenceServerException as exc:
    out["missing"] = [exc.status(), exc.message()]
print(json.dumps(out))
