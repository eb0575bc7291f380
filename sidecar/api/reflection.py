"""Server reflection under both names: ``grpc.reflection.v1`` and ``v1alpha``.

grpcio-reflection ships only ``grpc.reflection.v1alpha.ServerReflection``;
current tools (grpcurl, Postman, grpc-js's reflection clients) ask for
``grpc.reflection.v1`` first. The two protocols are the same messages with
the same field numbers under another package, so ``enable_reflection``
serves v1 with grpcio-reflection's own servicer:

* the v1 messages are made at import from the v1alpha file descriptor
  (package, file name and type references renamed) and added to the default
  descriptor pool, unless some other library already put
  ``grpc/reflection/v1/reflection.proto`` there (then that one is used);
  so a v1 client can also describe the reflection service itself;
* a generic handler for ``grpc.reflection.v1.ServerReflection`` parses v1
  requests (the request guard then names ``grpc.reflection.v1`` types in its
  refusals), passes them to the servicer as v1alpha messages, and sends its
  v1alpha responses, whose bytes are those of the v1 responses.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from typing import Any, Final

import grpc  # type: ignore[import-untyped]
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from grpc_reflection.v1alpha import reflection  # type: ignore[import-untyped]
from grpc_reflection.v1alpha import reflection_pb2 as v1alpha_pb2

V1ALPHA_SERVICE: Final[str] = reflection.SERVICE_NAME
V1_PACKAGE: Final = "grpc.reflection.v1"
V1_SERVICE: Final = f"{V1_PACKAGE}.ServerReflection"
V1_FILE: Final = "grpc/reflection/v1/reflection.proto"


def _v1_file() -> Any:
    """The v1 reflection file descriptor, from the default pool (added if missing)."""
    pool = descriptor_pool.Default()
    try:
        return pool.FindFileByName(V1_FILE)
    except KeyError:
        pass
    proto = descriptor_pb2.FileDescriptorProto()
    v1alpha_pb2.DESCRIPTOR.CopyToProto(proto)
    old = f".{proto.package}."
    proto.name = V1_FILE
    proto.package = V1_PACKAGE
    proto.options.Clear()
    proto.options.java_package = "io.grpc.reflection.v1"
    proto.options.java_multiple_files = True
    proto.options.java_outer_classname = "ServerReflectionProto"
    proto.options.go_package = "google.golang.org/grpc/reflection/grpc_reflection_v1"
    for message in proto.message_type:
        for field in message.field:
            if field.type_name.startswith(old):
                field.type_name = f".{V1_PACKAGE}.{field.type_name.removeprefix(old)}"
    for service in proto.service:
        for method in service.method:
            method.input_type = f".{V1_PACKAGE}.{method.input_type.removeprefix(old)}"
            method.output_type = f".{V1_PACKAGE}.{method.output_type.removeprefix(old)}"
    pool.AddSerializedFile(proto.SerializeToString())
    return pool.FindFileByName(V1_FILE)


V1_REQUEST: Final = message_factory.GetMessageClass(
    _v1_file().message_types_by_name["ServerReflectionRequest"]
)
"""``grpc.reflection.v1.ServerReflectionRequest``."""


def enable_reflection(service_names: Iterable[str], server: Any) -> None:
    """Serve reflection v1 and v1alpha on the ``grpc.aio`` ``server`` (before it
    starts), listing ``service_names`` and both reflection services."""
    names = (*service_names, V1ALPHA_SERVICE, V1_SERVICE)
    servicer = reflection.aio.ReflectionServicer(names)
    reflection.enable_server_reflection(names, server)

    async def info(requests: AsyncIterator[Any], context: Any) -> AsyncIterator[Any]:
        async def as_v1alpha() -> AsyncIterator[Any]:
            async for request in requests:
                yield v1alpha_pb2.ServerReflectionRequest.FromString(request.SerializeToString())

        responses = servicer.ServerReflectionInfo(as_v1alpha(), context)
        try:
            async for response in responses:
                yield response
        finally:
            await responses.aclose()

    handler = grpc.stream_stream_rpc_method_handler(
        info,
        request_deserializer=V1_REQUEST.FromString,
        response_serializer=v1alpha_pb2.ServerReflectionResponse.SerializeToString,
    )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(V1_SERVICE, {"ServerReflectionInfo": handler}),)
    )
