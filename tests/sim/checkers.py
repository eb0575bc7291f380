"""Safety checkers that run after every simulated step.

They watch what nodes persist, send and apply, and keep just enough global
history to check the Raft properties incrementally (Raft Figure 3):

* Election Safety: at most one leader per term, and each leader holds votes
  granted for its own term by a majority of the voters it knows.
* Leader Append-Only: a leader never overwrites or deletes its entries.
* Log Matching: entries with the same index and term have the same content and
  the same predecessor term, on every node (by induction, identical prefixes).
* Leader Completeness: a new leader holds every committed entry.
* State Machine Safety: every node applies the same entry at each index,
  each index exactly once per incarnation, and only committed entries.
* Fencing tokens: a log index is applied with one entry only, by every
  server that ever applies it, across disk losses (servers are keyed by name
  and incarnation): a token (the index of a committed grant) never goes to
  two holders. Judged against what replicas applied, independently of the
  global committed log.
* Commit monotonic: the persisted commit index of a node never goes back.
* Durability: no message leaves a node that depends on state not yet on its
  disk, except a leader's appends of entries it is still writing (dissertation
  §10.2.1); and an entry commits only once a majority of the committing
  leader's configuration (the newest in its log) holds it durably, judged at
  the moment the leader decides the commit.
* Linearizable reads: a ReadIndex answer is at least the commit index that
  existed, anywhere, when the read was asked.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from typing import TYPE_CHECKING

from sidecar.raft import (
    AppendRequest,
    AppendResponse,
    Entry,
    EntryKind,
    HardState,
    HeartbeatRequest,
    Message,
    Ready,
    Role,
    VoteRequest,
    VoteResponse,
)

if TYPE_CHECKING:
    from sidecar.storage.memory import MemoryStorage
    from tests.sim.cluster import SimNode


class SafetyViolation(AssertionError):
    """A Raft safety property failed; the message says which and where."""


def chain_digest(digest: int, entry: Entry) -> int:
    """Fold one applied entry into a state-machine digest (deterministic across runs)."""
    head = b"%d:%d:%d:" % (entry.index, entry.term, entry.kind.value)
    return zlib.crc32(head + entry.data, digest)


class Checkers:
    def __init__(self) -> None:
        self.disk_of: Callable[[str], MemoryStorage] | None = None
        """Every node's durable state, for the majority-durability check at commit."""
        self.leaders: dict[int, tuple[str, int]] = {}
        """term -> (server, life) that led it: a server that forgot its term
        could lead the same term twice, in two lives."""
        self.votes: dict[tuple[int, str], str] = {}  # (term, voter) -> candidate granted
        self.committed: list[Entry | None] = [None]  # committed[i] is the entry at index i
        self.digests: list[int] = [0]  # state-machine digest after applying index i
        self.commit_terms: list[int] = [0]
        """commit_terms[i]: the term of the node that first committed index i (the
        committing leader's, or a follower's, which is no lower)."""
        self.entry_facts: dict[
            tuple[int, int], tuple[int, bytes]
        ] = {}  # (index, term) -> (prev term, data)
        self.applied: dict[int, tuple[Entry, str]] = {}
        """index -> the entry first applied there, and by which server (and life)."""

    @property
    def commit_index(self) -> int:
        return len(self.committed) - 1

    # ---- persist ---------------------------------------------------------------

    def before_persist(self, node: SimNode, rd: Ready) -> None:
        """Checks on what a ready batch asks to write, against what is on disk."""
        disk = node.disk
        if rd.hard_state is not None and rd.hard_state.commit < disk.hard_state.commit:
            raise SafetyViolation(
                f"{node.id}: commit index went back from {disk.hard_state.commit} "
                f"to {rd.hard_state.commit}"
            )
        if rd.hard_state is not None and rd.hard_state.term < disk.hard_state.term:
            raise SafetyViolation(f"{node.id}: term went back on disk")
        if node.raft is not None and node.raft.role is Role.LEADER and rd.entries:
            for e in rd.entries:
                old = disk.term(e.index)
                if old is not None and old != e.term:
                    raise SafetyViolation(
                        f"Leader Append-Only: leader {node.id} (term {node.raft.term}) "
                        f"overwrites entry {e.index} of term {old} with term {e.term}"
                    )

    def after_persist_entries(
        self, node_id: str, disk: MemoryStorage, entries: tuple[Entry, ...]
    ) -> None:
        """Log Matching, inductively: same (index, term) => same data and same predecessor."""
        facts = self.entry_facts
        for e in entries:
            prev_term = disk.term(e.index - 1)
            if prev_term is None:
                raise SafetyViolation(f"{node_id}: persisted entry {e.index} with a gap before it")
            key = (e.index, e.term)
            known = facts.get(key)
            if known is None:
                facts[key] = (prev_term, e.data)
            elif known != (prev_term, e.data):
                raise SafetyViolation(
                    f"Log Matching: {node_id} holds entry {e.index}/{e.term} with predecessor "
                    f"term {prev_term} and data {e.data!r}; another node has {known}"
                )

    # ---- roles -------------------------------------------------------------------

    def on_leader(self, node: SimNode) -> None:
        raft = node.raft
        assert raft is not None
        term = raft.term
        me = (node.id, node.incarnation)
        other = self.leaders.setdefault(term, me)
        if other != me:
            raise SafetyViolation(
                f"Election Safety: {other[0]} (life {other[1]}) and {node.id} "
                f"(life {node.incarnation}) both lead term {term}"
            )
        voters = raft.membership.voters
        granted = sorted(v for v in voters if v == node.id or self.votes.get((term, v)) == node.id)
        if len(granted) < len(voters) // 2 + 1:
            raise SafetyViolation(
                f"Election Safety: {node.id} leads term {term} with votes of {granted} only, "
                f"not a majority of {sorted(voters)}"
            )
        # Leader Completeness: entries up to the leader's commit index were
        # checked when it committed them; check the rest of what was committed
        # in an earlier term (Figure 3). A candidate frozen by a stall may win
        # its term with votes granted long ago, after a later term committed
        # more: those entries are not its to hold.
        log = raft.log
        for i in range(max(log.commit, log.base.index) + 1, len(self.committed)):
            want = self.committed[i]
            assert want is not None
            if self.commit_terms[i] >= term:
                continue
            if log.term(i) != want.term:
                raise SafetyViolation(
                    f"Leader Completeness: leader {node.id} of term {term} has term "
                    f"{log.term(i)} at committed index {i} (committed term {want.term})"
                )

    # ---- commit and apply --------------------------------------------------------

    def on_commit(self, node: SimNode, old_commit: int, new_commit: int) -> None:
        raft = node.raft
        assert raft is not None
        log = raft.log
        for i in range(max(old_commit, log.base.index) + 1, new_commit + 1):
            e = log.entry(i)
            if i < len(self.committed):
                want = self.committed[i]
                if want != e:
                    raise SafetyViolation(
                        f"State Machine Safety: {node.id} commits {e} at {i}, "
                        f"but {want} was committed there"
                    )
            elif i == len(self.committed):
                self._check_durable_on_majority(node, e)
                self.committed.append(e)
                self.commit_terms.append(raft.term)
                self.digests.append(chain_digest(self.digests[-1], e))
            else:
                raise SafetyViolation(
                    f"{node.id} commits index {i} beyond the known commit index {self.commit_index}"
                )

    def _check_durable_on_majority(self, node: SimNode, e: Entry) -> None:
        """A newly committed entry is on the disks of a majority of the voters
        of its committer's configuration: the newest in the committer's log
        (dissertation §4.1), read off the log, not off what the core counted.
        Compacted into a snapshot counts as held.

        The committer is the leader that decided the commit: the simulator
        reports a leader's commit index when the leader decides it, before its
        appends leave (``Simulation._observe_commit_decision``). A follower
        whose configuration lags the leader's (a single-server change appended
        but not yet replicated to it) is judged against its own only if it is
        ever the first to commit an index, which the core never does."""
        if self.disk_of is None or node.raft is None:
            return
        voters = node.raft.log.membership().voters
        holders = set()
        for voter in voters:
            disk = self.disk_of(voter)
            if disk.base_index() >= e.index or disk.term(e.index) == e.term:
                holders.add(voter)
        if len(holders) * 2 <= len(voters):
            raise SafetyViolation(
                f"{node.id} commits {e} held durably only by {sorted(holders)} "
                f"of voters {sorted(voters)}"
            )

    def on_apply(self, node: SimNode, e: Entry) -> None:
        who = f"{node.id} (life {node.incarnation})"
        first = self.applied.setdefault(e.index, (e, who))
        if first[0] != e:
            what = "fencing token" if e.kind is EntryKind.NORMAL else "log index"
            raise SafetyViolation(
                f"{what} {e.index} applied as {first[0]} by {first[1]} and as {e} by {who}"
            )
        if e.index != node.sm_index + 1:
            raise SafetyViolation(
                f"{node.id} applies index {e.index} after {node.sm_index}: "
                "not exactly once, in order"
            )
        if e.index >= len(self.committed) or self.committed[e.index] != e:
            raise SafetyViolation(
                f"State Machine Safety: {node.id} applies {e}, committed there is "
                f"{self.committed[e.index] if e.index < len(self.committed) else 'nothing'}"
            )

    def on_restore(self, node_id: str, index: int, digest: int) -> None:
        if index >= len(self.digests) or self.digests[index] != digest:
            raise SafetyViolation(
                f"{node_id} restored a snapshot at {index} "
                "whose state differs from the committed log"
            )

    # ---- messages ----------------------------------------------------------------

    def on_send(
        self,
        node_id: str,
        hs: HardState,
        disk: MemoryStorage,
        m: Message,
        *,
        persisted: bool = True,
    ) -> None:
        """Nothing sent may depend on state that is not on the sender's disk;
        ``persisted=False``: a leader's append sent while it writes the entries."""
        if isinstance(m, VoteRequest) and m.pre_vote:
            return
        if isinstance(m, VoteResponse) and m.pre_vote:
            return
        if m.term > hs.term:
            raise SafetyViolation(
                f"{node_id} sent {type(m).__name__} in term {m.term}, disk has {hs.term}"
            )
        if isinstance(m, VoteResponse) and m.granted:
            if hs.voted_for != m.recipient:
                raise SafetyViolation(
                    f"{node_id} granted its vote in term {m.term} to {m.recipient}, "
                    f"but its disk records a vote for {hs.voted_for}"
                )
            self.votes[(m.term, node_id)] = m.recipient
        if isinstance(m, VoteRequest) and hs.voted_for != node_id:
            raise SafetyViolation(
                f"{node_id} campaigns in term {m.term} without a persisted self-vote"
            )
        if isinstance(m, AppendResponse) and m.success and disk.last_index() < m.index:
            raise SafetyViolation(
                f"{node_id} acknowledged index {m.index} but its disk ends at {disk.last_index()}"
            )
        if not persisted and not isinstance(m, AppendRequest | HeartbeatRequest):
            raise SafetyViolation(f"{node_id} sent {type(m).__name__} before persisting")
        if (
            persisted
            and isinstance(m, AppendRequest)
            and m.entries
            and disk.last_index() < m.entries[-1].index
        ):
            raise SafetyViolation(f"leader {node_id} sent entries it has not persisted")

    def on_read(self, node_id: str, index: int, required: int) -> None:
        if index < required:
            raise SafetyViolation(
                f"Linearizability: {node_id} answered a read at index {index}, but {required} "
                f"was already committed when the read was asked"
            )
