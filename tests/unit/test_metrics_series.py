"""The per-election series of SidecarMetrics stay bounded by the state's max_elections."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from sidecar.elections import Campaign, ElectionsState, Resign, lease_key_digest
from sidecar.metrics import SidecarMetrics

KEY = lease_key_digest("metrics-series-key-000")


def series_by_election(registry: CollectorRegistry) -> dict[str, set[str]]:
    """Metric name -> election labels present, for the per-election families."""
    out: dict[str, set[str]] = {}
    for family in registry.collect():
        for sample in family.samples:
            election = sample.labels.get("election")
            if election is not None and not sample.name.endswith("_created"):
                out.setdefault(sample.name, set()).add(election)
    return out


def test_evicted_elections_lose_their_series_and_kept_ones_keep_them() -> None:
    registry = CollectorRegistry()
    metrics = SidecarMetrics(registry)
    state = ElectionsState(max_elections=2)
    index = 0

    def apply(command: Campaign | Resign) -> int:
        nonlocal index
        index += 1
        metrics.on_apply(state.apply(index, command))
        return index

    for name in ("a", "b", "c", "d"):
        token = apply(
            Campaign(
                election=name, candidate="w", ttl_ms=1000, key_digest=KEY, proposed_at_unix_ms=1
            )
        )
        if name != "d":  # d stays held
            apply(Resign(election=name, key_digest=KEY, token=token, proposed_at_unix_ms=2))
        metrics.sample_elections(state)

    assert state.elections() == ["c", "d"]  # a and b were evicted for room
    series = series_by_election(registry)
    for name in (
        "raft_sidecar_grants_total",
        "raft_sidecar_resignations_total",
        "raft_sidecar_revocations_total",
        "raft_sidecar_expirations_total",
        "raft_sidecar_fencing_token",
        "raft_sidecar_election_seconds_without_holder",
    ):
        assert series[name] == {"c", "d"}, name
    assert series["raft_sidecar_election_holder_info"] == {"d"}
    assert registry.get_sample_value("raft_sidecar_fencing_token", {"election": "d"}) == index


def test_a_rejected_command_for_an_unknown_name_leaves_no_series() -> None:
    registry = CollectorRegistry()
    metrics = SidecarMetrics(registry)
    state = ElectionsState()
    metrics.on_apply(
        state.apply(1, Resign(election="nobody", key_digest=KEY, token=5, proposed_at_unix_ms=1))
    )
    metrics.sample_elections(state)
    assert series_by_election(registry) == {}
