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

**Admitting.** Every node says hello to its peers, so the leader learns
each name's current server id: every second while anything is unsettled
(``unsettled``, pure: a name whose current server is unknown or not a
member, a change pending, no leader known, this node not admitted, a peer
that did not answer), every ``SETTLED_HELLO_INTERVAL_S`` otherwise, and at
once when something it reads changes. A name whose current server is
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

**Waking.** Both tasks act on events, not on polling, so an idle node does
not wake for them: the plan check and ``_watch_self`` run when a turn of
the Raft loop changed what they read (``_Observed``: role, leader, the
membership, the committed membership, a learner's progress on the leader),
when a hello brings news (a new server under a name, a name heard again),
at the next moment a member may be judged gone, and, as a safety net, every
``recheck_s`` (``--membership-recheck-ms``).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Callable, Coroutine, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import structlog

from sidecar.alarm import wait_event
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
"""How often a node says hello to each peer while the membership is unsettled."""
SETTLED_HELLO_INTERVAL_S = 5.0
"""How often it does once settled: well inside ``SEEN_FRESH_S``, so the
leader's view of who is live never lapses between two hellos."""
SEEN_FRESH_S = 10.0
"""A hello older than this no longer tells a node's current incarnation."""
PLAN_RETRY_S = 0.25
"""A change the node refused (another one pending, leadership moving) is
planned again after this."""
RECHECK_S = 5.0
"""The plan check's safety net, with nothing changed (``--membership-recheck-ms``)."""
GONE_AFTER_S = 30.0
"""A member not heard from this long, whose name is not in ``--peers``, was
scaled away: the leader removes it (Consul autopilot's dead-server cleanup)."""
MAX_ADDED_PEERS = 64
"""Names beyond ``--peers`` this node will learn addresses for (a bound)."""


_LATE_S = 0.05
"""A member is gone strictly after ``GONE_AFTER_S``: wake this much later."""


@dataclass(frozen=True, slots=True)
class _Observed:
    """What the membership tasks read from the Raft core, compared after
    every turn: a difference wakes them."""

    role: Role
    leader: str | None
    membership: Membership
    committed: Membership
    past_admission: bool
    learners: tuple[tuple[str, int], ...]
    commit_while_learning: int


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


def unsettled(
    *,
    me: str,
    leader: str | None,
    membership: Membership,
    committed: Membership,
    names: Iterable[str],
    current: Mapping[str, str],
    peer_silent: bool,
) -> str:
    """Why this node should keep saying hello every second; empty once the
    cluster is settled and a slow hello will do.

    ``membership`` is the node's latest membership, ``committed`` its
    committed one; ``names`` the node names it greets; ``current`` maps a
    name to the server that said hello under it recently; ``peer_silent``
    whether a peer did not answer the last round. Pure.
    """
    if me not in committed.members:
        return "this server is not a member of its committed membership"
    if leader is None:
        return "no leader known"
    if peer_silent:
        return "a peer did not answer"
    if membership != committed or membership.learners:
        return "a membership change is pending"
    for name in sorted(set(names)):
        server = current.get(name)
        if server is None or server not in membership.members:
            return f"{name} has no current server that is a member"
    for member in sorted(membership.members - {me}):
        if current.get(node_name(member)) != member:
            return f"{member} is not its name's current server"
    return ""


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
    """Says hello to every peer (each second while unsettled) and, on the
    Raft leader, admits the current incarnation of each name
    (``plan_change``), waking on events (module docstring, "Waking").

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
        recheck_s: float = RECHECK_S,
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
        self._recheck_s = recheck_s
        self._plan_wake = asyncio.Event()
        """Set when the plan check (and ``_watch_self``) should run again."""
        self._hello_wake = asyncio.Event()
        """Set when the hello interval should be judged again (it may shrink)."""
        self._observed: _Observed | None = None
        self._peer_silent = True
        """A peer did not answer the last round of hellos (True before the first)."""
        self._retry_at = math.inf

    def on_hello(self, server: str, address: str = "", admitted_index: int = 0) -> None:
        name = node_name(server)
        now = self._clock()
        before = self._seen.get(name)
        self._seen[name] = (server, now, admitted_index)
        if (
            before is None
            or before[0] != server
            or before[2] != admitted_index
            or now - before[1] > SEEN_FRESH_S
        ):
            # News (a new server under a name, a name heard again): the plan
            # may change, and the hellos may need to come faster.
            self._wake()
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

    def _wake(self) -> None:
        self._plan_wake.set()
        self._hello_wake.set()

    def _observe(self) -> _Observed:
        raft = self._node.raft
        commit = raft.commit_index
        admitted = self._identity[1].admitted_index if self._identity is not None else 0
        learners: tuple[tuple[str, int], ...] = ()
        if raft.role is Role.LEADER and raft.membership.learners:
            learners = tuple(
                (learner, raft.progress[learner].match if learner in raft.progress else 0)
                for learner in sorted(raft.membership.learners)
            )
        return _Observed(
            role=raft.role,
            leader=raft.leader_id,
            membership=raft.membership,
            committed=raft.log.membership_at(commit),
            past_admission=commit >= admitted,
            learners=learners,
            commit_while_learning=commit if learners else 0,
        )

    def _on_turn(self) -> None:
        """A turn listener (``RaftNode.turn_listeners``): wakes both tasks when
        the turn changed what they read; an idle turn changes nothing."""
        observed = self._observe()
        if observed != self._observed:
            self._observed = observed
            self._wake()

    def unsettled(self) -> str:
        """Why hellos should come every second now (``unsettled``); empty: settled."""
        raft = self._node.raft
        me = raft.id
        return unsettled(
            me=me,
            leader=raft.leader_id,
            membership=raft.membership,
            committed=raft.log.membership_at(raft.commit_index),
            names=(self._names | self._added) - {node_name(me)},
            current=self.current(),
            peer_silent=self._peer_silent,
        )

    def _next_gone_at(self) -> float:
        """When the leader may next judge a member gone (``_gone``); inf if never
        without news (a follower, manual membership, only configured members)."""
        raft = self._node.raft
        if raft.role is not Role.LEADER or not self.auto:
            return math.inf
        now = self._clock()
        soonest = math.inf
        for member in sorted(raft.membership.members - {raft.id}):
            if node_name(member) in self._names:
                continue
            at = self._started_at + GONE_AFTER_S
            seen = self._seen.get(node_name(member))
            if seen is not None and seen[0] == member:
                at = max(at, seen[1] + GONE_AFTER_S)
            if at > now:
                soonest = min(soonest, at + _LATE_S)
        return soonest

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
        self._node.turn_listeners.append(self._on_turn)
        self._tasks = [
            asyncio.create_task(self._greet(), name="membership-hello"),
            asyncio.create_task(self._admit(), name="membership-admit"),
        ]

    async def stop(self) -> None:
        with contextlib.suppress(ValueError):
            self._node.turn_listeners.remove(self._on_turn)
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    async def _greet(self) -> None:
        me = self._node.id
        while True:
            began = self._clock()
            others = sorted((self._names | self._added) - {node_name(me)})
            answers = await asyncio.gather(
                *(self._forwarder.hello(name) for name in others), return_exceptions=True
            )
            silent = False
            for answer in answers:
                if isinstance(answer, HelloAnswer):
                    self.on_hello(answer.server_id, admitted_index=answer.admitted_index)
                    if answer.caller_removed:
                        self.learned_removed(f"{answer.server_id} no longer holds it a member")
                else:
                    silent = True
            self._peer_silent = silent
            while True:
                settled = not self.unsettled()
                interval = SETTLED_HELLO_INTERVAL_S if settled else HELLO_INTERVAL_S
                left = began + interval - self._clock()
                if left <= 0:
                    break
                await wait_event(self._hello_wake, left)
                self._hello_wake.clear()

    async def _admit(self) -> None:
        while True:
            now = self._clock()
            wake_at = min(now + self._recheck_s, self._retry_at, self._next_gone_at())
            await wait_event(self._plan_wake, wake_at - now)
            self._plan_wake.clear()
            self._retry_at = math.inf
            try:
                self._watch_self()
            except StorageError as exc:
                _log.critical("identity_unwritable", error=str(exc))
            raft = self._node.raft
            if raft.role is not Role.LEADER or not self.auto or self.removed:
                continue
            if raft.membership != raft.log.membership_at(raft.commit_index):
                continue  # a change is pending: its commit is a turn that wakes this
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
                self._retry_at = self._clock() + PLAN_RETRY_S
                continue
            self.changes_proposed += 1
            _log.warning(
                "membership_change_proposed",
                change=planned.change.kind.value,
                server=planned.change.node_id,
                index=index,
                reason=planned.reason,
            )
