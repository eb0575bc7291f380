"""The one translation between the core's messages and the peer protobufs.

Theory of operation
-------------------
The core speaks frozen dataclasses (``sidecar.raft.messages``); peers speak
``raftsidecar.peer.v1``. Nothing else in the sidecar touches the wire types.

* ``to_wire`` maps one core message to a ``RaftMessage``. The envelope fields
  ``sender`` and ``recipient`` are not part of it: they travel once per batch
  in ``DeliverRequest.from_node`` / ``to_node``. ``term`` travels inside every
  wire message, as the proto defines it.
* ``from_wire`` is the inverse, given the batch's sender and recipient. It
  trusts nothing: an unset oneof, an unknown or unspecified entry type, an
  entry index or term of 0, a candidate or leader id that disagrees with the
  batch's sender, or entries that are not contiguous after ``prev_log_index``
  raise ``WireFormatError``. The core's own handlers assume those properties
  (``_handle_append`` computes the last new index as ``prev + len(entries)``),
  so a buggy or hostile peer must be stopped here, not there.
* ``SnapshotRequest`` never travels as a ``RaftMessage``: its data may be far
  larger than a gRPC message, so it is streamed by ``InstallSnapshot`` as one
  header (``snapshot_header``) followed by data chunks, and rebuilt on the far
  side by ``snapshot_from_header_and_data``.
"""

from __future__ import annotations

from collections.abc import Sequence

from sidecar.pb.raftsidecar.peer.v1 import peer_pb2
from sidecar.raft.errors import InvariantViolation
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
from sidecar.raft.types import Entry, EntryKind, Membership, NodeId, Snapshot, SnapshotMetadata
from sidecar.transport.errors import TransportUsageError, WireFormatError

__all__ = [
    "check_snapshot_header",
    "from_wire",
    "snapshot_from_header_and_data",
    "snapshot_header",
    "to_wire",
]

_KIND_TO_WIRE: dict[EntryKind, peer_pb2.EntryType.ValueType] = {
    EntryKind.NORMAL: peer_pb2.ENTRY_TYPE_NORMAL,
    EntryKind.CONF_CHANGE: peer_pb2.ENTRY_TYPE_CONF_CHANGE,
    EntryKind.NOOP: peer_pb2.ENTRY_TYPE_NOOP,
}
_KIND_FROM_WIRE: dict[int, EntryKind] = {int(v): k for k, v in _KIND_TO_WIRE.items()}


# --- core -> wire -------------------------------------------------------------


def to_wire(msg: Message) -> peer_pb2.RaftMessage:
    """Encode one core message (without its sender/recipient, which the batch carries).

    Raises ``TransportUsageError`` for a ``SnapshotRequest`` (it is streamed,
    see ``snapshot_header``) and ``ValueError`` from protobuf for a negative
    number, which the core never produces.
    """
    match msg:
        case VoteRequest():
            return peer_pb2.RaftMessage(
                request_vote=peer_pb2.RequestVote(
                    term=msg.term,
                    candidate_id=msg.sender,
                    last_log_index=msg.last_log_index,
                    last_log_term=msg.last_log_term,
                    pre_vote=msg.pre_vote,
                    leadership_transfer=msg.transfer,
                )
            )
        case VoteResponse():
            return peer_pb2.RaftMessage(
                request_vote_response=peer_pb2.RequestVoteResponse(
                    term=msg.term, granted=msg.granted, pre_vote=msg.pre_vote
                )
            )
        case AppendRequest():
            return peer_pb2.RaftMessage(
                append_entries=peer_pb2.AppendEntries(
                    term=msg.term,
                    leader_id=msg.sender,
                    prev_log_index=msg.prev_log_index,
                    prev_log_term=msg.prev_log_term,
                    entries=[_entry_to_wire(e) for e in msg.entries],
                    leader_commit=msg.leader_commit,
                    commit_only=msg.commit_only,
                )
            )
        case AppendResponse():
            return peer_pb2.RaftMessage(
                append_entries_response=peer_pb2.AppendEntriesResponse(
                    term=msg.term,
                    success=msg.success,
                    index=msg.index,
                    reject_hint_index=msg.reject_hint_index,
                    reject_hint_term=msg.reject_hint_term,
                )
            )
        case HeartbeatRequest():
            return peer_pb2.RaftMessage(
                heartbeat=peer_pb2.Heartbeat(
                    term=msg.term,
                    leader_commit=msg.leader_commit,
                    read_seq=msg.read_seq,
                    cluster_commit=msg.cluster_commit,
                    answer_optional=msg.answer_optional,
                )
            )
        case HeartbeatResponse():
            return peer_pb2.RaftMessage(
                heartbeat_response=peer_pb2.HeartbeatResponse(term=msg.term, read_seq=msg.read_seq)
            )
        case TimeoutNowRequest():
            return peer_pb2.RaftMessage(timeout_now=peer_pb2.TimeoutNow(term=msg.term))
        case SnapshotRequest():
            raise TransportUsageError(
                "SnapshotRequest is streamed through InstallSnapshot, not encoded as a RaftMessage"
            )
    raise TransportUsageError(f"not a Raft message: {type(msg).__name__}")


def _entry_to_wire(entry: Entry) -> peer_pb2.Entry:
    return peer_pb2.Entry(
        term=entry.term, index=entry.index, type=_KIND_TO_WIRE[entry.kind], data=entry.data
    )


def snapshot_header(msg: SnapshotRequest) -> peer_pb2.InstallSnapshotHeader:
    """The header that opens the InstallSnapshot stream carrying ``msg``."""
    meta = msg.snapshot.metadata
    return peer_pb2.InstallSnapshotHeader(
        term=msg.term,
        leader_id=msg.sender,
        metadata=peer_pb2.SnapshotMetadata(
            index=meta.index,
            term=meta.term,
            conf_state=peer_pb2.ConfState(
                voters=sorted(meta.membership.voters),
                learners=sorted(meta.membership.learners),
            ),
        ),
        total_size_bytes=len(msg.snapshot.data),
    )


# --- wire -> core -------------------------------------------------------------


def from_wire(pb: peer_pb2.RaftMessage, sender: NodeId, recipient: NodeId) -> Message:
    """Decode one wire message of a batch sent by ``sender`` to ``recipient``.

    Raises ``WireFormatError`` when the message is malformed (see the module
    docstring for what is checked).
    """
    _check_node_ids(sender, recipient)
    kind = pb.WhichOneof("message")
    if kind is None:
        raise WireFormatError(f"RaftMessage from {sender!r} has no message set (empty oneof)")
    if kind == "request_vote":
        rv = pb.request_vote
        _check_same_sender("request_vote.candidate_id", rv.candidate_id, sender)
        return VoteRequest(
            term=rv.term,
            sender=sender,
            recipient=recipient,
            last_log_index=rv.last_log_index,
            last_log_term=rv.last_log_term,
            pre_vote=rv.pre_vote,
            transfer=rv.leadership_transfer,
        )
    if kind == "request_vote_response":
        rvr = pb.request_vote_response
        return VoteResponse(
            term=rvr.term,
            sender=sender,
            recipient=recipient,
            granted=rvr.granted,
            pre_vote=rvr.pre_vote,
        )
    if kind == "append_entries":
        ae = pb.append_entries
        _check_same_sender("append_entries.leader_id", ae.leader_id, sender)
        if ae.commit_only and ae.entries:
            raise WireFormatError("append_entries.commit_only with entries")
        return AppendRequest(
            term=ae.term,
            sender=sender,
            recipient=recipient,
            prev_log_index=ae.prev_log_index,
            prev_log_term=ae.prev_log_term,
            entries=_entries_from_wire(ae),
            leader_commit=ae.leader_commit,
            commit_only=ae.commit_only,
        )
    if kind == "append_entries_response":
        aer = pb.append_entries_response
        return AppendResponse(
            term=aer.term,
            sender=sender,
            recipient=recipient,
            success=aer.success,
            index=aer.index,
            reject_hint_index=aer.reject_hint_index,
            reject_hint_term=aer.reject_hint_term,
        )
    if kind == "heartbeat":
        hb = pb.heartbeat
        return HeartbeatRequest(
            term=hb.term,
            sender=sender,
            recipient=recipient,
            leader_commit=hb.leader_commit,
            read_seq=hb.read_seq,
            cluster_commit=hb.cluster_commit,
            answer_optional=hb.answer_optional,
        )
    if kind == "heartbeat_response":
        hbr = pb.heartbeat_response
        return HeartbeatResponse(
            term=hbr.term, sender=sender, recipient=recipient, read_seq=hbr.read_seq
        )
    if kind == "timeout_now":
        return TimeoutNowRequest(term=pb.timeout_now.term, sender=sender, recipient=recipient)
    # A oneof member added to the proto but not to this codec.
    raise WireFormatError(f"unsupported RaftMessage kind {kind!r} from {sender!r}")


def _check_node_ids(sender: NodeId, recipient: NodeId) -> None:
    if not sender:
        raise WireFormatError("sender node id is empty")
    if not recipient:
        raise WireFormatError("recipient node id is empty")


def _check_same_sender(field: str, value: str, sender: NodeId) -> None:
    if value != sender:
        raise WireFormatError(f"{field} is {value!r} but the batch comes from {sender!r}")


def _entries_from_wire(ae: peer_pb2.AppendEntries) -> tuple[Entry, ...]:
    """Entries of an AppendEntries, checked to continue the log at ``prev_log_index``."""
    entries: list[Entry] = []
    expected_index = ae.prev_log_index + 1
    last_term = ae.prev_log_term
    for position, pe in enumerate(ae.entries):
        where = f"append_entries.entries[{position}]"
        if pe.index == 0 or pe.term == 0:
            raise WireFormatError(
                f"{where} has index {pe.index} and term {pe.term}; both must be >= 1"
            )
        if pe.index != expected_index:
            raise WireFormatError(
                f"{where} has index {pe.index}, expected {expected_index}: entries must be "
                f"contiguous after prev_log_index {ae.prev_log_index}"
            )
        if pe.term < last_term or pe.term > ae.term:
            raise WireFormatError(
                f"{where} has term {pe.term}; terms must not decrease along the log "
                f"(previous {last_term}) nor exceed the leader's term {ae.term}"
            )
        entries.append(_entry_from_wire(pe, where))
        expected_index += 1
        last_term = pe.term
    return tuple(entries)


def _entry_from_wire(pe: peer_pb2.Entry, where: str) -> Entry:
    kind = _KIND_FROM_WIRE.get(int(pe.type))
    if kind is None:
        name = "ENTRY_TYPE_UNSPECIFIED" if pe.type == peer_pb2.ENTRY_TYPE_UNSPECIFIED else "unknown"
        raise WireFormatError(f"{where} has entry type {int(pe.type)} ({name})")
    try:
        return Entry(term=pe.term, index=pe.index, kind=kind, data=pe.data)
    except InvariantViolation as e:  # pragma: no cover - the checks above come first
        raise WireFormatError(f"{where}: {e}") from e


def _membership_from_wire(cs: peer_pb2.ConfState) -> Membership:
    voters = _unique_ids("voters", cs.voters)
    learners = _unique_ids("learners", cs.learners)
    try:
        return Membership(voters=voters, learners=learners)
    except InvariantViolation as e:
        raise WireFormatError(f"snapshot conf_state: {e}") from e


def _unique_ids(field: str, ids: Sequence[str]) -> frozenset[NodeId]:
    result = frozenset(ids)
    if len(result) != len(ids):
        raise WireFormatError(f"snapshot conf_state.{field} lists a node twice: {list(ids)}")
    if "" in result:
        raise WireFormatError(f"snapshot conf_state.{field} holds an empty node id")
    return result


def check_snapshot_header(header: peer_pb2.InstallSnapshotHeader, sender: NodeId) -> None:
    """Check a header before any data is read; raises ``WireFormatError``."""
    _check_same_sender("header.leader_id", header.leader_id, sender)
    if not header.HasField("metadata"):
        raise WireFormatError("snapshot header has no metadata")
    meta = header.metadata
    if meta.index == 0 or meta.term == 0:
        raise WireFormatError(
            f"snapshot metadata has index {meta.index} and term {meta.term}; both must be >= 1"
        )
    if meta.term > header.term:
        raise WireFormatError(f"snapshot term {meta.term} exceeds the leader's term {header.term}")
    if not meta.HasField("conf_state") or not meta.conf_state.voters:
        raise WireFormatError("snapshot metadata has no voters in conf_state")


def snapshot_from_header_and_data(
    header: peer_pb2.InstallSnapshotHeader, data: bytes, sender: NodeId, recipient: NodeId
) -> SnapshotRequest:
    """Rebuild the ``SnapshotRequest`` whose stream opened with ``header``.

    Raises ``WireFormatError`` when the header is malformed or ``data`` is not
    exactly ``total_size_bytes`` long (a truncated or overlong transfer).
    """
    _check_node_ids(sender, recipient)
    check_snapshot_header(header, sender)
    if len(data) != header.total_size_bytes:
        raise WireFormatError(
            f"snapshot data is {len(data)} bytes but the header announced {header.total_size_bytes}"
        )
    meta = header.metadata
    try:
        metadata = SnapshotMetadata(
            index=meta.index, term=meta.term, membership=_membership_from_wire(meta.conf_state)
        )
    except InvariantViolation as e:  # pragma: no cover - check_snapshot_header comes first
        raise WireFormatError(f"snapshot metadata: {e}") from e
    return SnapshotRequest(
        term=header.term,
        sender=sender,
        recipient=recipient,
        snapshot=Snapshot(metadata=metadata, data=data),
    )
