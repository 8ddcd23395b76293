"""Python client for a tl2edge server; needs only grpcio, protobuf, numpy and pillow.

    from tl2edge.client import Client

    with Client("localhost:8500") as client:
        client.wait_until_serving(timeout=30)
        for preds in client.classify([open("cat.jpg", "rb").read()], top_k=3):
            print(preds[0].label, preds[0].score)

`classify` uses the Classify API (the server decodes and resizes); `infer` sends raw pixels
over KServe v2 and returns the probabilities. Server errors surface as `grpc.RpcError`;
branch on `.code()` (INVALID_ARGUMENT, NOT_FOUND, UNAVAILABLE, ...).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import NamedTuple

import grpc
import numpy as np

from tl2edge._proto import classifier_pb2 as cpb
from tl2edge._proto import classifier_pb2_grpc as cpb_grpc
from tl2edge._proto import grpc_service_pb2 as kpb
from tl2edge._proto import grpc_service_pb2_grpc as kpb_grpc

ImageInput = bytes | np.ndarray | str | os.PathLike
HEALTH_CHECK = "/grpc.health.v1.Health/Check"
HEALTH_STATUS = {0: "UNKNOWN", 1: "SERVING", 2: "NOT_SERVING", 3: "SERVICE_UNKNOWN"}


class Prediction(NamedTuple):
    label: str
    index: int
    score: float


class ModelInfo(NamedTuple):
    name: str
    versions: list[str]
    variant: str
    labels: list[str]
    image_size: tuple[int, int]
    providers: list[str]
    is_default: bool
    resolves_to: str = ""  # a plain export name: the variant model it serves now


# The health protocol is two one-field messages; encoding them here keeps the client free
# of grpcio-health-checking (and its descriptors out of the caller's process).
def _encode_health_request(service: str) -> bytes:
    data = service.encode()
    if not data:
        return b""
    return b"\x0a" + _varint(len(data)) + data


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _decode_health_response(data: bytes) -> int:
    """The `status` field (1, varint) of HealthCheckResponse; 0 (UNKNOWN) if absent."""
    if len(data) >= 2 and data[0] == 0x08:
        return data[1] & 0x7F
    return 0


def _read_file(path: str | os.PathLike | None) -> bytes | None:
    return Path(path).read_bytes() if path else None


class Client:
    """A connection to one server. Thread-safe; reuse it (channels are expensive)."""

    def __init__(
        self,
        address: str,
        *,
        tls_ca: str | os.PathLike | None = None,
        tls_cert: str | os.PathLike | None = None,
        tls_key: str | os.PathLike | None = None,
        token: str | None = None,
        timeout: float = 30.0,
        max_message_mb: int = 64,
        server_name: str | None = None,
    ) -> None:
        """`tls_ca` turns on TLS (`tls_cert`/`tls_key` add a client certificate for mutual
        TLS); `token` is sent as `authorization: Bearer <token>`; `timeout` is the default
        deadline of each call in seconds."""
        self.address = address
        self.timeout = timeout
        limit = max_message_mb * 1024 * 1024
        options: list[tuple[str, object]] = [
            ("grpc.max_receive_message_length", limit),
            ("grpc.max_send_message_length", limit),
        ]
        if server_name:
            options.append(("grpc.ssl_target_name_override", server_name))
        if tls_ca or tls_cert:
            credentials = grpc.ssl_channel_credentials(
                root_certificates=_read_file(tls_ca),
                private_key=_read_file(tls_key),
                certificate_chain=_read_file(tls_cert),
            )
            self._channel = grpc.secure_channel(address, credentials, options=options)
        else:
            self._channel = grpc.insecure_channel(address, options=options)
        self._metadata = (("authorization", f"Bearer {token}"),) if token else ()
        self._kserve = kpb_grpc.GRPCInferenceServiceStub(self._channel)
        self._classifier = cpb_grpc.ClassifierStub(self._channel)
        self._health = self._channel.unary_unary(
            HEALTH_CHECK,
            request_serializer=lambda x: x,
            response_deserializer=lambda x: x,
        )

    # -- lifecycle ----------------------------------------------------------------------------
    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- health -------------------------------------------------------------------------------
    def health(self, model: str | None = None, *, timeout: float | None = None) -> str:
        """SERVING, NOT_SERVING or SERVICE_UNKNOWN for the server (or one model).

        An unknown model name gives SERVICE_UNKNOWN; an unreachable server raises RpcError.
        """
        try:
            raw = self._health(
                _encode_health_request(model or ""),
                timeout=timeout or self.timeout,
                metadata=self._metadata,
            )
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                return "SERVICE_UNKNOWN"
            raise
        return HEALTH_STATUS.get(_decode_health_response(raw), "UNKNOWN")

    def wait_until_serving(self, timeout: float = 30.0, model: str | None = None) -> None:
        """Block until health is SERVING; TimeoutError (with the last state) otherwise."""
        deadline = time.monotonic() + timeout
        last = "no answer"
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"{self.address} not SERVING after {timeout:g} s (last: {last})")
            try:
                last = self.health(model, timeout=max(0.05, min(remaining, 2.0)))
                if last == "SERVING":
                    return
            except grpc.RpcError as exc:
                last = f"{exc.code().name}: {exc.details()}"
            time.sleep(min(0.1, max(0.0, deadline - time.monotonic())))

    # -- Classify API -------------------------------------------------------------------------
    def classify(
        self,
        images: Sequence[ImageInput],
        model: str | None = None,
        top_k: int = 5,
        *,
        version: str | None = None,
        timeout: float | None = None,
    ) -> list[list[Prediction]]:
        """Top-k (label, index, score) per image, best first.

        images: encoded image bytes, file paths, or uint8 RGB arrays [H, W, 3] (any size:
        the server resizes with the training filter).
        """
        request = _classify_request(images, model, top_k, version)
        response = self._classifier.Classify(
            request, timeout=timeout or self.timeout, metadata=self._metadata
        )
        return _predictions(response)

    def classify_stream(
        self,
        batches: Iterable[Sequence[ImageInput]],
        model: str | None = None,
        top_k: int = 5,
    ) -> Iterator[list[list[Prediction]]]:
        """Stream frames (one request per item of `batches`); yields results in order.

        A request the server rejects raises RpcError with its status, ending the stream.
        """
        requests = (
            _classify_request(images, model, top_k, None, id=str(i))
            for i, images in enumerate(batches)
        )
        for response in self._classifier.ClassifyStream(requests, metadata=self._metadata):
            if response.error:
                raise _StreamError(response.error)
            yield _predictions(response)

    def models(self) -> list[ModelInfo]:
        response = self._classifier.ListModels(
            cpb.ListModelsRequest(), timeout=self.timeout, metadata=self._metadata
        )
        return [
            ModelInfo(
                m.name,
                list(m.versions),
                m.variant,
                list(m.labels),
                (m.height, m.width),
                list(m.providers),
                m.is_default,
                m.resolves_to,
            )
            for m in response.models
        ]

    # -- KServe v2 ----------------------------------------------------------------------------
    def infer(
        self,
        model: str,
        pixels: np.ndarray,
        *,
        version: str | None = None,
        input_name: str = "image",
        timeout: float | None = None,
    ) -> np.ndarray:
        """Probabilities [N, C] for uint8 (or float 0..255) RGB pixels [N, H, W, 3]."""
        pixels = np.asarray(pixels)
        if pixels.ndim == 3:
            pixels = pixels[None]
        datatype = "UINT8" if pixels.dtype == np.uint8 else "FP32"
        data = np.ascontiguousarray(pixels, dtype="<u1" if datatype == "UINT8" else "<f4")
        request = kpb.ModelInferRequest(model_name=model, model_version=version or "")
        request.inputs.add(name=input_name, datatype=datatype, shape=list(data.shape))
        request.raw_input_contents.append(data.tobytes())
        response = self._kserve.ModelInfer(
            request, timeout=timeout or self.timeout, metadata=self._metadata
        )
        out = response.outputs[0]
        return np.frombuffer(response.raw_output_contents[0], dtype="<f4").reshape(tuple(out.shape))


class _StreamError(grpc.RpcError):
    """A per-message error reported inside a stream ('INVALID_ARGUMENT: ...')."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        name, _, message = text.partition(": ")
        self._code = getattr(grpc.StatusCode, name, grpc.StatusCode.UNKNOWN)
        self._details = message or text

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details

    def __str__(self) -> str:
        return f"{self._code.name}: {self._details}"


def _image_message(image: ImageInput) -> cpb.Image:
    if isinstance(image, np.ndarray):
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(
                f"pixel arrays must be uint8 [H, W, 3]; got {image.dtype} {list(image.shape)}"
            )
        h, w, _ = image.shape
        return cpb.Image(pixels=cpb.RawImage(data=image.tobytes(), height=h, width=w))
    if isinstance(image, bytes | bytearray):
        return cpb.Image(encoded=bytes(image))
    return cpb.Image(encoded=Path(image).read_bytes())


def _classify_request(
    images: Sequence[ImageInput],
    model: str | None,
    top_k: int,
    version: str | None,
    id: str = "",
) -> cpb.ClassifyRequest:
    if isinstance(images, bytes | np.ndarray | str | os.PathLike):
        images = [images]  # type: ignore[list-item]
    return cpb.ClassifyRequest(
        model=model or "",
        model_version=version or "",
        top_k=top_k,
        id=id,
        images=[_image_message(i) for i in images],
    )


def _predictions(response: cpb.ClassifyResponse) -> list[list[Prediction]]:
    return [
        [Prediction(p.label, p.index, p.score) for p in result.predictions]
        for result in response.results
    ]
