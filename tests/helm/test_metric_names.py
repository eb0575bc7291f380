"""The dashboard and the alert rules query only metrics (and labels) that the
running programs export: real sidecars (tests/integration/cluster.py) and a
real settlement worker are scraped, and every PromQL expression is compared
with what they serve. A renamed metric breaks this test, not a dashboard."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.helm.chart import (
    CHART,
    exported_names,
    label_values_query,
    load_yaml,
    promql_label_names,
    promql_metric_names,
)
from tests.helm.programs import (
    Processes,
    ledger_url,
    metric,
    postgres_missing,
    program,
    scrape,
)
from tests.helm.tools import unavailable
from tests.integration import worker_api
from tests.integration.certs import CertificateAuthority
from tests.integration.cluster import Cluster, eventually, free_port, running

PREFIXES = ("raft_sidecar_", "settlement_worker_")
SYNTHETIC = {"up"}
"""Series Prometheus makes itself for every target."""
KUBERNETES = {
    # kube-state-metrics
    "kube_statefulset_replicas",
    # the kubelet
    "kubelet_volume_stats_available_bytes",
    "kubelet_volume_stats_capacity_bytes",
    # cAdvisor, through the kubelet
    "container_cpu_cfs_throttled_periods_total",
    "container_cpu_cfs_periods_total",
    "container_cpu_usage_seconds_total",
    # kube-state-metrics
    "kube_pod_container_status_restarts_total",
}
"""Standard Kubernetes metrics (docs/kubernetes.md, "Monitoring", says which
exporters): exact names, since no running program here exports them."""
TARGET_LABELS = {"namespace", "job", "instance", "pod", "container", "service", "endpoint"}
TARGET_LABELS |= {"component"}  # set by the chart's ServiceMonitor (relabelings)


@dataclass(frozen=True)
class Query:
    where: str
    expr: str
    label: str | None = None
    """The label a Grafana label_values() query lists."""

    @property
    def names(self) -> set[str]:
        return promql_metric_names(self.expr)

    @property
    def labels(self) -> set[str]:
        found = promql_label_names(self.expr)
        return found | {self.label} if self.label else found


def queries() -> list[Query]:
    found = []
    for group in load_yaml(CHART / "files" / "alerts.yaml")["groups"]:
        for rule in group["rules"]:
            found.append(Query(f"alert {rule['alert']}", rule["expr"]))
    dashboard: dict[str, Any] = load_yaml(CHART / "files" / "dashboards" / "raft-sidecar.json")
    for panel in dashboard["panels"]:
        for target in panel.get("targets") or []:
            found.append(Query(f"panel {panel['title']!r}", target["expr"]))
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            expr, label = label_values_query(variable["query"]["query"])
            found.append(Query(f"variable ${variable['name']}", expr, label))
    return found


def test_the_extractor_finds_names_and_skips_the_rest() -> None:
    expr = (
        'histogram_quantile(0.99, sum by (le, instance) (rate(a_seconds_bucket{job="$job", '
        'x=~"a|b"}[$__rate_interval]))) > on (job) group_left () b_total offset 10m '
        "and time() - c_created < 600 or vector(1e3)"
    )
    assert promql_metric_names(expr) == {"a_seconds_bucket", "b_total", "c_created"}
    assert promql_label_names(expr) == {"job", "x", "le", "instance"}
    made = (
        'count by (job, term) (count_values by (job) ("term", t) * on (job) group_left (d) '
        'label_replace(max_over_time(up{a="b", c="d"}[1d]), "d", "$1", "pod", "(.+)"))'
    )
    assert promql_label_names(made) == {"job", "a", "c"}
    assert label_values_query('label_values(m{namespace="$namespace"}, job)') == (
        'm{namespace="$namespace"}',
        "job",
    )


def test_every_query_uses_known_metric_families() -> None:
    for query in queries():
        assert query.names, f"{query.where}: no metric in {query.expr!r}"
        for name in query.names:
            assert name.startswith(PREFIXES) or name in SYNTHETIC | KUBERNETES, (
                f"{query.where}: {name}"
            )


@dataclass
class Exported:
    names: set[str]
    labels: set[str]


def exported(texts: list[str]) -> Exported:
    names: set[str] = set()
    labels: set[str] = set()
    for text in texts:
        families = list(text_string_to_metric_families(text))
        names |= exported_names(families)
        for family in families:
            for sample in family.samples:
                labels |= set(sample.labels)
    return Exported(names, labels)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """Sidecars with peer mTLS, as the chart runs them (the peer certificate's
    series exist only with TLS)."""
    root = tmp_path_factory.mktemp("metric-names")
    ca = CertificateAuthority(root / "pki")
    files = {f"s{i}": ca.issue(f"s{i}") for i in range(3)}
    yield from running(root, extra_args=lambda node: files[node.node_id].flags())


def test_sidecar_exports_every_metric_the_rules_and_dashboard_use(cluster: Cluster) -> None:
    leader = cluster.leader()
    # An election with a holder, so that per-election and per-holder series exist.
    worker_api.campaign(leader.stub(), "names-probe", "w1")
    eventually(
        lambda: 'holder="w1"' in leader.metrics() or None, "the sampler to publish the holder"
    )
    live = exported([node.metrics() for node in cluster.nodes])

    problems = []
    for query in queries():
        sidecar_names = {n for n in query.names if n.startswith("raft_sidecar_")}
        problems += [f"{query.where}: {n} is not exported" for n in sidecar_names - live.names]
        if query.names <= sidecar_names | SYNTHETIC:
            unknown = query.labels - live.labels - TARGET_LABELS
            problems += [f"{query.where}: label {label} is not exported" for label in unknown]
    assert not problems, "\n".join(problems)


def test_worker_exports_every_metric_the_rules_and_dashboard_use(
    cluster: Cluster, tmp_path: Path
) -> None:
    no_postgres = postgres_missing()
    if no_postgres is not None:
        unavailable(no_postgres)
    sidecar = cluster.nodes[0]
    http = f"127.0.0.1:{free_port()}"
    processes = Processes(tmp_path)
    with ledger_url() as url:
        try:
            flags = {
                "--sidecar": sidecar.api,
                "--election": "names-worker",
                "--worker-id": "names-worker-0",
                "--ledger-url": url,
                "--ttl-ms": "5000",
                "--http-listen": http,
            }
            processes.start(
                "worker",
                [*program("settlement-demo"), "worker", *(x for kv in flags.items() for x in kv)],
                env={k: v for k, v in os.environ.items() if not k.startswith("SETTLEMENT_DEMO_")},
            )

            def leading() -> str | None:
                exited = processes.exited()
                assert not exited, f"worker exited {exited}:\n{processes.logs()}"
                return scrape(http) if metric(http, "settlement_worker_is_leader") == 1 else None

            text = eventually(leading, "the worker to lead and serve /metrics", seconds=30)
        finally:
            processes.stop_all()
    live = exported([text])
    problems = []
    for query in queries():
        worker_names = {n for n in query.names if n.startswith("settlement_worker_")}
        problems += [f"{query.where}: {n} is not exported" for n in worker_names - live.names]
    assert not problems, "\n".join(problems)
