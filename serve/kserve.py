"""`inference.GRPCInferenceService`: the Open Inference Protocol (KServe v2) servicer.

Thin: tensors in the request become a numpy array (or a list of encoded images), one data
plane call, and the outputs go back in `raw_output_contents` as tritonclient expects.
Input tensor: the model's input name, UINT8 or FP32 [N, H, W, 3], or BYTES [N] / [N, 1]
of encoded images. Requested output `classification` (int64 k) gives BYTES [N, k] of
"score:index:label".
"""

from __future__ import annotations

import json
import struct
from collections.abc import AsyncIterator

import grpc
import numpy as np

from tl2edge import __version__
from tl2edge._proto import grpc_service_pb2 as pb
from tl2edge._proto import grpc_service_pb2_grpc as pb_grpc
from tl2edge._proto import model_config_pb2 as mc
from tl2edge.serve.dataplane import MAX_IMAGES_PER_REQUEST, DataPlane, LoadedModel, top_k
from tl2edge.serve.errors import InvalidInput, ServeError, rpc_errors, stream_error_text
from tl2edge.serve.limits import element_count, shown
from tl2edge.serve.providers import CUDA, TENSORRT, selection_parameters
from tl2edge.serve.wire import Refused

PLATFORM = "onnxruntime_onnx"
EXTENSIONS = [
    "classification", "model_configuration", "model_repository", "statistics",
    "binary_tensor_data",
]  # fmt: skip
DTYPES = {"UINT8": np.dtype("<u1"), "FP32": np.dtype("<f4")}
CONFIG_TYPES = {"UINT8": mc.TYPE_UINT8, "FP32": mc.TYPE_FP32}
# The InferTensorContents field each datatype travels in (KServe v2), and its numpy type.
CONTENTS_FIELDS = {
    "UINT8": ("uint_contents", np.uint32),
    "FP32": ("fp32_contents", np.float32),
    "BYTES": ("bytes_contents", None),
}

# Bytes per value of each numeric InferTensorContents field once parsed.
PARSED_WIDTH = {
    "bool_contents": 1, "int_contents": 4, "int64_contents": 8, "uint_contents": 4,
    "uint64_contents": 8, "fp32_contents": 4, "fp64_contents": 8,
}  # fmt: skip
ENTRY_BYTES = 256  # a generous size for one name, shape, parameter or tensor header


def held_bytes(request: pb.ModelInferRequest) -> int:
    """The bytes a parsed request holds, from field lengths, for `--max-inflight-mb`.

    Typed values count at their parsed width (a uint32 is 4 bytes even if it was 1 on the
    wire). Unlike `ByteSize()`, which walks every value (about 25 ms for 2 M typed values,
    on the event loop), this costs a few `len()` calls per tensor.
    """
    n = ENTRY_BYTES * (1 + len(request.parameters) + len(request.outputs))
    n += sum(map(len, request.raw_input_contents))
    for tensor in request.inputs:
        n += ENTRY_BYTES * (1 + len(tensor.parameters)) + 8 * len(tensor.shape)
        contents = tensor.contents
        n += sum(len(getattr(contents, f)) * w for f, w in PARSED_WIDTH.items())
        n += sum(map(len, contents.bytes_contents))
    return n


def serialize_bytes(items: list[bytes]) -> bytes:
    """BYTES tensor wire form: each element as a 4-byte little-endian length + its bytes."""
    return b"".join(struct.pack("<I", len(b)) + b for b in items)


def deserialize_bytes(raw: bytes, limit: int | None = None) -> list[bytes]:
    """The elements of a BYTES tensor; more than `limit` of them is refused while reading."""
    items: list[bytes] = []
    offset = 0
    while offset < len(raw):
        if limit is not None and len(items) >= limit:
            raise InvalidInput(f"BYTES tensor has more than {limit} elements")
        if offset + 4 > len(raw):
            raise InvalidInput("BYTES tensor is truncated: a 4-byte length prefix is cut off")
        (n,) = struct.unpack_from("<I", raw, offset)
        offset += 4
        if offset + n > len(raw):
            raise InvalidInput(
                f"BYTES tensor is truncated: element {len(items)} announces {n} bytes, "
                f"{len(raw) - offset} remain"
            )
        items.append(raw[offset : offset + n])
        offset += n
    return items


def request_input(request: pb.ModelInferRequest, model: LoadedModel) -> np.ndarray | list[bytes]:
    """The one input tensor of the request: pixels [N, H, W, 3] or encoded images."""
    if len(request.inputs) != 1:
        raise InvalidInput(
            f"{len(request.inputs)} input tensors; model {model.name} takes exactly one, "
            f"{model.input_name!r}"
        )
    tensor = request.inputs[0]
    if tensor.name != model.input_name:
        raise InvalidInput(
            f"unknown input {shown(tensor.name)}; model {model.name} takes {model.input_name!r}"
        )
    raw = request.raw_input_contents
    if raw and len(raw) != 1:
        raise InvalidInput(f"{len(raw)} raw_input_contents for 1 input; send one per input")
    if raw and tensor.HasField("contents"):
        raise InvalidInput("input has both raw_input_contents and contents; send one of them")
    shape = list(tensor.shape)
    count = element_count(shape)
    h, w = model.image_size
    if tensor.HasField("contents"):
        check_contents_field(tensor)
    if tensor.datatype == "BYTES":
        if len(shape) not in (1, 2) or (len(shape) == 2 and shape[1] != 1):
            raise InvalidInput(
                f"BYTES input shape {shape}: send encoded images as shape [N] or [N, 1]"
            )
        if shape[0] > MAX_IMAGES_PER_REQUEST:
            raise InvalidInput(
                f"{shape[0]} images in one request; the limit is {MAX_IMAGES_PER_REQUEST}"
            )
        items = (
            deserialize_bytes(raw[0], limit=shape[0])
            if raw
            else list(tensor.contents.bytes_contents)
        )
        if len(items) != shape[0]:
            raise InvalidInput(
                f"BYTES input has {len(items)} elements, its shape {shape} says {shape[0]}"
            )
        return items
    dtype = DTYPES.get(tensor.datatype)
    if dtype is None:
        raise InvalidInput(
            f"input datatype {shown(tensor.datatype)} is not accepted; send UINT8 or FP32 pixels "
            f"[N, {h}, {w}, 3] or BYTES encoded images [N]"
        )
    if len(shape) != 4 or shape[1:] != [h, w, 3]:
        raise InvalidInput(
            f"input shape {shape} does not match model {model.name}: expected [N, {h}, {w}, 3] "
            f"(RGB pixels, NHWC); send BYTES to have the server decode and resize images"
        )
    if shape[0] > MAX_IMAGES_PER_REQUEST:
        raise InvalidInput(
            f"{shape[0]} images in one request; the limit is {MAX_IMAGES_PER_REQUEST}"
        )
    if raw:
        expected = count * dtype.itemsize
        if len(raw[0]) != expected:
            raise InvalidInput(
                f"raw input has {len(raw[0])} bytes; shape {shape} of {tensor.datatype} needs "
                f"{expected}"
            )
        return np.frombuffer(raw[0], dtype=dtype).reshape(shape)
    return typed_contents(tensor, shape, count, dtype)


def check_contents_field(tensor: pb.ModelInferRequest.InferInputTensor) -> None:
    """Typed contents must be in the field of the tensor's datatype and in no other."""
    expected = CONTENTS_FIELDS.get(tensor.datatype, (None, None))[0]
    for field, _ in tensor.contents.ListFields():
        if field.name != expected:
            where = f"send them in {expected}" if expected else "send UINT8, FP32 or BYTES"
            raise InvalidInput(
                f"{shown(tensor.datatype)} input has values in contents.{field.name}; {where}"
            )


def typed_contents(
    tensor: pb.ModelInferRequest.InferInputTensor, shape: list[int], count: int, dtype: np.dtype
) -> np.ndarray:
    """Pixels from `contents`, the count checked before any conversion (never widened)."""
    field, wire_type = CONTENTS_FIELDS[tensor.datatype]
    values = getattr(tensor.contents, field)
    if len(values) != count:
        raise InvalidInput(f"input contents have {len(values)} values; shape {shape} needs {count}")
    array = np.array(values, dtype=wire_type)
    if tensor.datatype == "UINT8" and array.size and int(array.max()) > 255:
        raise InvalidInput("UINT8 contents hold values above 255")
    return array.astype(dtype, copy=False).reshape(shape)


def _classification_k(request: pb.ModelInferRequest, model: LoadedModel) -> int:
    """0 for plain probabilities, else the requested top-k."""
    if not request.outputs:
        return 0
    if len(request.outputs) != 1 or request.outputs[0].name != model.output_name:
        names = ", ".join(shown(o.name) for o in request.outputs[:4])
        raise InvalidInput(
            f"unknown output(s) [{names}]; model {model.name} has {model.output_name!r}"
        )
    param = request.outputs[0].parameters.get("classification")
    if param is None:
        return 0
    if param.WhichOneof("parameter_choice") != "int64_param" or param.int64_param < 1:
        raise InvalidInput("output parameter 'classification' must be an int64 >= 1")
    return int(param.int64_param)


def infer_response(
    request: pb.ModelInferRequest, model: LoadedModel, probs: np.ndarray, k: int
) -> pb.ModelInferResponse:
    response = pb.ModelInferResponse(
        model_name=model.name, model_version=str(model.version), id=request.id
    )
    out = response.outputs.add(name=model.output_name)
    if k:
        rows = top_k(probs, k, model.labels)
        out.datatype = "BYTES"
        out.shape.extend([len(rows), len(rows[0])])
        response.raw_output_contents.append(
            serialize_bytes(
                [f"{p.score:f}:{p.index}:{p.label}".encode() for row in rows for p in row]
            )
        )
    else:
        out.datatype = "FP32"
        out.shape.extend(probs.shape)
        response.raw_output_contents.append(np.ascontiguousarray(probs, dtype="<f4").tobytes())
    return response


class KServeServicer(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(self, plane: DataPlane) -> None:
        self.plane = plane

    async def _infer(
        self, request: pb.ModelInferRequest | Refused, api: str
    ) -> pb.ModelInferResponse:
        if isinstance(request, Refused):  # settled by serve/wire.py before parsing
            async with self.plane.admit(api, request.model_name):
                raise request.error
        async with self.plane.admit(api, request.model_name, held_bytes(request)):
            model = self.plane.get(request.model_name, request.model_version)
            k = _classification_k(request, model)
            data = request_input(request, model)
            if isinstance(data, list):
                data = await self.plane.decode(model, data)
            model, probs = await self.plane.infer(model, data, pinned=bool(request.model_version))
            return infer_response(request, model, probs, k)

    @rpc_errors
    async def ModelInfer(self, request, context):
        return await self._infer(request, "kserve.ModelInfer")

    async def ModelStreamInfer(
        self,
        request_iterator: AsyncIterator[pb.ModelInferRequest],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[pb.ModelStreamInferResponse]:
        async def handle(request: pb.ModelInferRequest) -> pb.ModelStreamInferResponse:
            try:
                response = await self._infer(request, "kserve.ModelStreamInfer")
            except Exception as exc:  # reported in the stream, which continues
                return pb.ModelStreamInferResponse(
                    error_message=stream_error_text(exc),
                    infer_response=pb.ModelInferResponse(
                        model_name=request.model_name, id=request.id
                    ),
                )
            return pb.ModelStreamInferResponse(infer_response=response)

        async for response in self.plane.stream(request_iterator, handle, context):
            yield response

    @rpc_errors
    async def ServerLive(self, request, context):
        return pb.ServerLiveResponse(live=True)

    @rpc_errors
    async def ServerReady(self, request, context):
        return pb.ServerReadyResponse(ready=self.plane.ready and not self.plane.draining)

    @rpc_errors
    async def ModelReady(self, request, context):
        try:
            self.plane.get(request.name, request.version)
        except ServeError:
            return pb.ModelReadyResponse(ready=False)
        return pb.ModelReadyResponse(ready=self.plane.ready and not self.plane.draining)

    @rpc_errors
    async def ServerMetadata(self, request, context):
        return pb.ServerMetadataResponse(name="tl2edge", version=__version__, extensions=EXTENSIONS)

    @rpc_errors
    async def ModelMetadata(self, request, context):
        model = self.plane.get(request.name, request.version)
        return pb.ModelMetadataResponse(
            name=model.name,
            versions=[str(v) for v in self.plane.versions(model.name)],
            platform=PLATFORM,
            inputs=[
                pb.ModelMetadataResponse.TensorMetadata(
                    name=model.input_name,
                    datatype=model.manifest.input.datatype,
                    shape=[-1, *model.image_size, 3],
                )
            ],
            outputs=[
                pb.ModelMetadataResponse.TensorMetadata(
                    name=model.output_name, datatype="FP32", shape=[-1, len(model.labels)]
                )
            ],
        )

    @rpc_errors
    async def ModelConfig(self, request, context):
        model = self.plane.get(request.name, request.version)
        batching = self.plane.batching
        gpu = any(p in (CUDA, TENSORRT) for p in model.providers)
        config = mc.ModelConfig(
            name=model.name,
            platform=PLATFORM,
            backend="onnxruntime",
            max_batch_size=batching.max_batch_size,
            input=[
                mc.ModelInput(
                    name=model.input_name,
                    data_type=CONFIG_TYPES.get(model.manifest.input.datatype, mc.TYPE_UINT8),
                    format=mc.ModelInput.FORMAT_NHWC,
                    dims=[*model.image_size, 3],
                )
            ],
            output=[
                mc.ModelOutput(
                    name=model.output_name, data_type=mc.TYPE_FP32, dims=[len(model.labels)]
                )
            ],
            instance_group=[
                mc.ModelInstanceGroup(
                    count=batching.instances,
                    kind=mc.ModelInstanceGroup.KIND_GPU if gpu else mc.ModelInstanceGroup.KIND_CPU,
                )
            ],
            dynamic_batching=mc.ModelDynamicBatching(
                max_queue_delay_microseconds=int(batching.max_batch_delay_ms * 1000)
            ),
        )
        params = {
            **self.plane.alias_parameters(request.name, model.name),
            "version": str(model.version),
            "variant": model.manifest.variant,
            "labels": json.dumps(model.labels),
            "providers": ",".join(model.providers),
            "preprocessing": model.manifest.preprocessing,
            **selection_parameters(model.selection),
        }
        for key, value in params.items():
            config.parameters[key].string_value = value
        return pb.ModelConfigResponse(config=config)

    @rpc_errors
    async def ModelStatistics(self, request, context):
        models = self.plane.loaded(request.name, request.version)
        return pb.ModelStatisticsResponse(model_stats=[_statistics(m) for m in models])

    # Model repository extension; the server has one repository, `repository_name` is unused.
    @rpc_errors
    async def RepositoryIndex(self, request, context):
        entries = self.plane.repository_index(ready_only=request.ready)
        return pb.RepositoryIndexResponse(
            models=[pb.RepositoryIndexResponse.ModelIndex(**e._asdict()) for e in entries]
        )

    @rpc_errors
    async def RepositoryModelLoad(self, request, context):
        await self.plane.load_model(request.model_name, list(request.parameters))
        return pb.RepositoryModelLoadResponse()

    @rpc_errors
    async def RepositoryModelUnload(self, request, context):
        await self.plane.unload_model(request.model_name)
        return pb.RepositoryModelUnloadResponse()


def _duration(d) -> pb.StatisticDuration:
    return pb.StatisticDuration(count=d.count, ns=d.ns)


def _statistics(model: LoadedModel) -> pb.ModelStatistics:
    s = model.stats
    with s.lock:
        return pb.ModelStatistics(
            name=model.name,
            version=str(model.version),
            last_inference=s.last_inference_ms,
            inference_count=s.inference_count,
            execution_count=s.execution_count,
            inference_stats=pb.InferStatistics(
                success=_duration(s.success),
                fail=_duration(s.fail),
                queue=_duration(s.queue),
                compute_infer=_duration(s.compute),
            ),
            batch_stats=[
                pb.InferBatchStatistics(batch_size=size, compute_infer=_duration(d))
                for size, d in sorted(s.batches.items())
            ],
        )
