"""The admin gRPC server: ``AdminService`` on a Unix domain socket, for operators.

Exposure (docs/sidecar.md, "Listeners"): never a TCP port. The socket file is
created with mode 0600 (the umask is narrowed while gRPC binds it, then the
mode is set again), so only the sidecar's own user and root can connect:
whoever can ``kubectl exec`` into the sidecar container. A socket file left
by a process that died is removed at start; any other file at that path is
refused rather than deleted. Bad bytes and too many calls are refused by the
project's request guard (``sidecar.grpcserver``), like every other server.
"""

from __future__ import annotations

import os
import stat
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Final

import grpc  # type: ignore[import-untyped]

from sidecar.grpcserver import ServerBounds, new_server
from sidecar.pb.raftsidecar.admin.v1 import admin_pb2, admin_pb2_grpc
from sidecar.pb.raftsidecar.peer.v1 import peer_pb2
from sidecar.transport.errors import AdminRefused

SOCKET_MODE: Final = 0o600

ADMIN_BOUNDS: Final = ServerBounds(
    name="admin",
    max_receive_message_bytes=4 * 1024,
    max_concurrent_streams=16,
    max_concurrent_rpcs=32,
    max_streams_per_method=4,
    permit_keepalive_without_calls=False,
    max_connection_idle_ms=60_000,
)
"""An operator's CLI makes one call per connection: small requests, few at once."""

Serve = Callable[[peer_pb2.ForwardAdminRequest], Awaitable[peer_pb2.ForwardAdminResponse]]
SaveBackup = Callable[[], Awaitable[bytes]]
"""A backup file of the elections state after a linearizable read; raises
AdminRefused."""
BACKUP_CHUNK_BYTES: Final = 1024 * 1024


class AdminSocketError(Exception):
    """The admin socket cannot be prepared or bound."""


class AdminServicer(admin_pb2_grpc.AdminServiceServicer):
    """Turns each RPC into the one request shape ``serve`` takes (the one a
    follower forwards to the leader), and its refusals into statuses."""

    def __init__(self, serve: Serve, save_backup: SaveBackup | None = None) -> None:
        self._serve = serve
        self._save_backup = save_backup

    async def _call(self, context: Any, field: str, request: Any) -> peer_pb2.ForwardAdminResponse:
        forward = peer_pb2.ForwardAdminRequest()
        getattr(forward, field).CopyFrom(request)
        try:
            response = await self._serve(forward)
        except AdminRefused as exc:
            await context.abort(grpc.StatusCode[exc.code], str(exc))
        if response.WhichOneof("response") != field:
            await context.abort(grpc.StatusCode.INTERNAL, "the leader answered another request")
        return response

    async def ListMembers(  # noqa: N802 - gRPC method name
        self, request: admin_pb2.ListMembersRequest, context: Any
    ) -> admin_pb2.ListMembersResponse:
        return (await self._call(context, "list_members", request)).list_members

    async def AddMember(  # noqa: N802
        self, request: admin_pb2.AddMemberRequest, context: Any
    ) -> admin_pb2.AddMemberResponse:
        return (await self._call(context, "add_member", request)).add_member

    async def PromoteMember(  # noqa: N802
        self, request: admin_pb2.PromoteMemberRequest, context: Any
    ) -> admin_pb2.PromoteMemberResponse:
        return (await self._call(context, "promote_member", request)).promote_member

    async def RemoveMember(  # noqa: N802
        self, request: admin_pb2.RemoveMemberRequest, context: Any
    ) -> admin_pb2.RemoveMemberResponse:
        return (await self._call(context, "remove_member", request)).remove_member

    async def SaveSnapshot(  # noqa: N802
        self, request: admin_pb2.SaveSnapshotRequest, context: Any
    ) -> AsyncIterator[admin_pb2.SaveSnapshotResponse]:
        """The backup file in pieces of at most ``BACKUP_CHUNK_BYTES`` (the
        client's default receive limit is 4 MiB; a state can be larger)."""
        save_backup = self._save_backup
        if save_backup is None:
            await context.abort(grpc.StatusCode.UNIMPLEMENTED, "no backups on this server")
            return
        try:
            data = await save_backup()
        except AdminRefused as exc:
            await context.abort(grpc.StatusCode[exc.code], str(exc))
        for at in range(0, len(data), BACKUP_CHUNK_BYTES):
            yield admin_pb2.SaveSnapshotResponse(
                data=data[at : at + BACKUP_CHUNK_BYTES], total_bytes=len(data)
            )


def remove_stale_socket(path: str) -> None:
    """Remove a socket file left at ``path`` by a process that died.

    Raises AdminSocketError when something else is there (a regular file, a
    directory): the operator's file is never deleted.
    """
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    except OSError as exc:
        raise AdminSocketError(f"admin socket {path}: {exc.strerror}") from exc
    if not stat.S_ISSOCK(mode):
        raise AdminSocketError(f"admin socket {path}: a file that is not a socket is in the way")
    os.unlink(path)


def admin_server(path: str, serve: Serve, save_backup: SaveBackup | None = None) -> Any:
    """The admin server bound to the Unix socket ``path`` with mode 0600 (not
    started). Raises AdminSocketError."""
    remove_stale_socket(path)
    server = new_server(ADMIN_BOUNDS)
    servicer = AdminServicer(serve, save_backup)
    admin_pb2_grpc.add_AdminServiceServicer_to_server(servicer, server)
    previous = os.umask(0o177)  # the socket is never more open than 0600, not even briefly
    try:
        bound = server.add_insecure_port(f"unix:{path}")
    except RuntimeError:
        bound = 0
    finally:
        os.umask(previous)
    if bound == 0 or not os.path.exists(path):
        raise AdminSocketError(f"cannot listen on the admin socket {path}")
    os.chmod(path, SOCKET_MODE)
    return server
