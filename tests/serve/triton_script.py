"""Runs inside the tritonclient virtualenv (see test_tritonclient.py); prints JSON results.

argv: ADDRESS MODEL PIXELS.npy OUR_DESCRIPTORS.bin [PLAIN_NAME]
PLAIN_NAME: an export's plain name that the server resolves to a variant model.
"""

import json
import sys

import numpy as np
import tritonclient.grpc as grpcclient
from google.protobuf import descriptor_pb2
from tritonclient.grpc import model_config_pb2, service_pb2

address, model, pixels_path, descriptors_path = sys.argv[1:5]
pixels = np.load(pixels_path)
out = {}
client = grpcclient.InferenceServerClient(url=address)
out["live"] = client.is_server_live()
out["ready"] = client.is_server_ready()
out["model_ready"] = client.is_model_ready(model)
out["server_metadata"] = client.get_server_metadata(as_json=True)
out["model_metadata"] = client.get_model_metadata(model, as_json=True)
out["model_config"] = client.get_model_config(model, as_json=True)

inp = grpcclient.InferInput("image", list(pixels.shape), "UINT8")
inp.set_data_from_numpy(pixels)
result = client.infer(model, [inp], outputs=[grpcclient.InferRequestedOutput("probs")])
out["probs"] = result.as_numpy("probs").tolist()
classified = client.infer(
    model, [inp], outputs=[grpcclient.InferRequestedOutput("probs", class_count=2)]
)
out["classification"] = [[b.decode() for b in row] for row in classified.as_numpy("probs")]
out["statistics"] = client.get_inference_statistics(model, as_json=True)
if len(sys.argv) > 5:
    plain = sys.argv[5]
    out["plain"] = {
        "model_ready": client.is_model_ready(plain),
        "model_metadata": client.get_model_metadata(plain, as_json=True),
        "model_config": client.get_model_config(plain, as_json=True),
        "probs": client.infer(plain, [inp]).as_numpy("probs").tolist(),
    }

# Wire compatibility: every field we define has tritonclient's number, type and label.
with open(descriptors_path, "rb") as f:
    ours = descriptor_pb2.FileDescriptorSet.FromString(f.read())
theirs = {}
for module in (service_pb2, model_config_pb2):
    proto = descriptor_pb2.FileDescriptorProto()
    module.DESCRIPTOR.CopyToProto(proto)

    def walk(prefix, messages):
        for m in messages:
            theirs[prefix + m.name] = {f.name: (f.number, f.type, f.label) for f in m.field}
            walk(prefix + m.name + ".", m.nested_type)

    walk("", proto.message_type)
mismatches, checked = [], 0
for file in ours.file:

    def walk_ours(prefix, messages):
        global checked
        for m in messages:
            name = prefix + m.name
            for f in m.field:
                checked += 1
                want = theirs.get(name, {}).get(f.name)
                if want != (f.number, f.type, f.label):
                    mismatches.append(
                        f"{name}.{f.name}: ours {(f.number, f.type, f.label)}, triton {want}"
                    )
            walk_ours(name + ".", m.nested_type)

    walk_ours("", file.message_type)
out["fields_checked"] = checked
out["mismatches"] = mismatches
print(json.dumps(out))
