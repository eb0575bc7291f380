"""Readable one-line descriptions of simulator events, made only when printed."""

from __future__ import annotations

from sidecar.raft import (
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

TraceEvent = str | Message
"""A note, or a delivered message (kept as is: formatting every delivery costs)."""


def describe(event: TraceEvent) -> str:
    if isinstance(event, str):
        return event
    m = event
    head = f"deliver {m.sender}->{m.recipient} t{m.term}"
    if isinstance(m, VoteRequest):
        kind = "PreVote" if m.pre_vote else "Vote"
        flag = " (transfer)" if m.transfer else ""
        return f"{head} {kind}Request last={m.last_log_index}/{m.last_log_term}{flag}"
    if isinstance(m, VoteResponse):
        kind = "PreVote" if m.pre_vote else "Vote"
        return f"{head} {kind}{'Granted' if m.granted else 'Rejected'}"
    if isinstance(m, AppendRequest):
        span = f"{m.entries[0].index}..{m.entries[-1].index}" if m.entries else "none"
        kinds = ",".join(sorted({e.kind.name for e in m.entries}))
        return (
            f"{head} Append prev={m.prev_log_index}/{m.prev_log_term} entries={span}"
            f"{' ' + kinds if kinds else ''} commit={m.leader_commit}"
        )
    if isinstance(m, AppendResponse):
        if m.success:
            return f"{head} AppendOk index={m.index}"
        return (
            f"{head} AppendRejected index={m.index} hint={m.reject_hint_index}/{m.reject_hint_term}"
        )
    if isinstance(m, HeartbeatRequest):
        quiet = " answer_optional" if m.answer_optional else ""
        return f"{head} Heartbeat commit={m.leader_commit} read_seq={m.read_seq}{quiet}"
    if isinstance(m, HeartbeatResponse):
        return f"{head} HeartbeatOk read_seq={m.read_seq}"
    if isinstance(m, SnapshotRequest):
        meta = m.snapshot.metadata
        return (
            f"{head} Snapshot at={meta.index}/{meta.term} voters={sorted(meta.membership.voters)}"
        )
    if isinstance(m, TimeoutNowRequest):
        return f"{head} TimeoutNow"
    return f"{head} {m!r}"
