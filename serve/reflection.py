"""gRPC server reflection under both names clients use: `grpc.reflection.v1` and `v1alpha`.

grpcio-reflection implements only v1alpha; v1 is the same protocol under a new package
name (identical messages and field numbers), and newer grpcurl, Postman and grpcui ask
for v1 first. So one servicer answers both names, with v1alpha's message classes.
"""

from __future__ import annotations

from collections.abc import Iterable

import grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2

V1ALPHA_SERVICE = reflection.SERVICE_NAME
V1_SERVICE = "grpc.reflection.v1.ServerReflection"


def enable_reflection(server: grpc.aio.Server, service_names: Iterable[str]) -> None:
    servicer = reflection.aio.ReflectionServicer([*service_names, V1_SERVICE, V1ALPHA_SERVICE])
    methods = {
        "ServerReflectionInfo": grpc.stream_stream_rpc_method_handler(
            servicer.ServerReflectionInfo,
            request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
            response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString,
        )
    }
    server.add_generic_rpc_handlers(
        [
            grpc.method_handlers_generic_handler(name, methods)
            for name in (V1_SERVICE, V1ALPHA_SERVICE)
        ]
    )
