"""`tl2edge.v1.Classifier`: images in, top-k labels out (unary and streaming)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import numpy as np

from tl2edge._proto import classifier_pb2 as pb
from tl2edge._proto import classifier_pb2_grpc as pb_grpc
from tl2edge.serve.dataplane import MAX_SIDE, DataPlane
from tl2edge.serve.errors import InvalidInput, rpc_errors, stream_error_text


def request_images(request: pb.ClassifyRequest) -> list[bytes | np.ndarray]:
    images: list[bytes | np.ndarray] = []
    for i, image in enumerate(request.images):
        kind = image.WhichOneof("source")
        if kind == "encoded":
            images.append(image.encoded)
        elif kind == "pixels":
            p = image.pixels
            if not (0 < p.height <= MAX_SIDE and 0 < p.width <= MAX_SIDE):
                raise InvalidInput(
                    f"image {i}: pixels are {p.height}x{p.width}; both must be 1..{MAX_SIDE}"
                )
            if len(p.data) != p.height * p.width * 3:
                raise InvalidInput(
                    f"image {i}: {len(p.data)} bytes of pixels, {p.height}x{p.width} RGB needs "
                    f"{p.height * p.width * 3}"
                )
            images.append(np.frombuffer(p.data, np.uint8).reshape(p.height, p.width, 3))
        else:
            raise InvalidInput(f"image {i} is empty: set `encoded` or `pixels`")
    return images


class ClassifierServicer(pb_grpc.ClassifierServicer):
    def __init__(self, plane: DataPlane) -> None:
        self.plane = plane

    async def _classify(self, request: pb.ClassifyRequest, api: str) -> pb.ClassifyResponse:
        async with self.plane.admit(api, request.model, request.ByteSize()):
            model = self.plane.model(request.model, request.model_version)
            images = request_images(request)
            model, rows = await self.plane.classify(
                model, images, request.top_k, pinned=bool(request.model_version)
            )
            return pb.ClassifyResponse(
                model=model.name,
                model_version=str(model.version),
                id=request.id,
                results=[
                    pb.Classification(
                        predictions=[
                            pb.Prediction(label=p.label, index=p.index, score=p.score) for p in row
                        ]
                    )
                    for row in rows
                ],
            )

    @rpc_errors
    async def Classify(self, request, context):
        return await self._classify(request, "classifier.Classify")

    async def ClassifyStream(
        self, request_iterator: AsyncIterator[pb.ClassifyRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.ClassifyResponse]:
        async def handle(request: pb.ClassifyRequest) -> pb.ClassifyResponse:
            try:
                return await self._classify(request, "classifier.ClassifyStream")
            except Exception as exc:  # reported in the stream, which continues
                return pb.ClassifyResponse(id=request.id, error=stream_error_text(exc))

        async for response in self.plane.stream(request_iterator, handle, context):
            yield response

    @rpc_errors
    async def ListModels(self, request, context):
        try:
            default = self.plane.default_model_name()
        except InvalidInput:
            default = ""
        out = pb.ListModelsResponse()
        for name, versions, target in self.plane.catalog():
            latest = versions[max(versions)]
            h, w = latest.image_size
            out.models.add(
                name=name,
                versions=[str(v) for v in versions],
                variant=latest.manifest.variant,
                labels=latest.labels,
                height=h,
                width=w,
                providers=latest.providers,
                is_default=name == default,
                resolves_to=target,
            )
        return out
