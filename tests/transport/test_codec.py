"""The codec: every core message survives the wire; malformed wire input is refused.

Round trips go through bytes (``SerializeToString`` / ``FromString``), as on a
real connection. Hypothesis generates messages within the shapes the core
produces (contiguous entries, non-decreasing terms); the malformed cases are
written out one by one, each with the part of the message it should name.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sidecar.pb.raftsidecar.peer.v1 import peer_pb2
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
from sidecar.raft.types import Entry, EntryKind, Membership, Snapshot, SnapshotMetadata
from sidecar.transport.codec import (
    from_wire,
    snapshot_from_header_and_data,
    snapshot_header,
    to_wire,
)
from sidecar.transport.errors import TransportUsageError, WireFormatError

U64 = (1 << 64) - 1
ENV = {"sender": "sidecar-0", "recipient": "sidecar-1"}


def through_bytes(msg: Message) -> Message:
    wire = peer_pb2.RaftMessage.FromString(to_wire(msg).SerializeToString())
    return from_wire(wire, msg.sender, msg.recipient)


EXAMPLES: list[Message] = [
    VoteRequest(term=3, last_log_index=7, last_log_term=2, **ENV),
    VoteRequest(term=4, last_log_index=7, last_log_term=2, pre_vote=True, **ENV),
    VoteRequest(term=5, last_log_index=0, last_log_term=0, transfer=True, **ENV),
    VoteResponse(term=3, granted=True, **ENV),
    VoteResponse(term=3, granted=False, pre_vote=True, **ENV),
    AppendRequest(
        term=4,
        prev_log_index=9,
        prev_log_term=3,
        entries=(
            Entry(3, 10, EntryKind.NORMAL, b"settle eur"),
            Entry(4, 11, EntryKind.NOOP),
            Entry(4, 12, EntryKind.CONF_CHANGE, b"\x00\x01conf"),
        ),
        leader_commit=9,
        **ENV,
    ),
    AppendRequest(term=4, prev_log_index=0, prev_log_term=0, entries=(), leader_commit=0, **ENV),
    AppendResponse(term=4, success=True, index=12, **ENV),
    AppendResponse(term=4, success=False, index=12, reject_hint_index=8, reject_hint_term=2, **ENV),
    HeartbeatRequest(term=4, leader_commit=11, read_seq=0, cluster_commit=12, **ENV),
    HeartbeatRequest(
        term=U64, leader_commit=U64, read_seq=U64, cluster_commit=U64, answer_optional=True, **ENV
    ),
    HeartbeatResponse(term=4, read_seq=17, **ENV),
    TimeoutNowRequest(term=4, **ENV),
]


@pytest.mark.parametrize("msg", EXAMPLES, ids=lambda m: type(m).__name__)
def test_every_message_kind_round_trips(msg: Message) -> None:
    assert through_bytes(msg) == msg


def test_examples_cover_every_message_kind_but_the_streamed_snapshot() -> None:
    kinds = {type(m) for m in EXAMPLES}
    assert kinds == set(Message.__args__) - {SnapshotRequest}  # type: ignore[attr-defined]


def test_snapshot_round_trips_through_header_and_data() -> None:
    msg = SnapshotRequest(
        term=7,
        snapshot=Snapshot(
            SnapshotMetadata(
                index=120,
                term=6,
                membership=Membership(frozenset({"c", "a", "b"}), frozenset({"d"})),
            ),
            data=b"state" * 1000,
        ),
        **ENV,
    )
    header = peer_pb2.InstallSnapshotHeader.FromString(snapshot_header(msg).SerializeToString())
    assert list(header.metadata.conf_state.voters) == ["a", "b", "c"]  # sorted on the wire
    assert header.total_size_bytes == 5000
    assert snapshot_from_header_and_data(header, msg.snapshot.data, **ENV) == msg


def test_snapshot_request_is_not_a_raft_message() -> None:
    msg = SnapshotRequest(
        term=1, snapshot=Snapshot(SnapshotMetadata(1, 1, Membership(frozenset({"a"})))), **ENV
    )
    with pytest.raises(TransportUsageError, match="InstallSnapshot"):
        to_wire(msg)


# --- property test ---------------------------------------------------------------

node_ids = st.sampled_from(["sidecar-0", "sidecar-1", "sidecar-2", "n"])
u64 = st.integers(0, U64)
small = st.integers(0, 1 << 20)


@st.composite
def append_requests(draw: st.DrawFn, term: int, sender: str, recipient: str) -> AppendRequest:
    prev_index = draw(small)
    prev_term = 0 if prev_index == 0 else draw(st.integers(1, term))
    entries: list[Entry] = []
    last_term = max(prev_term, 1)
    for i in range(draw(st.integers(0, 6))):
        last_term = draw(st.integers(last_term, term))
        kind = draw(st.sampled_from(EntryKind))
        entries.append(Entry(last_term, prev_index + 1 + i, kind, draw(st.binary(max_size=32))))
    return AppendRequest(
        term=term,
        sender=sender,
        recipient=recipient,
        prev_log_index=prev_index,
        prev_log_term=prev_term,
        entries=tuple(entries),
        leader_commit=draw(small),
    )


@st.composite
def messages(draw: st.DrawFn) -> Message:
    term = draw(st.integers(1, U64))
    env = {"term": term, "sender": draw(node_ids), "recipient": draw(node_ids)}
    kind = draw(st.integers(0, 6))
    if kind == 0:
        return VoteRequest(
            last_log_index=draw(u64),
            last_log_term=draw(u64),
            pre_vote=draw(st.booleans()),
            transfer=draw(st.booleans()),
            **env,
        )
    if kind == 1:
        return VoteResponse(granted=draw(st.booleans()), pre_vote=draw(st.booleans()), **env)
    if kind == 2:
        return draw(append_requests(term, env["sender"], env["recipient"]))
    if kind == 3:
        return AppendResponse(
            success=draw(st.booleans()),
            index=draw(u64),
            reject_hint_index=draw(u64),
            reject_hint_term=draw(u64),
            **env,
        )
    if kind == 4:
        return HeartbeatRequest(
            leader_commit=draw(u64),
            read_seq=draw(u64),
            cluster_commit=draw(u64),
            answer_optional=draw(st.booleans()),
            **env,
        )
    if kind == 5:
        return HeartbeatResponse(read_seq=draw(u64), **env)
    return TimeoutNowRequest(**env)


@given(messages())
def test_generated_messages_round_trip(msg: Message) -> None:
    assert through_bytes(msg) == msg


@given(
    st.builds(
        Membership,
        voters=st.frozensets(node_ids, min_size=1),
    ),
    st.integers(1, U64),
    st.binary(max_size=256),
)
def test_generated_snapshots_round_trip(membership: Membership, index: int, data: bytes) -> None:
    msg = SnapshotRequest(
        term=9, snapshot=Snapshot(SnapshotMetadata(index, 9, membership), data), **ENV
    )
    assert snapshot_from_header_and_data(snapshot_header(msg), data, **ENV) == msg


# --- malformed input ------------------------------------------------------------


def append_with(*entries: peer_pb2.Entry, prev: int = 4, term: int = 5) -> peer_pb2.RaftMessage:
    return peer_pb2.RaftMessage(
        append_entries=peer_pb2.AppendEntries(
            term=term, leader_id="sidecar-0", prev_log_index=prev, prev_log_term=2, entries=entries
        )
    )


def entry(index: int, term: int = 3, type_: int = peer_pb2.ENTRY_TYPE_NORMAL) -> peer_pb2.Entry:
    return peer_pb2.Entry(index=index, term=term, type=type_)  # type: ignore[arg-type]


MALFORMED: dict[str, tuple[peer_pb2.RaftMessage, str]] = {
    "unset oneof": (peer_pb2.RaftMessage(), "no message set"),
    "entry index 0": (append_with(entry(0), prev=0), "index 0"),
    "entry term 0": (append_with(entry(5, term=0)), "term 0"),
    "unspecified entry type": (
        append_with(entry(5, type_=peer_pb2.ENTRY_TYPE_UNSPECIFIED)),
        "ENTRY_TYPE_UNSPECIFIED",
    ),
    "unknown entry type": (append_with(entry(5, type_=42)), "entry type 42 \\(unknown\\)"),
    "gap after prev_log_index": (append_with(entry(6)), "expected 5"),
    "entries out of order": (append_with(entry(5), entry(7), entry(6)), "expected 6"),
    "decreasing entry terms": (append_with(entry(5, term=4), entry(6, term=3)), "must not"),
    "entry term above leader term": (append_with(entry(5, term=9)), "leader's term 5"),
    "entry term below prev_log_term": (append_with(entry(5, term=1)), "previous 2"),
    "leader id is not the sender": (
        peer_pb2.RaftMessage(append_entries=peer_pb2.AppendEntries(term=1, leader_id="x")),
        "leader_id is 'x'",
    ),
    "candidate id is not the sender": (
        peer_pb2.RaftMessage(request_vote=peer_pb2.RequestVote(term=1, candidate_id="")),
        "candidate_id is ''",
    ),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_message_is_refused_with_a_clear_error(case: str) -> None:
    pb, expected = MALFORMED[case]
    wire = peer_pb2.RaftMessage.FromString(pb.SerializeToString())
    with pytest.raises(WireFormatError, match=expected):
        from_wire(wire, "sidecar-0", "sidecar-1")


def test_empty_sender_or_recipient_is_refused() -> None:
    hb = peer_pb2.RaftMessage(heartbeat=peer_pb2.Heartbeat(term=1))
    with pytest.raises(WireFormatError, match="sender"):
        from_wire(hb, "", "sidecar-1")
    with pytest.raises(WireFormatError, match="recipient"):
        from_wire(hb, "sidecar-0", "")


def good_header() -> peer_pb2.InstallSnapshotHeader:
    return peer_pb2.InstallSnapshotHeader(
        term=5,
        leader_id="sidecar-0",
        metadata=peer_pb2.SnapshotMetadata(
            index=10, term=4, conf_state=peer_pb2.ConfState(voters=["a", "b"], learners=["c"])
        ),
        total_size_bytes=3,
    )


def test_good_snapshot_header_decodes() -> None:
    msg = snapshot_from_header_and_data(good_header(), b"abc", **ENV)
    assert msg.snapshot.metadata.membership == Membership(frozenset("ab"), frozenset("c"))


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda h: h.ClearField("metadata"), "no metadata"),
        (lambda h: setattr(h.metadata, "index", 0), "index 0"),
        (lambda h: setattr(h.metadata, "term", 9), "exceeds the leader's term"),
        (lambda h: h.metadata.conf_state.ClearField("voters"), "no voters"),
        (lambda h: h.metadata.conf_state.voters.append("a"), "twice"),
        (lambda h: h.metadata.conf_state.learners.append("a"), "both voter and learner"),
        (lambda h: h.metadata.conf_state.voters.append(""), "empty node id"),
        (lambda h: setattr(h, "leader_id", "sidecar-9"), "leader_id"),
        (lambda h: setattr(h, "total_size_bytes", 4), "announced 4"),
    ],
    ids=lambda x: x if isinstance(x, str) else "",
)
def test_malformed_snapshot_header_is_refused(mutate: object, expected: str) -> None:
    header = good_header()
    mutate(header)  # type: ignore[operator]
    with pytest.raises(WireFormatError, match=expected):
        snapshot_from_header_and_data(header, b"abc", **ENV)
