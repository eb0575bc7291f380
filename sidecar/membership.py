"""How a node enters the cluster, and how the Raft leader admits a node's new
incarnation (docs/membership.md).

Theory of operation
-------------------
**Entering.** A node whose data directory is new has a new incarnation
(``sidecar.storage.identity``) and has not yet decided how it enters the
cluster. Before it takes part in Raft it says hello to every peer of
``--peers`` (``decide_entry``):

* a peer that already decided and lists this very server among the voters
  it bootstrapped with: adopt that bootstrap (the two started together);
* any other peer that already decided: a cluster exists, so *join* it, with
  no membership of its own: it never campaigns and no quorum counts it until
  the leader admits it through the log;
* every peer answered and none decided: bootstrap a new cluster whose
  voters are all of them, each under its current incarnation;
* a peer does not answer: wait and ask again; a node never bootstraps
  because its peers are unreachable.

The decision is stored in the identity file before Raft starts, so a restart
never decides differently.

**Admitting.** Every node says hello to its peers every second, so the
leader learns each name's current server id. A name whose current server is
not a member is admitted one single-server change at a time
(``plan_change``, pure): first the old incarnation is removed, but only
while the voters that remain and answer still form a quorum of the new
configuration; then the new server is added as a learner; once it has
caught up with the commit index it is promoted to voter. Every change goes
through the log (``RaftNode.change_membership``), is logged, and is shown
by ``raft-sidecar status``. With ``--auto-membership=false`` the leader plans
nothing: only operators change the membership (``raft-sidecar members``).

**A removed member stays removed.** A server that once saw itself a member
in its committed log records that commit index in its identity file
(``admitted_index``) and says it in every hello. A server that says so and
is not a member was removed (by an operator, or as scaled away): the leader
never admits it again, and every node that has committed past that index
and no longer holds it in its committed membership answers its hello with
``caller_removed`` (``was_removed``, pure). A server that learns it was
removed, from such an answer or from its own committed log, records it in
its identity file and stops; it refuses to start on that directory again,
so only a wiped directory (a new incarnation) comes back.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Coroutine, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import structlog

from sidecar.node import NodeError, RaftNode
from sidecar.raft import ConfChange, ConfChangeKind, Membership, RaftError, Role
from sidecar.serverid import node_name
from sidecar.storage.errors import StorageError
from sidecar.storage.identity import Identity, IdentityStore
from sidecar.transport.errors import TransportError
from sidecar.transport.forward import Forwarder
from sidecar.transport.peer import HelloAnswer

_log = structlog.get_logger("sidecar.membership")

HELLO_INTERVAL_S = 1.0
"""How often every node says hello to each peer."""
SEEN_FRESH_S = 10.0
"""A hello older than this no longer tells a node's current incarnation."""
PLAN_INTERVAL_S = 0.25
GONE_AFTER_S = 30.0
"""A member not heard from this long, whose name is not in ``--peers``, was
scaled away: the leader removes it (Consul autopilot's dead-server cleanup)."""
MAX_ADDED_PEERS = 64
"""Names beyond ``--peers`` this node will learn addresses for (a bound)."""


@dataclass(frozen=True, slots=True)
class Planned:
    change: ConfChange
    reason: str


def was_removed(
    caller: str, admitted_index: int, *, commit_index: int, committed_members: frozenset[str]
) -> bool:
    """Whether ``caller``, which saw itself a member at ``admitted_index``
    (0: never), has since been removed, judged by a node whose committed
    membership at ``commit_index`` is ``committed_members``.

    Committed prefixes agree (Log Matching), so a node that has committed
    ``admitted_index`` holds the caller's admission too; if its committed
    membership lacks the caller now, a removal committed after it. A node
    that has not committed that far cannot tell. Pure.
    """
    return 0 < admitted_index <= commit_index and caller not in committed_members


def plan_change(
    *,
    me: str,
    membership: Membership,
    names: Iterable[str],
    current: Mapping[str, str],
    live: frozenset[str],
    match: Mapping[str, int],
    commit_index: int,
    contacts: frozenset[str] = frozenset(),
    gone: frozenset[str] = frozenset(),
    once_admitted: frozenset[str] = frozenset(),
) -> Planned | None:
    """The next membership change the leader ``me`` should propose, or None.

    ``names`` are the node names it admits (its contact list, its members'
    and those that said hello); ``current`` maps a name to the server id
    that last said hello under it (fresh hellos only); ``live`` holds the
    servers the leader heard from recently (itself included); ``match`` is
    each follower's match index. ``contacts`` is the leader's ``--peers``
    and ``gone`` the members it has not heard from for a long while: a gone
    member whose name is not a contact was scaled away and is removed.
    ``once_admitted`` are servers that say they were members before: one
    that is not a member now was removed and is never added again. Pure: no
    clock, no I/O.
    """
    members = membership.members
    for name in sorted(set(names)):
        new = current.get(name)
        if new is None or node_name(new) != name:
            continue
        stale = sorted(m for m in members if node_name(m) == name and m not in (me, new))
        if new in members and not stale:
            continue
        if new not in members and new in once_admitted:
            continue
        if stale:
            # Also when the new incarnation is already a member (an operator
            # added it first): an old incarnation left a voter would count
            # toward every quorum and never answer.
            old = stale[0]
            if old in membership.voters:
                remaining = membership.voters - {old}
                if len(remaining & live) < len(remaining) // 2 + 1:
                    continue  # removing it now could stop the cluster: wait
            return Planned(
                ConfChange(ConfChangeKind.REMOVE_NODE, old),
                f"{name} came back as {new}: its old incarnation {old} is removed first",
            )
        return Planned(ConfChange(ConfChangeKind.ADD_LEARNER, new), f"{new} asks to join")
    for learner in sorted(membership.learners):
        if learner in live and match.get(learner, 0) >= commit_index:
            return Planned(
                ConfChange(ConfChangeKind.PROMOTE_LEARNER, learner),
                f"{learner} caught up with the commit index {commit_index}",
            )
    for member in sorted(gone & members - {me}):
        if node_name(member) in contacts:
            continue  # a configured node that is down: it comes back
        if member in membership.voters:
            remaining = membership.voters - {member}
            if not remaining or len(remaining & live) < len(remaining) // 2 + 1:
                continue
        return Planned(
            ConfChange(ConfChangeKind.REMOVE_NODE, member),
            f"{member} is gone and not in --peers (scaled down)",
        )
    return None


async def decide_entry(
    store: IdentityStore,
    identity: Identity,
    forwarder: Forwarder,
    peer_names: Iterable[str],
    *,
    retry_s: float = 0.5,
) -> Identity:
    """Decide, once, whether this node bootstraps a new cluster or joins one.

    Returns the identity with ``initial_voters`` set (stored durably).
    Waits (forever, asking again every ``retry_s``) while a peer does not
    answer and none has decided.
    """
    if identity.initial_voters is not None:
        return identity
    me = identity.server_id
    others = sorted(set(peer_names) - {identity.node})
    if not others:
        _log.info("cluster_bootstrapped", voters=[me])
        return store.decide(identity, (me,))
    while True:
        answers = await asyncio.gather(
            *(forwarder.hello(name) for name in others), return_exceptions=True
        )
        heard = [a for a in answers if isinstance(a, HelloAnswer)]
        for answer in heard:
            if answer.decided and me in answer.initial_voters:
                _log.info("cluster_bootstrapped", voters=list(answer.initial_voters))
                return store.decide(identity, answer.initial_voters)
        if any(a.decided for a in heard):
            _log.info("joining_existing_cluster", server_id=me)
            return store.decide(identity, ())
        if len(heard) == len(others):
            voters = tuple(sorted({me, *(a.server_id for a in heard)}))
            _log.info("cluster_bootstrapped", voters=list(voters))
            return store.decide(identity, voters)
        missing = [
            n for n, a in zip(others, answers, strict=True) if not isinstance(a, HelloAnswer)
        ]
        _log.info("waiting_for_peers_to_decide_bootstrap", missing=missing)
        await asyncio.sleep(retry_s)


class MembershipManager:
    """Says hello to every peer each second and, on the Raft leader, admits
    the current incarnation of each name (``plan_change``).

    ``on_hello`` is called for every hello this node receives; the answers
    to its own hellos count the same way.
    """

    def __init__(
        self,
        node: RaftNode,
        forwarder: Forwarder,
        contact_names: Iterable[str],
        *,
        add_peer: Callable[[str, str], Coroutine[Any, Any, None]] | None = None,
        clock: Callable[[], float] = time.monotonic,
        identity: tuple[IdentityStore, Identity] | None = None,
        on_removed: Callable[[str], None] | None = None,
        auto: bool = True,
    ) -> None:
        self._node = node
        self._identity = identity
        """Where this server records its admission and removal (None: nowhere)."""
        if identity is not None:
            forwarder.admitted_index = identity[1].admitted_index
        self._on_removed = on_removed
        self.removed = ""
        """Why this server learned it was removed; empty while it was not."""
        self.auto = auto
        """The leader plans changes itself; False: only operators change membership."""
        self.addresses: dict[str, str] = {}
        """Peer addresses told in hellos, by name."""
        self._forwarder = forwarder
        self._names = frozenset(contact_names)
        self._added: set[str] = set()
        """Names learned from hellos (a scale-up), beyond ``--peers``."""
        self._add_peer = add_peer
        self._clock = clock
        self._started_at = clock()
        self._seen: dict[str, tuple[str, float, int]] = {}
        """name -> (server id, when heard, its admitted index)."""
        self._tasks: list[asyncio.Task[None]] = []
        self._adding: set[asyncio.Task[None]] = set()
        self.changes_proposed = 0

    def on_hello(self, server: str, address: str = "", admitted_index: int = 0) -> None:
        name = node_name(server)
        self._seen[name] = (server, self._clock(), admitted_index)
        if address and len(self.addresses) < MAX_ADDED_PEERS + len(self._names):
            self.addresses[name] = address
        if (
            address
            and self._add_peer is not None
            and name not in self._names
            and name not in self._added
            and name != node_name(self._node.id)
            and len(self._added) < MAX_ADDED_PEERS
        ):
            self._added.add(name)
            task = asyncio.get_running_loop().create_task(self._add_peer(name, address))
            self._adding.add(task)
            task.add_done_callback(self._adding.discard)

    def _gone(self, members: Iterable[str]) -> frozenset[str]:
        """Members not heard from for ``GONE_AFTER_S`` (judged only once this
        node itself has run that long)."""
        now = self._clock()
        if now - self._started_at < GONE_AFTER_S:
            return frozenset()
        gone = set()
        for member in members:
            seen = self._seen.get(node_name(member))
            if seen is None or seen[0] != member or now - seen[1] > GONE_AFTER_S:
                gone.add(member)
        return frozenset(gone)

    def current(self) -> dict[str, str]:
        """Name -> the server id that said hello under it recently."""
        now = self._clock()
        return {
            name: server
            for name, (server, at, _) in sorted(self._seen.items())
            if now - at <= SEEN_FRESH_S
        }

    def once_admitted(self) -> frozenset[str]:
        """Servers saying hello now that say they were members before."""
        now = self._clock()
        return frozenset(
            server
            for server, at, admitted in self._seen.values()
            if admitted and now - at <= SEEN_FRESH_S
        )

    def caller_removed(self, caller: str, admitted_index: int) -> bool:
        """This node's verdict on a hello from ``caller`` (``was_removed``)."""
        raft = self._node.raft
        commit = raft.commit_index
        return was_removed(
            caller,
            admitted_index,
            commit_index=commit,
            committed_members=raft.log.membership_at(commit).members,
        )

    def _watch_self(self) -> None:
        """Record this server's first admission; notice its removal in its own log."""
        if self._identity is None or self.removed:
            return
        store, identity = self._identity
        raft = self._node.raft
        commit = raft.commit_index
        members = raft.log.membership_at(commit).members
        if identity.admitted_index == 0:
            if raft.id in members:
                identity = store.record_admitted(identity, commit)
                self._identity = (store, identity)
                self._forwarder.admitted_index = identity.admitted_index
                _log.info("server_admitted", server_id=raft.id, commit_index=commit)
        elif was_removed(
            raft.id, identity.admitted_index, commit_index=commit, committed_members=members
        ):
            self.learned_removed(f"its committed log at index {commit} no longer holds it")

    def learned_removed(self, why: str) -> None:
        """This server was removed: record it durably (it never starts again on
        this directory) and tell the runtime, which stops."""
        if self.removed or self._identity is None:
            return
        self.removed = why
        store, identity = self._identity
        _log.critical(
            "server_removed",
            server_id=identity.server_id,
            why=why,
            hint="a removed server never rejoins: wipe its data directory to rejoin as a "
            "new incarnation (docs/runbooks.md)",
        )
        try:
            self._identity = (store, store.record_removed(identity, why))
        finally:
            if self._on_removed is not None:
                self._on_removed(why)

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._greet(), name="membership-hello"),
            asyncio.create_task(self._admit(), name="membership-admit"),
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    async def _greet(self) -> None:
        me = self._node.id
        while True:
            others = sorted((self._names | self._added) - {node_name(me)})
            answers = await asyncio.gather(
                *(self._forwarder.hello(name) for name in others), return_exceptions=True
            )
            for answer in answers:
                if isinstance(answer, HelloAnswer):
                    self.on_hello(answer.server_id, admitted_index=answer.admitted_index)
                    if answer.caller_removed:
                        self.learned_removed(f"{answer.server_id} no longer holds it a member")
            await asyncio.sleep(HELLO_INTERVAL_S)

    async def _admit(self) -> None:
        while True:
            await asyncio.sleep(PLAN_INTERVAL_S)
            try:
                self._watch_self()
            except StorageError as exc:
                _log.critical("identity_unwritable", error=str(exc))
            raft = self._node.raft
            if raft.role is not Role.LEADER or not self.auto or self.removed:
                continue
            me = self._node.id
            current = self.current()
            members = raft.membership.members
            live = frozenset({me} | {m for m in members if current.get(node_name(m)) == m})
            planned = plan_change(
                me=me,
                membership=raft.membership,
                names=self._names | self._added | {node_name(m) for m in members},
                current=current,
                live=live,
                match={peer: pr.match for peer, pr in raft.progress.items()},
                commit_index=raft.commit_index,
                contacts=self._names,
                gone=self._gone(members),
                once_admitted=self.once_admitted(),
            )
            if planned is None:
                continue
            try:
                index = await self._node.change_membership(planned.change)
            except (NodeError, RaftError, TransportError) as exc:
                _log.info(
                    "membership_change_deferred",
                    change=planned.change.kind.value,
                    server=planned.change.node_id,
                    error=str(exc),
                )
                continue
            self.changes_proposed += 1
            _log.warning(
                "membership_change_proposed",
                change=planned.change.kind.value,
                server=planned.change.node_id,
                index=index,
                reason=planned.reason,
            )
