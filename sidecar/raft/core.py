"""The Raft algorithm as a pure, deterministic state machine.

Theory of operation
-------------------
``Raft`` is driven from outside and never calls out. Inputs are ``tick()``
(one unit of logical time), ``step(message)``, ``propose()``,
``propose_conf_change()``, ``read_index()``, ``transfer_leadership()``,
``leader_unreachable()`` and ``compact()``. Each input only mutates memory
and queues output; the runtime collects the output with ``ready()``, acts
on it in the order that ``sidecar.raft.ready`` documents, and acknowledges
it with ``advance()``. No
input is accepted between ``ready()`` and ``advance()``, so everything a
batch's messages depend on (term, vote, entries) is persisted before those
messages leave: the durability contract.

Role changes happen only in the ``_become_*`` methods, which check that the
transition is legal. Per-role message handling is in ``_step_leader``,
``_step_candidate`` and ``_step_follower``; rules that apply to every role
(terms, votes) are in ``step`` and ``_handle_vote_request``.

Time: a follower campaigns after a randomized election timeout drawn from
[T, 2T) ticks from the injected RNG. A leader with CheckQuorum steps down
once it has not heard from a majority for T ticks; a follower that heard from
a leader in the last T ticks ignores vote requests (the leader lease that
keeps a returning partitioned node from deposing a healthy leader, together
with PreVote).

The leader's own log counts toward the commit quorum only once persisted,
i.e. after ``advance()``, so a single-node cluster never commits an entry its
disk has not confirmed.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from typing import Protocol

from sidecar.raft.config import RaftConfig
from sidecar.raft.errors import (
    CommittedLogContradicted,
    ConfChangeRejected,
    InvariantViolation,
    NotLeader,
    ProposalDropped,
    RaftUsageError,
)
from sidecar.raft.log import RaftLog
from sidecar.raft.membership import ConfChange, encode_conf_entry
from sidecar.raft.messages import (
    AppendRequest,
    AppendResponse,
    HeartbeatRequest,
    HeartbeatResponse,
    Message,
    SnapshotRequest,
    TimeoutNowRequest,
    VoteRequest,
    VoteResponse,
)
from sidecar.raft.progress import Progress, ProgressState
from sidecar.raft.quorum import VoteResult, committed_index, has_quorum, vote_result
from sidecar.raft.ready import ReadState, Ready, Role, SoftState
from sidecar.raft.types import (
    Entry,
    EntryKind,
    HardState,
    Membership,
    NodeId,
    PersistentState,
    Snapshot,
    SnapshotMetadata,
)


class RandomSource(Protocol):
    """The one method of ``random.Random`` the core uses; seeded by the caller."""

    def randrange(self, start: int, stop: int, /) -> int: ...


class _Campaign(enum.Enum):
    PRE_VOTE = 1
    ELECTION = 2
    TRANSFER = 3


_FROM_LEADER = (AppendRequest, HeartbeatRequest, SnapshotRequest, TimeoutNowRequest)


class Raft:
    def __init__(
        self,
        config: RaftConfig,
        rng: RandomSource,
        persisted: PersistentState | None = None,
    ) -> None:
        state = persisted or PersistentState()
        self.id = config.node_id
        self.cfg = config
        self._rng = rng

        base = (
            state.snapshot.metadata
            if state.snapshot is not None
            else SnapshotMetadata(0, 0, config.initial_membership)
        )
        entries = tuple(e for e in state.entries if e.index > base.index)
        if entries and entries[0].index != base.index + 1:
            raise InvariantViolation(
                f"persisted log starts at {entries[0].index}, expected {base.index + 1}"
            )
        self.log = RaftLog(base, entries)
        self.log.snapshot = state.snapshot
        hs = state.hard_state
        if hs.commit > self.log.last_index:
            raise InvariantViolation(
                f"persisted commit {hs.commit} beyond last index {self.log.last_index}"
            )
        self.log.commit = max(hs.commit, base.index)

        self.term = hs.term
        self.voted_for: NodeId | None = hs.voted_for
        self.role = Role.FOLLOWER
        self.leader_id: NodeId | None = None
        self.membership: Membership = self.log.membership()

        self._ticks = 0
        self.election_elapsed = 0
        self._heartbeat_elapsed = 0
        self._randomized_timeout = self._draw_election_timeout()

        self.progress: dict[NodeId, Progress] = {}
        self._votes: dict[NodeId, bool] = {}
        self._term_start_index = 0
        self._pending_conf_index = 0
        self.lead_transferee: NodeId | None = None
        self._announced_commit = 0

        self._read_seq = 0
        self._read_round_seq = 0
        """The read_seq of the last heartbeat round sent while reads waited; reads
        registered while it is unconfirmed wait for it instead of starting a
        round each (0: none in flight)."""
        self._read_acks: dict[NodeId, int] = {}
        self._pending_reads: list[tuple[int, int, int]] = []  # (request id, index, seq)
        self._reads_awaiting_commit: list[int] = []
        self._read_heartbeat_due = False

        self._msgs: list[Message] = []
        self._read_states: list[ReadState] = []
        self._failed_reads: list[int] = []
        self._received_snapshot: Snapshot | None = None
        self._persisted_hard_state = HardState(self.term, self.voted_for, self.log.commit)
        self._reported_soft_state: SoftState | None = None
        self._outstanding: Ready | None = None

    # ---- public inputs ---------------------------------------------------

    def tick(self) -> None:
        self._check_accepting_input()
        self._ticks += 1
        if self.role is Role.LEADER:
            self._tick_leader()
        else:
            self._tick_election()

    def idle_ticks(self) -> int:
        """How many ticks from now the first one that can do more than count
        comes: the one that starts a campaign, sends heartbeats, ends an
        unfinished leadership transfer, or drops a peer from the set
        CheckQuorum counts (and may step the leader down). At least 1.

        Read-only. The runtime may sleep through the ticks before that one
        and call ``tick()`` for each of them late, right before the next
        input or at the due one: the core then ends in the state it would
        have reached on time, since those ticks only count. A message
        stepped in between changes what is due, so ask again after it.
        """
        if self.role is Role.LEADER:
            due = min(
                self.cfg.heartbeat_ticks - self._heartbeat_elapsed,
                self.cfg.election_timeout_ticks - self.election_elapsed,
            )
            if self.cfg.check_quorum:
                window = self.cfg.election_timeout_ticks
                for node in sorted(self.progress):
                    leaves = self.progress[node].last_heard_tick + window - self._ticks
                    if leaves > 0:  # a peer already out of the set cannot leave it again
                        due = min(due, leaves)
            return max(1, due)
        if not self.promotable():
            # Its ticks only count; waking once per election timeout is cheap.
            return self.cfg.election_timeout_ticks
        return max(1, self._randomized_timeout - self.election_elapsed)

    def step(self, m: Message) -> None:
        """Handle one message from a peer.

        Raises RaftUsageError when the message is addressed to another node.
        """
        self._check_accepting_input()
        if m.recipient != self.id:
            raise RaftUsageError(f"message for {m.recipient} stepped into {self.id}")
        if not self._step_term(m):
            return
        if isinstance(m, VoteRequest):
            self._handle_vote_request(m)
        elif self.role is Role.LEADER:
            self._step_leader(m)
        elif self.role in (Role.CANDIDATE, Role.PRE_CANDIDATE):
            self._step_candidate(m)
        else:
            self._step_follower(m)

    def propose(self, data: bytes) -> int:
        """Append one command; returns its index. See ``propose_batch``."""
        return self.propose_batch((data,))[-1]

    def propose_batch(self, commands: Sequence[bytes]) -> list[int]:
        """Append commands to the leader's log; returns their indices.

        The entry at a returned index is the caller's only if, once applied, it
        still carries the current term. Raises NotLeader, or ProposalDropped
        while a leadership transfer runs or the uncommitted backlog is full.
        """
        self._check_accepting_input()
        self._check_can_propose(len(commands))
        first = self.log.last_index + 1
        entries = tuple(
            Entry(self.term, first + i, EntryKind.NORMAL, data) for i, data in enumerate(commands)
        )
        self._append_as_leader(entries)
        return [e.index for e in entries]

    def propose_conf_change(self, change: ConfChange) -> int:
        """Append a single-server membership change (dissertation §4.1); returns its index.

        Raises NotLeader, ProposalDropped, or ConfChangeRejected when: the
        leader has not yet committed an entry of its own term; another change
        is still uncommitted; a learner to promote has not caught up with the
        commit index; the change removes the leader itself (transfer first); or
        the change makes no sense for the current membership.
        """
        self._check_accepting_input()
        self._check_can_propose(1)
        if self.log.commit < self._term_start_index:
            raise ConfChangeRejected("the leader has not yet committed an entry of its term")
        if self._pending_conf_index > self.log.commit:
            raise ConfChangeRejected("another membership change is not yet committed")
        if change.node_id == self.id:
            raise ConfChangeRejected("the leader cannot change its own membership; transfer first")
        result = change.apply_to(self.membership)
        if change.node_id in result.voters:
            pr = self.progress.get(change.node_id)
            if pr is None or pr.match < self.log.commit:
                raise ConfChangeRejected(
                    f"learner {change.node_id} has not caught up "
                    f"(match {pr.match if pr else 0} < commit {self.log.commit})"
                )
        index = self.log.last_index + 1
        entry = Entry(self.term, index, EntryKind.CONF_CHANGE, encode_conf_entry(change, result))
        self._pending_conf_index = index
        self._append_as_leader((entry,))
        return index

    def read_index(self, request_id: int) -> None:
        """Ask for a linearizable read point (Raft §6.4, ReadIndex).

        The answer comes in a later ready batch, as a ReadState with this
        ``request_id``, or in ``failed_reads`` if leadership is lost first.
        Raises NotLeader, or ProposalDropped when too many reads wait.
        """
        self._check_accepting_input()
        if self.role is not Role.LEADER:
            raise NotLeader(self.leader_id)
        if (
            len(self._pending_reads) + len(self._reads_awaiting_commit)
            >= self.cfg.max_pending_reads
        ):
            raise ProposalDropped("too many reads in flight")
        if self.log.commit < self._term_start_index:
            # The commit index of a new leader may lag the true one until an
            # entry of its term commits; answer only after that.
            self._reads_awaiting_commit.append(request_id)
            return
        self._register_read(request_id)

    def leader_unreachable(self, peer: NodeId) -> None:
        """The runtime lost its connection to ``peer`` (its socket was closed or
        refused: typically the process died). If ``peer`` is this follower's
        leader, end the leader lease now and campaign after a random part of
        one election timeout, instead of waiting out a whole randomized timeout
        from the last heartbeat.

        Only timing changes, never safety: a wrong signal (the leader is fine
        and the connection just dropped) ends at the leader's next heartbeat,
        and meanwhile PreVote needs a majority that also lost the leader, so a
        healthy leader is not deposed. The random remainder ([0, T) ticks,
        drawn with the election timeout) keeps followers that saw the same
        loss from campaigning in lockstep.
        """
        self._check_accepting_input()
        if self.role is not Role.FOLLOWER or self.leader_id != peer:
            return
        self.election_elapsed = max(self.election_elapsed, self.cfg.election_timeout_ticks)

    def transfer_leadership(self, target: NodeId) -> None:
        """Hand leadership to ``target`` (dissertation §3.10).

        Proposals are refused until the transfer completes or an election
        timeout passes. Raises NotLeader, or ProposalDropped when ``target``
        is not a voter.
        """
        self._check_accepting_input()
        if self.role is not Role.LEADER:
            raise NotLeader(self.leader_id)
        if target in (self.id, self.lead_transferee):
            return
        if target not in self.membership.voters:
            raise ProposalDropped(f"cannot transfer leadership to {target}: not a voter")
        self.lead_transferee = target
        self.election_elapsed = 0
        if self.progress[target].match == self.log.last_index:
            self._send(TimeoutNowRequest(term=self.term, sender=self.id, recipient=target))
        else:
            self._send_append(target)

    def compact(self, snapshot: Snapshot) -> None:
        """Forget the log up to a snapshot the runtime has made and stored durably.

        Raises InvariantViolation when the snapshot is beyond the applied index
        or disagrees with the log.
        """
        self._check_accepting_input()
        self.log.compact(snapshot)

    # ---- output ------------------------------------------------------------

    def has_ready(self) -> bool:
        return bool(
            self._msgs
            or self._read_states
            or self._failed_reads
            or self._read_heartbeat_due
            or self._received_snapshot is not None
            or self.log.unstable_from <= self.log.last_index
            or self.log.applied < self.log.commit
            or self._hard_state() != self._persisted_hard_state
            or self._soft_state() != self._reported_soft_state
        )

    def ready(self) -> Ready:
        self._check_accepting_input()
        if self._read_heartbeat_due:
            self._read_heartbeat_due = False
            self._broadcast_heartbeat()
        soft = self._soft_state()
        hard = self._hard_state()
        rd = Ready(
            soft_state=soft if soft != self._reported_soft_state else None,
            hard_state=hard if hard != self._persisted_hard_state else None,
            snapshot=self._received_snapshot,
            entries=self.log.unstable_entries(),
            messages=tuple(self._msgs),
            committed_entries=self.log.next_committed(self.cfg.max_committed_per_ready),
            read_states=tuple(self._read_states),
            failed_reads=tuple(self._failed_reads),
        )
        self._reported_soft_state = soft
        self._msgs.clear()
        self._read_states.clear()
        self._failed_reads.clear()
        self._outstanding = rd
        return rd

    def advance(self, rd: Ready) -> None:
        """The runtime has persisted, sent and applied everything in ``rd``."""
        if self._outstanding is not rd:
            raise RaftUsageError("advance() must acknowledge the last ready() batch")
        self._outstanding = None
        self.log.stable_to(self.log.last_index)
        if rd.hard_state is not None:
            self._persisted_hard_state = rd.hard_state
        if rd.committed_entries:
            self.log.applied_to(rd.committed_entries[-1].index)
        self._received_snapshot = None
        if self.role is Role.LEADER and self._maybe_commit():
            self._on_commit_advanced()

    # ---- introspection -----------------------------------------------------

    @property
    def commit_index(self) -> int:
        return self.log.commit

    @property
    def applied_index(self) -> int:
        return self.log.applied

    @property
    def cluster_commit(self) -> int:
        """The highest commit index this node knows the cluster reached: its
        own, or one a leader announced (uncapped, in appends and heartbeats).

        A follower whose acknowledgements never reach the leader commits no
        further than its last acknowledged match, yet keeps hearing
        heartbeats; comparing this with ``applied_index`` tells it (and its
        health) that it serves stale state. Never decreases: a committed
        index stays committed across terms.
        """
        return max(self._announced_commit, self.log.commit)

    def promotable(self) -> bool:
        """Whether this node may campaign: only voters do."""
        return self.id in self.membership.voters

    # ---- terms and votes (every role) --------------------------------------

    def _step_term(self, m: Message) -> bool:
        """Apply the term rules of Raft §5.1; False when ``m`` is to be dropped."""
        if m.term > self.term:
            if isinstance(m, VoteRequest):
                if self._in_lease() and not m.transfer:
                    return False
                if m.pre_vote:
                    return True
                # Figure 2: only a current leader or a granted vote resets the
                # election timer. Resetting it here would let a candidate that
                # cannot win (stale log, fast clock) starve the one that can.
                elapsed = self.election_elapsed
                self._become_follower(m.term, None)
                self.election_elapsed = elapsed
                return True
            if isinstance(m, VoteResponse) and m.pre_vote and m.granted:
                return True
            leader = m.sender if isinstance(m, _FROM_LEADER) else None
            self._become_follower(m.term, leader)
            return True
        if m.term < self.term:
            if isinstance(m, (AppendRequest, HeartbeatRequest, SnapshotRequest)):
                # Tell a stale leader our term so it steps down; without this a
                # leader cut off by a partition could linger (CheckQuorum/PreVote).
                self._send(
                    AppendResponse(
                        term=self.term, sender=self.id, recipient=m.sender, success=False, index=0
                    )
                )
            elif isinstance(m, VoteRequest) and m.pre_vote:
                self._send(
                    VoteResponse(
                        term=self.term,
                        sender=self.id,
                        recipient=m.sender,
                        granted=False,
                        pre_vote=True,
                    )
                )
            return False
        return True

    def _in_lease(self) -> bool:
        return (
            self.cfg.check_quorum
            and self.leader_id is not None
            and self.election_elapsed < self.cfg.election_timeout_ticks
        )

    def _handle_vote_request(self, m: VoteRequest) -> None:
        """Grant at most one vote per term, to an up-to-date log (Raft §5.2, §5.4.1)."""
        can_vote = (
            self.voted_for == m.sender
            or (self.voted_for is None and self.leader_id is None)
            or (m.pre_vote and m.term > self.term)
        )
        if can_vote and self.log.is_up_to_date(m.last_log_index, m.last_log_term):
            if not m.pre_vote:
                self.election_elapsed = 0
                self.voted_for = m.sender
            self._send(
                VoteResponse(
                    term=m.term,
                    sender=self.id,
                    recipient=m.sender,
                    granted=True,
                    pre_vote=m.pre_vote,
                )
            )
        else:
            self._send(
                VoteResponse(
                    term=self.term,
                    sender=self.id,
                    recipient=m.sender,
                    granted=False,
                    pre_vote=m.pre_vote,
                )
            )

    # ---- role transitions --------------------------------------------------

    def _reset(self, term: int) -> None:
        if term != self.term:
            self.term = term
            self.voted_for = None
        self.leader_id = None
        self.election_elapsed = 0
        self._heartbeat_elapsed = 0
        self._randomized_timeout = self._draw_election_timeout()
        self._votes = {}
        self.progress = {}
        self.lead_transferee = None
        self._fail_reads()

    def _become_follower(self, term: int, leader: NodeId | None) -> None:
        self._reset(term)
        self.role = Role.FOLLOWER
        self.leader_id = leader

    def _become_pre_candidate(self) -> None:
        if self.role is Role.LEADER:
            raise InvariantViolation("a leader cannot become a pre-candidate")
        # PreVote changes neither term nor vote: a node that cannot win leaves
        # no trace in the cluster (dissertation §9.6).
        self._votes = {}
        self.leader_id = None
        self.role = Role.PRE_CANDIDATE

    def _become_candidate(self) -> None:
        if self.role is Role.LEADER:
            raise InvariantViolation("a leader cannot become a candidate")
        self._reset(self.term + 1)
        self.voted_for = self.id
        self.role = Role.CANDIDATE

    def _become_leader(self) -> None:
        if self.role is not Role.CANDIDATE:
            raise InvariantViolation(f"only a candidate can become leader, not a {self.role.value}")
        self._reset(self.term)
        self.role = Role.LEADER
        self.leader_id = self.id
        next_index = self.log.last_index + 1
        for node in sorted(self.membership.members - {self.id}):
            self.progress[node] = self._new_progress(node, next_index)
        # A leader may commit entries of earlier terms only by committing one
        # of its own (Raft §5.4.2), so it appends an empty one right away.
        self._term_start_index = next_index
        self._pending_conf_index = self.log.last_index
        self._append_as_leader((Entry(self.term, next_index, EntryKind.NOOP),))

    def _new_progress(self, node: NodeId, next_index: int) -> Progress:
        return Progress(
            match=0,
            next=next_index,
            max_inflight=self.cfg.max_inflight_appends,
            is_learner=node not in self.membership.voters,
            last_heard_tick=self._ticks,
        )

    # ---- elections -----------------------------------------------------------

    def _draw_election_timeout(self) -> int:
        t = self.cfg.election_timeout_ticks
        return self._rng.randrange(t, 2 * t)

    def _tick_election(self) -> None:
        self.election_elapsed += 1
        if self.promotable() and self.election_elapsed >= self._randomized_timeout:
            self.election_elapsed = 0
            self._campaign(_Campaign.PRE_VOTE if self.cfg.pre_vote else _Campaign.ELECTION)

    def _campaign(self, kind: _Campaign) -> None:
        if not self.promotable():
            return
        if kind is _Campaign.PRE_VOTE:
            self._become_pre_candidate()
            vote_term = self.term + 1
        else:
            self._become_candidate()
            vote_term = self.term
        self._votes = {self.id: True}
        if self._poll() is not VoteResult.PENDING:
            return
        for voter in sorted(self.membership.voters - {self.id}):
            self._send(
                VoteRequest(
                    term=vote_term,
                    sender=self.id,
                    recipient=voter,
                    last_log_index=self.log.last_index,
                    last_log_term=self.log.last_term,
                    pre_vote=kind is _Campaign.PRE_VOTE,
                    transfer=kind is _Campaign.TRANSFER,
                )
            )

    def _poll(self) -> VoteResult:
        """Count the votes and act on a decided election."""
        result = vote_result(self.membership.voters, self._votes)
        if result is VoteResult.WON:
            if self.role is Role.PRE_CANDIDATE:
                self._campaign(_Campaign.ELECTION)
            else:
                self._become_leader()
        elif result is VoteResult.LOST:
            self._become_follower(self.term, None)
        return result

    def _step_candidate(self, m: Message) -> None:
        if isinstance(m, (AppendRequest, HeartbeatRequest, SnapshotRequest)):
            # A leader of our term exists (Raft §5.2): follow it.
            self._become_follower(self.term, m.sender)
            self._step_follower(m)
        elif isinstance(m, VoteResponse):
            self._handle_vote_response(m)

    def _handle_vote_response(self, m: VoteResponse) -> None:
        if m.pre_vote != (self.role is Role.PRE_CANDIDATE):
            return
        if m.pre_vote and m.granted and m.term != self.term + 1:
            return
        self._votes[m.sender] = m.granted
        self._poll()

    # ---- follower --------------------------------------------------------------

    def _step_follower(self, m: Message) -> None:
        if isinstance(m, _FROM_LEADER):
            self.election_elapsed = 0
            self.leader_id = m.sender
        if isinstance(m, AppendRequest):
            self._handle_append(m)
        elif isinstance(m, HeartbeatRequest):
            self._handle_heartbeat(m)
        elif isinstance(m, SnapshotRequest):
            self._handle_snapshot(m)
        elif isinstance(m, TimeoutNowRequest):
            self._campaign(_Campaign.TRANSFER)

    def _handle_append(self, m: AppendRequest) -> None:
        self._announced_commit = max(self._announced_commit, m.leader_commit)
        if m.prev_log_index < self.log.commit:
            # Everything up to our commit index matches any current leader:
            # check what the message says of it rather than assume it.
            overlap = [(m.prev_log_index, m.prev_log_term)]
            overlap += [(e.index, e.term) for e in m.entries if e.index <= self.log.commit]
            self._check_committed_agree(m.sender, overlap)
            self._respond_append(m.sender, success=True, index=self.log.commit)
            return
        if not self.log.matches(m.prev_log_index, m.prev_log_term):
            hint = self.log.find_conflict_by_term(
                min(m.prev_log_index, self.log.last_index), m.prev_log_term
            )
            self._respond_append(
                m.sender,
                success=False,
                index=m.prev_log_index,
                reject_hint_index=hint,
                reject_hint_term=self.log.term(hint) or 0,
            )
            return
        for i, e in enumerate(m.entries):
            if self.log.term(e.index) != e.term:
                self.log.append(m.entries[i:])
                self._on_log_changed()
                break
        last_new = m.prev_log_index + len(m.entries)
        self.log.commit_to(max(self.log.commit, min(m.leader_commit, last_new)))
        if m.commit_only:
            return  # the leader knows we match there; heartbeats carry liveness
        self._respond_append(m.sender, success=True, index=last_new)

    def _handle_heartbeat(self, m: HeartbeatRequest) -> None:
        # The leader sends min(match, commit), which our log is known to hold.
        self._announced_commit = max(self._announced_commit, m.cluster_commit)
        if m.leader_commit > self.log.commit:
            self.log.commit_to(min(m.leader_commit, self.log.last_index))
        if m.answer_optional:
            return
        self._send(
            HeartbeatResponse(
                term=self.term, sender=self.id, recipient=m.sender, read_seq=m.read_seq
            )
        )

    def _check_committed_agree(self, sender: NodeId, claims: list[tuple[int, int]]) -> None:
        """Raise CommittedLogContradicted when a leader's (index, term) claim
        about our committed prefix disagrees with the entry we hold there
        (indices we compacted away or never held cannot be checked)."""
        for index, term in claims:
            if index == 0 or index > self.log.commit:
                continue
            ours = self.log.term(index)
            if ours is not None and ours != term:
                raise CommittedLogContradicted(
                    f"{sender} (leader of term {self.term}) says entry {index} has term "
                    f"{term}; this node committed it with term {ours}"
                )

    def _handle_snapshot(self, m: SnapshotRequest) -> None:
        meta = m.snapshot.metadata
        if meta.index <= self.log.commit:
            self._check_committed_agree(m.sender, [(meta.index, meta.term)])
            self._respond_append(m.sender, success=True, index=self.log.commit)
            return
        if self.log.matches(meta.index, meta.term):
            # We already hold the snapshot's last entry: just learn it is committed.
            self.log.commit_to(meta.index)
        else:
            self.log.restore(m.snapshot)
            self._received_snapshot = m.snapshot
            self._on_log_changed()
        self._respond_append(m.sender, success=True, index=meta.index)

    def _respond_append(
        self,
        to: NodeId,
        *,
        success: bool,
        index: int,
        reject_hint_index: int = 0,
        reject_hint_term: int = 0,
    ) -> None:
        self._send(
            AppendResponse(
                term=self.term,
                sender=self.id,
                recipient=to,
                success=success,
                index=index,
                reject_hint_index=reject_hint_index,
                reject_hint_term=reject_hint_term,
            )
        )

    # ---- leader ------------------------------------------------------------------

    def _tick_leader(self) -> None:
        self._heartbeat_elapsed += 1
        self.election_elapsed += 1
        if self.cfg.check_quorum and not self._quorum_recently_active():
            self._become_follower(self.term, None)
            return
        if self.election_elapsed >= self.cfg.election_timeout_ticks:
            self.election_elapsed = 0
            self.lead_transferee = None  # the transfer did not finish in time
        if self._heartbeat_elapsed >= self.cfg.heartbeat_ticks:
            self._heartbeat_elapsed = 0
            self._broadcast_heartbeat()

    def recently_active(self) -> frozenset[NodeId]:
        """This node and, on a leader, every member it heard from within an
        election timeout: what CheckQuorum counts (operators see it too)."""
        window = self.cfg.election_timeout_ticks
        return frozenset({self.id}) | {
            node for node, pr in self.progress.items() if self._ticks - pr.last_heard_tick < window
        }

    def _quorum_recently_active(self) -> bool:
        return has_quorum(self.membership.voters, self.recently_active())

    def _step_leader(self, m: Message) -> None:
        if isinstance(m, AppendResponse):
            self._handle_append_response(m)
        elif isinstance(m, HeartbeatResponse):
            self._handle_heartbeat_response(m)
        elif isinstance(m, (AppendRequest, HeartbeatRequest, SnapshotRequest)):
            raise InvariantViolation(f"two leaders in term {self.term}: {self.id} and {m.sender}")

    def _handle_append_response(self, m: AppendResponse) -> None:
        pr = self.progress.get(m.sender)
        if pr is None or m.index > self.log.last_index:
            return
        pr.last_heard_tick = self._ticks
        if not m.success:
            hint = m.reject_hint_index
            if m.reject_hint_term > 0:
                hint = self.log.find_conflict_by_term(m.reject_hint_index, m.reject_hint_term)
            if pr.maybe_decrease_to(m.index, hint):
                if pr.state is ProgressState.REPLICATE:
                    pr.become_probe()
                self._send_append(m.sender)
            return
        if not pr.maybe_update(m.index):
            return
        snapshot_done = pr.state is ProgressState.SNAPSHOT and pr.match >= pr.pending_snapshot
        if pr.state is ProgressState.PROBE or snapshot_done:
            pr.become_replicate()
        if self._maybe_commit():
            self._on_commit_advanced()
        while self._send_append(m.sender, send_if_empty=False):
            pass
        if m.sender == self.lead_transferee and pr.match == self.log.last_index:
            self._send(TimeoutNowRequest(term=self.term, sender=self.id, recipient=m.sender))

    def _handle_heartbeat_response(self, m: HeartbeatResponse) -> None:
        pr = self.progress.get(m.sender)
        if pr is None:
            return
        pr.last_heard_tick = self._ticks
        pr.probe_sent = False
        if (
            pr.state is ProgressState.SNAPSHOT
            and self._ticks - pr.snapshot_sent_tick >= self.cfg.election_timeout_ticks
        ):
            pr.become_probe()  # the snapshot was probably lost: start over
        if pr.state is ProgressState.REPLICATE and pr.is_paused():
            # An append may have been lost; the window must not stay shut for
            # ever. If it was lost, the next append is rejected and we probe.
            pr.inflight.popleft()
        if pr.match < self.log.last_index:
            self._send_append(m.sender)
        if m.read_seq > self._read_acks.get(m.sender, 0):
            self._read_acks[m.sender] = m.read_seq
            self._release_reads()

    def _check_can_propose(self, count: int) -> None:
        if self.role is not Role.LEADER:
            raise NotLeader(self.leader_id)
        if self.lead_transferee is not None:
            raise ProposalDropped(f"leadership is being transferred to {self.lead_transferee}")
        if self.log.last_index - self.log.commit + count > self.cfg.max_uncommitted_entries:
            raise ProposalDropped("too many uncommitted entries; retry later")

    def _append_as_leader(self, entries: tuple[Entry, ...]) -> None:
        self.log.append(entries)
        self._on_log_changed()
        for node in sorted(self.progress):
            self._send_append(node, send_if_empty=False)

    def _maybe_commit(self) -> bool:
        """Advance the commit index to what a majority stores (Raft §5.3, §5.4.2)."""
        match = {node: pr.match for node, pr in self.progress.items()}
        match[self.id] = self.log.unstable_from - 1
        index = committed_index(self.membership.voters, match)
        if index > self.log.commit and self._may_commit_at(index):
            self.log.commit_to(index)
            return True
        return False

    def _may_commit_at(self, index: int) -> bool:
        # Figure 8: counting replicas commits only entries of the current term.
        return self.log.term(index) == self.term

    def _on_commit_advanced(self) -> None:
        if self._reads_awaiting_commit and self.log.commit >= self._term_start_index:
            waiting, self._reads_awaiting_commit = self._reads_awaiting_commit, []
            for request_id in waiting:
                self._register_read(request_id)
        # Tell followers the new commit index without waiting for a heartbeat.
        for node in sorted(self.progress):
            self._send_append(node, commit_only=True)

    def _send_append(
        self, to: NodeId, *, send_if_empty: bool = True, commit_only: bool = False
    ) -> bool:
        """Send ``to`` what it lacks, or a snapshot; False when nothing was sent.

        ``commit_only``: when nothing is left to send to a follower in
        replicate state, the empty append only spreads the commit index and
        asks for no answer (a probe always does).
        """
        pr = self.progress[to]
        if pr.is_paused():
            return False
        prev_index = pr.next - 1
        prev_term = self.log.term(prev_index)
        if prev_term is None:
            return self._send_snapshot(to, pr)
        entries = self.log.slice(
            pr.next,
            self.log.last_index + 1,
            self.cfg.max_entries_per_append,
            self.cfg.max_bytes_per_append,
        )
        if not entries and not send_if_empty:
            return False
        self._send(
            AppendRequest(
                term=self.term,
                sender=self.id,
                recipient=to,
                prev_log_index=prev_index,
                prev_log_term=prev_term,
                entries=entries,
                leader_commit=self.log.commit,
                commit_only=commit_only and not entries and pr.state is ProgressState.REPLICATE,
            )
        )
        if entries:
            pr.sent_entries(entries[-1].index)
        elif pr.state is ProgressState.PROBE:
            pr.probe_sent = True
        return True

    def _send_snapshot(self, to: NodeId, pr: Progress) -> bool:
        snapshot = self.log.snapshot
        if snapshot is None:
            raise InvariantViolation(f"log compacted to {self.log.base.index} but no snapshot kept")
        pr.become_snapshot(snapshot.metadata.index, self._ticks)
        self._send(SnapshotRequest(term=self.term, sender=self.id, recipient=to, snapshot=snapshot))
        return True

    def _broadcast_heartbeat(self) -> None:
        # A round sent while no read waits asks for no answers (below), so it
        # must not hold back the round a read registered after it needs.
        self._read_round_seq = self._read_seq if self._pending_reads else 0
        for node in sorted(self.progress):
            pr = self.progress[node]
            self._send(
                HeartbeatRequest(
                    term=self.term,
                    sender=self.id,
                    recipient=node,
                    leader_commit=min(pr.match, self.log.commit),
                    read_seq=self._read_seq,
                    cluster_commit=self.log.commit,
                    answer_optional=not self._heartbeat_answer_needed(pr),
                )
            )

    def _heartbeat_answer_needed(self, pr: Progress) -> bool:
        """Whether the leader would learn anything from this follower's answer.

        An answer confirms a read round, reopens a paused or probing window,
        prompts the append a lagging follower still needs, or keeps the
        follower in the set CheckQuorum counts. An idle, caught-up follower
        answers only once a third of an election timeout has passed since it
        was last heard (then every heartbeat until one gets through), so
        two-thirds of the window remain for lost answers. On an idle cluster
        this removes most answers, which are most of its messages' cost.
        """
        if self._pending_reads or self.lead_transferee is not None:
            return True
        if pr.state is not ProgressState.REPLICATE or pr.is_paused():
            return True
        if pr.match < self.log.last_index:
            return True
        quiet_ticks = max(self.cfg.heartbeat_ticks, self.cfg.election_timeout_ticks // 3)
        return self._ticks - pr.last_heard_tick >= quiet_ticks

    # ---- reads -------------------------------------------------------------------

    def _register_read(self, request_id: int) -> None:
        self._read_seq += 1
        self._pending_reads.append((request_id, self.log.commit, self._read_seq))
        self._release_reads()

    def _release_reads(self) -> None:
        """Answer, in order, every read whose heartbeat round a majority acknowledged.

        Batching: at most one read round is unconfirmed at a time. Reads
        registered meanwhile wait and share the next round, which starts once
        the current one is confirmed (or with the next tick's heartbeats,
        which carry the newest read_seq). Each read still needs a round sent
        after it was registered, since its seq exceeds every earlier round's.
        """
        released = 0
        for request_id, index, seq in self._pending_reads:
            if not self._read_confirmed(seq):
                break
            self._read_states.append(ReadState(request_id, index))
            released += 1
        if released:
            del self._pending_reads[:released]
        self._read_heartbeat_due = bool(self._pending_reads) and self._read_confirmed(
            self._read_round_seq
        )

    def _read_confirmed(self, seq: int) -> bool:
        """Whether a majority acknowledged heartbeats carrying ``seq`` or later."""
        if seq == 0:
            return True
        acks = {self.id} | {node for node, s in self._read_acks.items() if s >= seq}
        return has_quorum(self.membership.voters, acks)

    def _fail_reads(self) -> None:
        self._failed_reads.extend(r[0] for r in self._pending_reads)
        self._failed_reads.extend(self._reads_awaiting_commit)
        self._pending_reads = []
        self._reads_awaiting_commit = []
        self._read_acks = {}
        self._read_round_seq = 0
        self._read_heartbeat_due = False

    # ---- shared plumbing ---------------------------------------------------------

    def _on_log_changed(self) -> None:
        """Re-derive the membership after the log grew, shrank or was replaced."""
        current = self.log.membership()
        if current == self.membership:
            return
        self.membership = current
        if self.role is not Role.LEADER:
            return
        if self.id not in current.voters:
            raise InvariantViolation(f"leader {self.id} is no longer a voter")
        next_index = self.log.last_index + 1
        for node in sorted(current.members - {self.id}):
            pr = self.progress.get(node)
            if pr is None:
                self.progress[node] = self._new_progress(node, next_index)
            else:
                pr.is_learner = node not in current.voters
        for node in sorted(set(self.progress) - current.members):
            del self.progress[node]
            self._read_acks.pop(node, None)
            if self.lead_transferee == node:
                self.lead_transferee = None
        if self._maybe_commit():
            self._on_commit_advanced()
        self._release_reads()

    def _send(self, m: Message) -> None:
        self._msgs.append(m)

    def _hard_state(self) -> HardState:
        return HardState(self.term, self.voted_for, self.log.commit)

    def _soft_state(self) -> SoftState:
        return SoftState(self.role, self.leader_id, self.term)

    def _check_accepting_input(self) -> None:
        if self._outstanding is not None:
            raise RaftUsageError("call advance() for the last ready() batch first")
