"""The one way this sidecar builds a gRPC server: bounds, and bad bytes refused cleanly.

Every ``grpc.aio`` server of the sidecar (worker API, probe-only health
port, peer port) comes from ``new_server(bounds, ...)``. Two things happen
there, the same way for all of them.

Theory of operation
-------------------
*Bad bytes.* gRPC Python parses a request with the method handler's
``request_deserializer`` before any servicer code runs; a deserializer that
raises (protobuf's ``DecodeError`` on a truncated message, or on a string
field that is not UTF-8, such as a lone surrogate a JavaScript client
encoded) ends the call with UNKNOWN and ``"Unexpected <class ...>: ..."``.
The server's interceptors, however, run *before* that parse: they pick the
handler, and gRPC uses the deserializer of the handler they return. So
``RequestGuard``, the innermost interceptor, hands gRPC a copy of each
handler whose deserializer never raises (it returns a per-method sentinel
instead) and whose behaviour checks for that sentinel first: a unary request
that did not parse is refused with INVALID_ARGUMENT and one line naming the
message type ("request is not a valid raftsidecar.worker.v1.CampaignRequest"),
before the servicer sees it; in a request stream, the iterator the servicer
reads refuses the call the same way when the malformed message comes up, so
the servicer's own ``finally`` blocks run (a KeepAlive stream ended this way
counts as broken). Servicers must read request streams through that
iterator, never ``context.read()``. A synchronous behaviour (which gRPC runs
on a thread) gets the same check with a plain status, and no stream count.

*Stream bounds.* The same wrapper counts the open calls of every streaming
method of the server; a call beyond ``ServerBounds.max_streams_per_method``
is refused with RESOURCE_EXHAUSTED before the servicer runs. A per-method
count (not one total) keeps a client that leaks Observe streams from
starving KeepAlive renewals. The count drops when the call's coroutine ends,
however it ends: the wrapper is a coroutine that writes the servicer's
responses itself and closes the servicer's generator in ``finally``, not a
generator around a generator (which would be left for the garbage collector
when gRPC stops reading it).

*Connection bounds* are gRPC channel arguments (``ServerBounds.options``):
HTTP/2 streams per connection, message size, keep-alive ping enforcement,
the server's own keep-alive pings, connection idle and age limits, and a cap
on concurrent calls of the whole server (gRPC answers RESOURCE_EXHAUSTED
"Concurrent RPC limit exceeded!" beyond it). The numbers chosen for each
server, and why, are in docs/sidecar.md ("Server bounds").

How a refusal is written is the caller's (``Refuse``): the worker API adds
its ``google.rpc.ErrorInfo``; the peer port sends a plain status.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, NoReturn

import grpc  # type: ignore[import-untyped]
import structlog

_log = structlog.get_logger("sidecar.grpcserver")

MALFORMED_REQUEST: Final = "MALFORMED_REQUEST"
"""Reason of the INVALID_ARGUMENT sent for a request that does not parse."""
TOO_MANY_STREAMS: Final = "TOO_MANY_STREAMS"
"""Reason of the RESOURCE_EXHAUSTED sent beyond a method's stream bound."""

Refuse = Callable[[Any, Any, str, str], Awaitable[NoReturn]]
"""``await refuse(context, code, reason, message)`` ends the call (raises, as
``context.abort`` does)."""


async def plain_refusal(context: Any, code: Any, reason: str, message: str) -> NoReturn:
    """A status code and one line, nothing else (the peer port's refusals)."""
    del reason
    await context.abort(code, message)
    raise AssertionError("unreachable: context.abort raises")


@dataclass(frozen=True, slots=True)
class ServerBounds:
    """What one client can hold open on one server; see docs/sidecar.md."""

    name: str
    """The server, in log lines ("worker API", "health", "peer")."""
    max_receive_message_bytes: int
    """Largest request message; gRPC refuses a larger one with RESOURCE_EXHAUSTED."""
    max_concurrent_streams: int
    """HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS: calls open at once on one
    connection (a client queues the ones beyond it; nothing fails)."""
    max_concurrent_rpcs: int
    """Calls open at once on the whole server, all methods and connections."""
    max_streams_per_method: int
    """Open calls of one streaming method on the whole server (default)."""
    stream_limits: Mapping[str, int] = field(default_factory=dict)
    """Per full method name (``/pkg.Service/Method``): overrides the default."""
    permit_keepalive_without_calls: bool = False
    """Whether a client may ping a connection that carries no call."""
    min_ping_interval_ms: int = 5_000
    """Client pings closer together than this (while the server sends no
    data) are strikes; ``max_ping_strikes`` + 1 of them close the connection
    (GOAWAY ENHANCE_YOUR_CALM "too_many_pings")."""
    max_ping_strikes: int = 2
    keepalive_time_ms: int = 60_000
    """The server pings an idle connection this often to find dead clients."""
    keepalive_timeout_ms: int = 20_000
    """...and closes it when the ping is not answered within this."""
    max_connection_idle_ms: int | None = None
    """Close a connection that carried no call for this long (None: never)."""
    max_connection_age_ms: int | None = None
    """Close any connection this old (None: never), after ``..._grace_ms`` for its calls."""
    max_connection_age_grace_ms: int | None = None

    def __post_init__(self) -> None:
        for name in (
            "max_receive_message_bytes",
            "max_concurrent_streams",
            "max_concurrent_rpcs",
            "max_streams_per_method",
            "min_ping_interval_ms",
            "keepalive_time_ms",
            "keepalive_timeout_ms",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if any(limit < 1 for limit in self.stream_limits.values()):
            raise ValueError("every stream limit must be >= 1")

    def stream_limit(self, method: str) -> int:
        return self.stream_limits.get(method, self.max_streams_per_method)

    def options(self) -> list[tuple[str, int]]:
        """gRPC channel arguments of the server."""
        options = [
            ("grpc.max_receive_message_length", self.max_receive_message_bytes),
            ("grpc.max_concurrent_streams", self.max_concurrent_streams),
            ("grpc.keepalive_permit_without_calls", int(self.permit_keepalive_without_calls)),
            ("grpc.http2.min_ping_interval_without_data_ms", self.min_ping_interval_ms),
            ("grpc.http2.max_ping_strikes", self.max_ping_strikes),
            ("grpc.keepalive_time_ms", self.keepalive_time_ms),
            ("grpc.keepalive_timeout_ms", self.keepalive_timeout_ms),
            # Applies to the pings this server sends: without it, core stops
            # pinging after two pings with no data, so an idle Observe or
            # Watch stream of a client that died would never be noticed.
            ("grpc.http2.max_pings_without_data", 0),
            # A second process on the same port fails to bind loudly instead
            # of silently sharing this server's calls.
            ("grpc.so_reuseport", 0),
        ]
        if self.max_connection_idle_ms is not None:
            options.append(("grpc.max_connection_idle_ms", self.max_connection_idle_ms))
        if self.max_connection_age_ms is not None:
            options.append(("grpc.max_connection_age_ms", self.max_connection_age_ms))
        if self.max_connection_age_grace_ms is not None:
            options.append(("grpc.max_connection_age_grace_ms", self.max_connection_age_grace_ms))
        return options


def new_server(
    bounds: ServerBounds,
    *,
    interceptors: Sequence[Any] = (),
    refuse: Refuse = plain_refusal,
    options: Sequence[tuple[str, Any]] = (),
    guard: RequestGuard | None = None,
) -> Any:
    """A ``grpc.aio`` server with ``bounds`` and the request guard.

    ``interceptors`` run outside the guard (so a metrics interceptor sees the
    INVALID_ARGUMENT of a malformed unary request); ``options`` are added
    after the bounds' own (e.g. ``grpc.max_send_message_length``). Pass
    ``guard`` to keep a handle on it (its stream counts); it replaces
    ``refuse``.
    """
    return grpc.aio.server(
        interceptors=[*interceptors, guard or RequestGuard(bounds, refuse)],
        options=[*bounds.options(), *options],
        maximum_concurrent_rpcs=bounds.max_concurrent_rpcs,
    )


class _Malformed:
    """What the guarded deserializer returns for bytes that do not parse."""

    __slots__ = ("message",)

    def __init__(self, type_name: str) -> None:
        self.message = (
            f"request is not a valid {type_name}" if type_name else "request does not parse"
        )


def _type_name(deserializer: Callable[[bytes], Any]) -> str:
    """The protobuf message name of a generated ``Message.FromString``; "" otherwise."""
    owner = getattr(deserializer, "__self__", None)
    descriptor = getattr(owner, "DESCRIPTOR", None)
    name = getattr(descriptor, "full_name", "")
    return name if isinstance(name, str) else ""


class RequestGuard(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Refuses malformed requests and streams beyond their bound; see the module docstring.

    The wrapped handler of each method is built once (methods that exist
    only, so unknown names cannot pile up) and reused.
    """

    def __init__(self, bounds: ServerBounds, refuse: Refuse = plain_refusal) -> None:
        self._bounds = bounds
        self._refuse = refuse
        self._handlers: dict[str, Any] = {}
        self._methods: dict[str, _MethodGuard] = {}

    def open_streams(self, method: str) -> int:
        """Open calls of a streaming method (full name) right now."""
        guard = self._methods.get(method)
        return guard.open if guard is not None else 0

    async def intercept_service(
        self, continuation: Callable[[Any], Awaitable[Any]], details: Any
    ) -> Any:
        wrapped = self._handlers.get(details.method)
        if wrapped is not None:
            return wrapped
        handler = await continuation(details)
        if handler is None:
            return None
        wrapped = self._handlers[details.method] = self._wrap(details.method, handler)
        return wrapped

    def _wrap(self, method: str, handler: Any) -> Any:
        deserializer = handler.request_deserializer
        guard = self._methods[method] = _MethodGuard(
            method,
            type_name=_type_name(deserializer) if deserializer is not None else "",
            limit=self._bounds.stream_limit(method),
            server=self._bounds.name,
            refuse=self._refuse,
        )
        shape = (bool(handler.request_streaming), bool(handler.response_streaming))
        kind, factory = _SHAPES[shape]
        behaviour = getattr(handler, kind)
        if not (inspect.iscoroutinefunction(behaviour) or inspect.isasyncgenfunction(behaviour)):
            wrapped = guard.sync(behaviour, request_streaming=shape[0])
        elif shape == (False, False):
            wrapped = guard.unary(behaviour)
        elif shape == (False, True):
            wrapped = guard.unary_stream(behaviour)
        else:
            wrapped = guard.request_stream(behaviour)
        return factory(
            wrapped,
            # Without a deserializer the request is the raw bytes: nothing can fail.
            request_deserializer=None if deserializer is None else guard.deserializer(deserializer),
            response_serializer=handler.response_serializer,
        )


_SHAPES: Final[dict[tuple[bool, bool], tuple[str, Callable[..., Any]]]] = {
    (False, False): ("unary_unary", grpc.unary_unary_rpc_method_handler),
    (False, True): ("unary_stream", grpc.unary_stream_rpc_method_handler),
    (True, False): ("stream_unary", grpc.stream_unary_rpc_method_handler),
    (True, True): ("stream_stream", grpc.stream_stream_rpc_method_handler),
}
"""(request streaming, response streaming) -> the handler's behaviour attribute
and the function that builds such a handler."""


class _MethodGuard:
    """The checks of one method: its malformed-request sentinel and its stream count.

    Invariant: 0 <= open <= limit (one event loop, so plain counters).
    """

    def __init__(self, method: str, *, type_name: str, limit: int, server: str, refuse: Refuse):
        self.method = method
        self.malformed = _Malformed(type_name)
        self.limit = limit
        self.open = 0
        self._short = method.rsplit("/", 1)[-1]
        self._server = server
        self._refuse = refuse
        self._warned = False

    def deserializer(self, parse: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
        """``parse`` that returns ``self.malformed`` instead of raising."""
        malformed = self.malformed

        def guarded(raw: bytes) -> Any:
            try:
                return parse(raw)
            except Exception:  # DecodeError, or whatever a custom parser raises
                return malformed

        return guarded

    def unary(self, behaviour: Callable[..., Any]) -> Callable[..., Any]:
        async def unary_unary(request: Any, context: Any) -> Any:
            if request is self.malformed:
                await self.refuse_malformed(context)
            return await behaviour(request, context)

        return unary_unary

    def unary_stream(self, behaviour: Callable[..., Any]) -> Callable[..., Any]:
        async def unary_stream(request: Any, context: Any) -> None:
            if request is self.malformed:
                await self.refuse_malformed(context)
            await self.run(behaviour, request, context)

        return unary_stream

    def request_stream(self, behaviour: Callable[..., Any]) -> Callable[..., Any]:
        async def request_stream(requests: AsyncIterator[Any], context: Any) -> Any:
            return await self.run(behaviour, self.checked(requests, context), context)

        return request_stream

    def sync(self, behaviour: Callable[..., Any], *, request_streaming: bool) -> Callable[..., Any]:
        """A synchronous behaviour (gRPC runs it on a thread): the malformed-request
        check only, with a plain status; its streams are not counted."""
        malformed = self.malformed

        def checked(requests: Iterator[Any], context: Any) -> Iterator[Any]:
            for request in requests:
                if request is malformed:
                    context.abort(grpc.StatusCode.INVALID_ARGUMENT, malformed.message)
                yield request

        def run(request: Any, context: Any) -> Any:
            if request_streaming:
                return behaviour(checked(request, context), context)
            if request is malformed:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, malformed.message)
            return behaviour(request, context)

        return run

    async def refuse_malformed(self, context: Any) -> NoReturn:
        await self._refuse(
            context, grpc.StatusCode.INVALID_ARGUMENT, MALFORMED_REQUEST, self.malformed.message
        )

    async def checked(self, requests: AsyncIterator[Any], context: Any) -> AsyncIterator[Any]:
        """The request stream, ending the call at the first malformed message."""
        async for request in requests:
            if request is self.malformed:
                await self.refuse_malformed(context)
            yield request

    async def run(self, behaviour: Callable[..., Any], request: Any, context: Any) -> Any:
        """Serve one streaming call within the bound; returns the response of a
        stream-unary method. Writes a response stream itself (see the module docstring)."""
        if self.open >= self.limit:
            if not self._warned:  # one line per episode, not one per refused call
                self._warned = True
                _log.warning(
                    "stream_limit_reached",
                    server=self._server,
                    method=self._short,
                    limit=self.limit,
                )
            await self._refuse(
                context,
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                TOO_MANY_STREAMS,
                f"too many open {self._short} calls on this {self._server} server "
                f"(limit {self.limit}); end the streams you no longer read",
            )
        self.open += 1
        try:
            if not inspect.isasyncgenfunction(behaviour):
                return await behaviour(request, context)
            responses = behaviour(request, context)
            try:
                async for response in responses:
                    await context.write(response)
            finally:
                await responses.aclose()
            return None
        finally:
            self.open -= 1
            if self.open <= self.limit // 2:
                self._warned = False
