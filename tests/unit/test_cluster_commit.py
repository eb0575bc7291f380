"""A replica learns how far the cluster committed, also when the leader never hears it.

Health uses ``Raft.cluster_commit`` (docs/membership.md, "Health and status"):
a follower whose answers are lost on a one-way link keeps its leader, so it
never campaigns, yet commits nothing past its last acknowledged match.
"""

from __future__ import annotations

from sidecar.api.health import BehindWatch
from sidecar.raft import HeartbeatRequest
from tests.unit.cluster import Cluster


def test_a_follower_whose_answers_are_lost_learns_the_cluster_commit_but_does_not_commit() -> None:
    c = Cluster(3, max_inflight_appends=2)
    a = c.elect("a")
    b = c["b"]
    in_step = b.commit_index
    assert in_step == a.commit_index

    def b_answers(m: object) -> bool:
        return getattr(m, "sender", None) == "b"

    for i in range(10):
        c.propose("a", f"x{i}".encode())
        c.deliver_all(drop=b_answers)
    c.tick("a", c.configs["a"].heartbeat_ticks)
    c.deliver_all(drop=b_answers)

    assert a.commit_index >= in_step + 10  # a and c commit without b
    assert b.commit_index < a.commit_index  # b holds at most its unacknowledged window
    assert b.cluster_commit == a.commit_index
    assert b.leader_id == "a"  # it still hears heartbeats: it never campaigns
    heartbeats = [m for m in c.sent if isinstance(m, HeartbeatRequest) and m.recipient == "b"]
    assert heartbeats[-1].leader_commit <= b.log.last_index < heartbeats[-1].cluster_commit


def test_the_cluster_commit_never_goes_back() -> None:
    c = Cluster(3)
    a = c.elect("a")
    c.propose("a", b"x")
    c.deliver_all()
    learned = c["b"].cluster_commit
    assert learned == a.commit_index
    stale = HeartbeatRequest(
        term=a.term, sender="a", recipient="b", leader_commit=0, read_seq=0, cluster_commit=1
    )
    c.deliver(stale)
    assert c["b"].cluster_commit == learned


def test_behind_watch_reports_only_a_lag_that_lasts_the_grace() -> None:
    watch = BehindWatch(max_lag=64, grace_s=2.0)
    assert not watch.behind(65, now=10.0)
    assert not watch.behind(500, now=11.9)
    assert watch.behind(65, now=12.0)
    assert not watch.behind(64, now=12.1)  # caught up: the grace starts again
    assert not watch.behind(100, now=13.0)
    assert watch.behind(100, now=15.0)
