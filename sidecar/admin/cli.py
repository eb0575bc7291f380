"""``raft-sidecar members list|add|promote|remove``: the operator's side of
``AdminService``, spoken over a sidecar's admin Unix socket.

Run it inside the sidecar's container (``kubectl exec POD -c sidecar --
raft-sidecar members list``): the socket is found with ``--admin-socket``,
else ``--data-dir`` (DATA_DIR/admin.sock), else the same environment
variables ``serve`` reads. Every failure is one line on stderr and exit
status 1.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from sidecar.config import ADMIN_SOCKET_NAME, env_name

DEFAULT_TIMEOUT_S = 30.0


def add_members_parser(subcommands: Any) -> None:
    """Add ``members`` and its subcommands to the CLI's subparsers."""
    members = subcommands.add_parser(
        "members",
        help="list or change the cluster's membership (through a sidecar's admin socket)",
        description="Talks to the admin Unix socket of a running sidecar; any node answers "
        "(a follower forwards to the Raft leader). Exit status 1 on any failure.",
    )
    members.add_argument(
        "--admin-socket",
        help=f"the sidecar's admin socket (env {env_name('admin-socket')}); "
        f"default DATA_DIR/{ADMIN_SOCKET_NAME}",
    )
    members.add_argument(
        "--data-dir", help=f"the sidecar's data directory (env {env_name('data-dir')})"
    )
    members.add_argument(
        "--timeout", type=float, default=DEFAULT_TIMEOUT_S, help="seconds to wait (default 30)"
    )
    commands = members.add_subparsers(dest="members_command", metavar="SUBCOMMAND", required=True)
    listing = commands.add_parser("list", help="every member and the nodes saying hello")
    listing.set_defaults(handler=_cmd_list)
    add = commands.add_parser("add", help="admit NAME's current incarnation as a learner")
    add.add_argument("name", help="the node name (--node-id) of a node saying hello")
    add.set_defaults(handler=_cmd_add)
    promote = commands.add_parser("promote", help="make a caught-up learner a voter")
    promote.add_argument("name", help="the learner's node name, or NAME~INCARNATION")
    promote.set_defaults(handler=_cmd_promote)
    remove = commands.add_parser(
        "remove",
        help="remove a member for good (the leader hands over first)",
        description="A single-server removal through the log. Refused when the voters that "
        "remain and answer would not form a quorum, unless --force. A removed incarnation "
        "never rejoins: it stops, and starts again only on a wiped data directory.",
    )
    remove.add_argument("name", help="the member's node name, or NAME~INCARNATION")
    remove.add_argument(
        "--force", action="store_true", help="remove a voter even when a quorum would be lost"
    )
    remove.set_defaults(handler=_cmd_remove)


def socket_path(args: argparse.Namespace) -> str | None:
    """The admin socket to use, or None when nothing says where it is."""
    given = args.admin_socket or os.environ.get(env_name("admin-socket"))
    if given:
        return str(given)
    data_dir = args.data_dir or os.environ.get(env_name("data-dir"))
    return os.path.join(data_dir, ADMIN_SOCKET_NAME) if data_dir else None


def _call(args: argparse.Namespace, method: str, request: Any) -> Any:
    """One AdminService call; prints the one-line failure and returns None."""
    import grpc  # type: ignore[import-untyped]  # noqa: PLC0415 - keep the CLI light

    from sidecar.pb.raftsidecar.admin.v1 import admin_pb2_grpc  # noqa: PLC0415

    prog = f"raft-sidecar members {args.members_command}"
    path = socket_path(args)
    if path is None:
        print(f"{prog}: pass --data-dir or --admin-socket", file=sys.stderr)
        return None
    if not os.path.exists(path):
        print(f"{prog}: no admin socket at {path} (is the sidecar running?)", file=sys.stderr)
        return None
    try:
        with grpc.insecure_channel(f"unix:{path}") as channel:
            stub = admin_pb2_grpc.AdminServiceStub(channel)
            return getattr(stub, method)(request, timeout=args.timeout)
    except grpc.RpcError as exc:
        details = " ".join(str(exc.details() or "").split())
        print(f"{prog}: {exc.code().name}: {details}", file=sys.stderr)
        return None


def _role(role: int) -> str:
    from sidecar.pb.raftsidecar.admin.v1 import admin_pb2  # noqa: PLC0415

    return str(admin_pb2.MemberRole.Name(role)).removeprefix("MEMBER_ROLE_").lower()  # type: ignore[arg-type]


def format_members(response: Any) -> str:
    """The text ``members list`` prints."""
    lines = [
        f"leader {response.leader}, term {response.term}, commit index {response.commit_index}",
        f"{'NAME':<20} {'INCARNATION':<16} {'ROLE':<8} {'ADDRESS':<24} {'MATCH':>8}  STATE",
    ]
    for m in response.members:
        state = ", ".join(
            word
            for word, on in (
                ("leader", m.leader),
                ("caught up", m.caught_up),
                ("unreachable", not m.reachable),
            )
            if on
        )
        lines.append(
            f"{m.name:<20} {m.incarnation:<16} {_role(m.role):<8} {m.address or '-':<24} "
            f"{m.match_index:>8}  {state or '-'}"
        )
    if response.visitors:
        lines.append("saying hello, not members:")
        for v in response.visitors:
            note = "removed: never rejoins (wipe its directory)" if v.removed else "not admitted"
            lines.append(f"  {v.name:<18} {v.incarnation:<16} {note}")
    return "\n".join(lines)


def _cmd_list(args: argparse.Namespace) -> int:
    from sidecar.pb.raftsidecar.admin.v1 import admin_pb2  # noqa: PLC0415

    response = _call(args, "ListMembers", admin_pb2.ListMembersRequest())
    if response is None:
        return 1
    print(format_members(response))
    return 0


def _cmd_add(args: argparse.Namespace) -> int:
    from sidecar.pb.raftsidecar.admin.v1 import admin_pb2  # noqa: PLC0415

    request = admin_pb2.AddMemberRequest(name=args.name)
    return _member_changed(args, "AddMember", request, "added {} as a learner")


def _cmd_promote(args: argparse.Namespace) -> int:
    from sidecar.pb.raftsidecar.admin.v1 import admin_pb2  # noqa: PLC0415

    request = admin_pb2.PromoteMemberRequest(name=args.name)
    return _member_changed(args, "PromoteMember", request, "promoted {} to voter")


def _member_changed(args: argparse.Namespace, method: str, request: Any, done: str) -> int:
    """Call ``method``; print ``done`` (with NAME~INCARNATION) and the index."""
    response = _call(args, method, request)
    if response is None:
        return 1
    m = response.member
    print(f"{done.format(f'{m.name}~{m.incarnation}')} at log index {response.index}")
    return 0


def _cmd_remove(args: argparse.Namespace) -> int:
    from sidecar.pb.raftsidecar.admin.v1 import admin_pb2  # noqa: PLC0415

    request = admin_pb2.RemoveMemberRequest(name=args.name, force=args.force)
    response = _call(args, "RemoveMember", request)
    if response is None:
        return 1
    handed = " after handing leadership over" if response.leadership_transferred else ""
    print(
        f"removed {response.name}~{response.incarnation}{handed} at log index "
        f"{response.index} (leader {response.leader})"
    )
    return 0
