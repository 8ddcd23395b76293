"""Build-time check of the serving image: the OpenVINO execution provider plugin, when
installed, registers with this onnxruntime. Prints the devices it offers on the build
machine (none on non-Intel CPUs with plugin 1.8.x, which list Intel devices only); exits 1
if the library does not load. Without the plugin (GPU variant, OPENVINO=0) it says so."""

import importlib.util
import sys

if importlib.util.find_spec("onnxruntime_ep_openvino") is None:
    print("onnxruntime-ep-openvino: not installed")
    sys.exit(0)

import onnxruntime as ort
import onnxruntime_ep_openvino as plugin

name = plugin.get_ep_name()
try:
    ort.register_execution_provider_library(name, plugin.get_library_path())
except Exception as exc:
    print(
        f"onnxruntime-ep-openvino: {name} does not load into onnxruntime {ort.__version__}: {exc}"
    )
    sys.exit(1)
devices = [str(d.device.type).rsplit(".", 1)[-1] for d in ort.get_ep_devices() if d.ep_name == name]
print(f"onnxruntime-ep-openvino: {name} registered; devices here: {', '.join(devices) or 'none'}")
