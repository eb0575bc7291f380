"""The Grafana dashboard (helm/raft-sidecar/files/dashboards/raft-sidecar.json)
is well formed and shows what operators need. That its metrics exist is
checked against running programs in test_metric_names.py."""

from __future__ import annotations

import json
from typing import Any

from tests.helm.chart import CHART, promql_metric_names

DASHBOARD = CHART / "files" / "dashboards" / "raft-sidecar.json"


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def panels() -> list[dict[str, Any]]:
    return [p for p in dashboard()["panels"] if p["type"] != "row"]


def test_dashboard_identity_and_variables() -> None:
    d = dashboard()
    assert d["uid"] == "raft-sidecar"
    assert d["title"]
    variables = {v["name"]: v for v in d["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for name in ("namespace", "job", "election"):
        assert variables[name]["type"] == "query"
        assert variables[name]["datasource"]["uid"] == "${datasource}"
    assert variables["election"]["multi"] is True


def test_panels_are_laid_out_and_query_the_chosen_data_source() -> None:
    all_panels = dashboard()["panels"]
    ids = [p["id"] for p in all_panels]
    assert len(ids) == len(set(ids)), "duplicate panel ids"
    cells: set[tuple[int, int]] = set()
    for panel in all_panels:
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24, panel["title"]
        cover = {
            (x, y)
            for x in range(grid["x"], grid["x"] + grid["w"])
            for y in range(grid["y"], grid["y"] + grid["h"])
        }
        assert not cover & cells, f"panel {panel['title']!r} overlaps another"
        cells |= cover
    for panel in panels():
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["targets"], panel["title"]
        assert panel.get("description"), panel["title"]
        ref_ids = [t["refId"] for t in panel["targets"]]
        assert len(ref_ids) == len(set(ref_ids))
        for target in panel["targets"]:
            assert target["expr"].strip(), panel["title"]
            assert target["datasource"]["uid"] == "${datasource}"


def test_queries_are_scoped_to_the_chosen_release() -> None:
    for panel in panels():
        for target in panel["targets"]:
            expr = target["expr"]
            assert 'namespace="$namespace"' in expr and 'job="$job"' in expr, (panel["title"], expr)


def test_dashboard_shows_what_operators_need() -> None:
    shown: set[str] = set()
    for panel in panels():
        for target in panel["targets"]:
            shown |= promql_metric_names(target["expr"])
    needed = {
        # current holder and token per election, the leadership timeline
        "raft_sidecar_election_holder_info",
        "raft_sidecar_fencing_token",
        "settlement_worker_is_leader",
        # failovers
        "raft_sidecar_grants_total",
        "raft_sidecar_expirations_total",
        "raft_sidecar_revocations_total",
        "raft_sidecar_raft_leader_changes_total",
        # proposal and fsync latency
        "raft_sidecar_proposal_duration_seconds_bucket",
        "raft_sidecar_fsync_duration_seconds_bucket",
        # peer health
        "raft_sidecar_peer_rtt_seconds",
        "raft_sidecar_peer_reachable",
        # the pods: volume usage, restarts, CPU throttling and use
        "kubelet_volume_stats_available_bytes",
        "kube_pod_container_status_restarts_total",
        "container_cpu_cfs_throttled_periods_total",
        "container_cpu_usage_seconds_total",
    }
    assert needed <= shown, needed - shown
    timelines = [p for p in panels() if p["type"] == "state-timeline"]
    assert any(
        "raft_sidecar_election_holder_info" in t["expr"] for p in timelines for t in p["targets"]
    )
