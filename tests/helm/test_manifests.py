"""What the chart renders: valid Kubernetes objects that keep the promises of
docs/kubernetes.md (peers, quorum-safe disruption budget, restricted pods,
a worker API that never leaves the pod, TLS and Secrets wired as asked)."""

from __future__ import annotations

import argparse
import copy
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest

from sidecar import config as sidecar_config
from sidecar.api.health import LIVENESS_SERVICE
from tests.helm.chart import (
    CASES,
    CHART,
    KUBE_VERSION,
    NAMESPACE,
    RELEASE,
    Manifests,
    command_line,
    env_list,
    env_names,
    literal_env,
    load_yaml,
    parse_peers,
    pre_stop_sleep_s,
    render,
    resolve_env,
    run_helm,
)

ALL_CASES = sorted(CASES)
MONITORING_KINDS = {"ServiceMonitor", "PrometheusRule"}
CERT_MANAGER_KINDS = {"Certificate", "Issuer"}
CRD_KINDS = MONITORING_KINDS | CERT_MANAGER_KINDS
Rendered = Callable[[str], Manifests]


def replicas(m: Manifests) -> int:
    return int(m.statefulset["spec"]["replicas"])


def port_of(address: str) -> int:
    return int(address.rpartition(":")[2])


def container_port(container: dict[str, Any], name: str) -> int:
    for port in container.get("ports") or []:
        if port["name"] == name:
            return int(port["containerPort"])
    raise AssertionError(f"{container['name']} has no port {name}")


def pod_labels(m: Manifests) -> dict[str, str]:
    return dict(m.statefulset["spec"]["template"]["metadata"]["labels"])


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


# ---- schema validation --------------------------------------------------------


def invalid_objects(docs: list[dict[str, Any]], version: str) -> list[str]:
    """What kubernetes-validate (strict: unknown fields are errors) finds
    wrong in the rendered objects for Kubernetes ``version``; CRD kinds have
    no schema there and are checked by structure below."""
    problems = []
    for doc in docs:
        if doc["kind"] in CRD_KINDS:
            continue
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            path = "/".join(str(p) for p in exc.path)
            problems.append(f"{doc['kind']}/{doc['metadata']['name']} at {path}: {exc.message}")
    return problems


@pytest.mark.parametrize("case", ALL_CASES)
def test_every_manifest_is_valid_for_kubernetes(rendered: Rendered, case: str) -> None:
    problems = invalid_objects(rendered(case).docs, KUBE_VERSION)
    assert not problems, "\n".join(problems)


CLAIMED_VERSIONS = ("1.27.0", "1.29.0", "1.30.0", "1.34.0", "1.35.0", "1.37.0")
"""Chart.yaml claims >=1.27: its floor, both sides of each version switch
in the templates (preStop sleep at 1.30, maxUnavailable at 1.35), and the
newest kubernetes-validate knows."""


@pytest.mark.parametrize("version", CLAIMED_VERSIONS)
def test_every_case_is_valid_for_every_claimed_kubernetes_version(
    helm: str, helm_home: Path, version: str
) -> None:
    problems = []
    for case, values in sorted(CASES.items()):
        docs = render(helm, helm_home, values, kube_version=version)
        problems += [f"{case}: {p}" for p in invalid_objects(docs, version)]
    assert not problems, "\n".join(problems)


def test_validation_catches_a_typo(rendered: Rendered) -> None:
    """The validator is not vacuous: a misspelt field fails."""
    statefulset = copy.deepcopy(rendered("default").statefulset)
    statefulset["spec"]["template"]["spec"]["terminationGracePeriod"] = 20
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(statefulset, KUBE_VERSION, strict=True)


@pytest.mark.parametrize("case", ALL_CASES)
def test_crds_have_the_expected_structure(rendered: Rendered, case: str) -> None:
    m = rendered(case)
    for doc in m.docs:
        if doc["kind"] not in MONITORING_KINDS:
            continue
        assert doc["apiVersion"] == "monitoring.coreos.com/v1"
        assert doc["metadata"]["name"] and doc["metadata"]["namespace"]
        assert set(doc) == {"apiVersion", "kind", "metadata", "spec"}
    monitoring = case == "monitoring"
    assert bool(m.of_kind("ServiceMonitor")) == monitoring
    assert bool(m.of_kind("PrometheusRule")) == monitoring
    dashboards = [
        d
        for d in m.of_kind("ConfigMap")
        if d["metadata"].get("labels", {}).get("grafana_dashboard")
    ]
    assert bool(dashboards) == monitoring


def test_service_monitor_scrapes_the_metrics_service(rendered: Rendered) -> None:
    m = rendered("monitoring")
    monitor = m.one("ServiceMonitor")["spec"]
    service = next(
        s
        for s in m.of_kind("Service")
        if selects(monitor["selector"]["matchLabels"], s["metadata"]["labels"])
    )
    # Only the metrics Service matches (not the headless one).
    matching = [
        s
        for s in m.of_kind("Service")
        if selects(monitor["selector"]["matchLabels"], s["metadata"]["labels"])
    ]
    assert matching == [service]
    assert monitor["namespaceSelector"]["matchNames"] == [NAMESPACE]
    port_names = {p["name"] for p in service["spec"]["ports"]}
    components = {}
    for endpoint in monitor["endpoints"]:
        assert endpoint["port"] in port_names
        assert endpoint["path"] == "/metrics"
        (relabel,) = endpoint["relabelings"]
        components[endpoint["port"]] = relabel["replacement"]
        assert relabel["targetLabel"] == "component"
    # files/alerts.yaml selects sidecar targets by component="sidecar".
    assert components == {"sidecar-metrics": "sidecar", "worker-http": "worker"}


def test_prometheus_rule_is_the_alerts_file(rendered: Rendered) -> None:
    """One source: the PrometheusRule carries files/alerts.yaml, runbook URLs prefixed."""
    rule = rendered("monitoring").one("PrometheusRule")
    values = load_yaml(CHART / "ci" / "monitoring-values.yaml")
    base = values["monitoring"]["prometheusRule"]["runbookBaseUrl"]
    source = copy.deepcopy(load_yaml(CHART / "files" / "alerts.yaml"))
    for group in source["groups"]:
        for r in group["rules"]:
            r["annotations"]["runbook_url"] = base + r["annotations"]["runbook_url"]
    assert rule["spec"]["groups"] == source["groups"]


def test_dashboard_config_map_is_the_dashboard_file(rendered: Rendered) -> None:
    (config_map,) = [
        d
        for d in rendered("monitoring").of_kind("ConfigMap")
        if d["metadata"]["name"].endswith("-dashboard")
    ]
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert config_map["metadata"]["namespace"] == "monitoring"
    (content,) = config_map["data"].values()
    dashboard = CHART / "files" / "dashboards" / "raft-sidecar.json"
    assert json.loads(content) == json.loads(dashboard.read_text())


# ---- peers --------------------------------------------------------------------


@pytest.mark.parametrize("case", ALL_CASES)
def test_peers_are_every_pod_by_its_headless_dns_name(rendered: Rendered, case: str) -> None:
    m = rendered(case)
    sts = m.statefulset
    name, n = sts["metadata"]["name"], replicas(m)
    headless = m.headless_service()
    assert headless["spec"]["clusterIP"] == "None"
    assert headless["spec"]["publishNotReadyAddresses"] is True
    assert selects(headless["spec"]["selector"], pod_labels(m))
    assert sts["spec"]["podManagementPolicy"] == "Parallel"

    sidecar = m.container("sidecar")
    env = literal_env(sidecar)
    peer_port = container_port(sidecar, "peer")
    peers = parse_peers(env["RAFT_SIDECAR_PEERS"])
    domain = f"{headless['metadata']['name']}.{NAMESPACE}.svc.cluster.local"
    assert peers == {f"{name}-{i}": f"{name}-{i}.{domain}:{peer_port}" for i in range(n)}
    assert port_of(env["RAFT_SIDECAR_PEER_LISTEN"]) == peer_port
    assert [p["port"] for p in headless["spec"]["ports"]] == [peer_port]

    # Node id = pod name, through the downward API.
    resolved = resolve_env(sidecar, field={"metadata.name": f"{name}-1"}.__getitem__, secret=_no)
    assert resolved["RAFT_SIDECAR_NODE_ID"] == f"{name}-1"
    assert resolved["RAFT_SIDECAR_NODE_ID"] in peers


def _no(name: str, key: str) -> str:
    raise AssertionError(f"the sidecar reads no Secret ({name}/{key})")


@pytest.mark.parametrize("case", ALL_CASES)
def test_sidecar_accepts_the_rendered_settings(
    rendered: Rendered, case: str, tmp_path: Path
) -> None:
    """The rendered env passes the sidecar's own validation (sidecar/config.py)
    for every pod, with the peer listener on the pod network (0.0.0.0). The
    certificate files exist only in a pod: here each is a PEM stand-in under
    the same relative path (the sidecar checks the real ones at start)."""
    m = rendered(case)
    name = m.statefulset["metadata"]["name"]
    mounts = {v["name"]: v["mountPath"] for v in m.container("sidecar")["volumeMounts"]}
    for i in range(replicas(m)):
        env = resolve_env(
            m.container("sidecar"), field={"metadata.name": f"{name}-{i}"}.__getitem__, secret=_no
        )
        for variable in sorted(TLS_ENV & set(env)):
            relative = Path(env[variable]).relative_to(mounts["tls"])
            stand_in = tmp_path / relative
            stand_in.parent.mkdir(parents=True, exist_ok=True)
            stand_in.write_text("-----BEGIN CERTIFICATE-----\n")
            env[variable] = str(stand_in)
        assert env["RAFT_SIDECAR_PEER_LISTEN"].startswith("0.0.0.0:")
        args = argparse.Namespace(
            **{s.name.replace("-", "_"): None for s in sidecar_config.SETTINGS}
        )
        loaded = sidecar_config.load(args, environ=env)
        assert loaded.node_id == f"{name}-{i}"
        assert len(loaded.peers) == replicas(m)


@pytest.mark.parametrize("case", ["default", "tls", "plaintext"])
def test_every_sidecar_setting_is_set_explicitly(rendered: Rendered, case: str) -> None:
    """No setting falls back to a sidecar default the chart does not show
    (the TLS files only when TLS is on: see test_tls_flags_iff_enabled)."""
    names = set(env_names(rendered(case).container("sidecar")))
    settings = {sidecar_config.env_name(s.name) for s in sidecar_config.SETTINGS}
    if case == "plaintext":
        settings -= TLS_ENV
    assert not settings - names
    # And nothing the sidecar does not know (a typo would be silently ignored).
    unknown = {n for n in names if n.startswith("RAFT_SIDECAR_")} - settings
    assert not unknown


# ---- quorum-safe disruption ----------------------------------------------------


@pytest.mark.parametrize("case", ALL_CASES)
def test_pdb_never_allows_breaking_quorum(rendered: Rendered, case: str) -> None:
    m = rendered(case)
    n = replicas(m)
    assert n % 2 == 1 and n >= 3
    pdb = m.one("PodDisruptionBudget")["spec"]
    assert "minAvailable" not in pdb
    max_unavailable = pdb["maxUnavailable"]
    assert isinstance(max_unavailable, int), "a percentage could round up past quorum"
    quorum = n // 2 + 1
    assert n - max_unavailable >= quorum
    assert max_unavailable == 1  # the chart's default: one pod at a time
    assert pdb["unhealthyPodEvictionPolicy"] == "IfHealthyBudget"
    assert selects(pdb["selector"]["matchLabels"], pod_labels(m))


@pytest.mark.parametrize("case", ALL_CASES)
def test_rolling_updates_take_one_voter_at_a_time(rendered: Rendered, case: str) -> None:
    """Pods start in parallel (a lone pod can never be Ready), yet an update
    replaces one pod at a time and none while another is unavailable:
    maxUnavailable counts every pod of the set, and each replaced pod must
    be Ready for minReadySeconds before the next."""
    spec = rendered(case).statefulset["spec"]
    assert spec["podManagementPolicy"] == "Parallel"
    assert spec["updateStrategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxUnavailable": 1, "partition": 0},
    }
    assert spec["minReadySeconds"] >= 5


def test_updates_can_be_staged_or_left_to_the_operator(helm: str, helm_home: Path) -> None:
    staged = Manifests(render(helm, helm_home, set_values=["updateStrategy.partition=3"]))
    assert staged.statefulset["spec"]["updateStrategy"]["rollingUpdate"]["partition"] == 3
    manual = Manifests(render(helm, helm_home, set_values=["updateStrategy.type=OnDelete"]))
    assert manual.statefulset["spec"]["updateStrategy"] == {"type": "OnDelete"}


@pytest.mark.parametrize(
    ("version", "warned"), [("1.27.0", True), ("1.34.2", True), ("1.35.0", False)]
)
def test_kubernetes_versions_that_may_ignore_max_unavailable_are_warned_about(
    helm: str, helm_home: Path, version: str, warned: bool
) -> None:
    """The chart claims 1.27+; the MaxUnavailableStatefulSet gate is on by
    default only from 1.35, so older versions get a warning (in the
    manifest here, and in NOTES at install)."""
    args = ["template", RELEASE, str(CHART), "--namespace", NAMESPACE, "--kube-version", version]
    result = run_helm(helm, helm_home, *args)
    assert result.returncode == 0, result.stderr
    assert ("ignores maxUnavailable unless" in result.stdout) is warned


@pytest.mark.parametrize("case", ALL_CASES)
def test_anti_affinity_spreads_peers(rendered: Rendered, case: str) -> None:
    m = rendered(case)
    anti = m.pod_spec["affinity"]["podAntiAffinity"]
    required = case == "replicas-5"  # ci/replicas-5-values.yaml asks for it
    if required:
        (term,) = anti["requiredDuringSchedulingIgnoredDuringExecution"]
    else:
        (weighted,) = anti["preferredDuringSchedulingIgnoredDuringExecution"]
        term = weighted["podAffinityTerm"]
    assert term["topologyKey"] == "kubernetes.io/hostname"
    assert term["labelSelector"]["matchLabels"] == m.statefulset["spec"]["selector"]["matchLabels"]


# ---- restricted pods ------------------------------------------------------------


@pytest.mark.parametrize("case", ALL_CASES)
def test_pods_are_restricted(rendered: Rendered, case: str) -> None:
    """The "restricted" Pod Security Standard, and then some."""
    m = rendered(case)
    spec = m.pod_spec
    pod_sc = spec["securityContext"]
    assert pod_sc["runAsNonRoot"] is True
    assert pod_sc["runAsUser"] > 0
    assert pod_sc["seccompProfile"]["type"] == "RuntimeDefault"
    assert spec["automountServiceAccountToken"] is False
    assert spec["enableServiceLinks"] is False
    for key in ("hostNetwork", "hostPID", "hostIPC"):
        assert not spec.get(key)
    assert not any("hostPath" in v for v in spec["volumes"])
    tmp_volumes = {v["name"] for v in spec["volumes"] if "emptyDir" in v}
    assert "initContainers" not in spec
    for container in spec["containers"]:
        sc = container["securityContext"]
        assert sc["runAsNonRoot"] is True
        assert sc["runAsUser"] == pod_sc["runAsUser"]
        assert sc["readOnlyRootFilesystem"] is True
        assert sc["allowPrivilegeEscalation"] is False
        assert sc["privileged"] is False
        assert sc["capabilities"] == {"drop": ["ALL"]}
        assert sc["seccompProfile"]["type"] == "RuntimeDefault"
        (tmp,) = [v for v in container["volumeMounts"] if v["mountPath"] == "/tmp"]
        assert tmp["name"] in tmp_volumes
        resources = container["resources"]
        assert {"cpu", "memory"} <= set(resources["requests"]), container["name"]
        assert "memory" in resources["limits"], container["name"]
    # No CFS quota on the sidecar: a used-up quota stalls it for the rest of
    # a 100 ms period, late heartbeats (docs/kubernetes.md, "CPU and timing").
    assert "cpu" not in m.container("sidecar")["resources"]["limits"]


@pytest.mark.parametrize("case", ALL_CASES)
def test_raft_data_is_on_a_persistent_volume(rendered: Rendered, case: str) -> None:
    m = rendered(case)
    (claim,) = m.statefulset["spec"]["volumeClaimTemplates"]
    sidecar = m.container("sidecar")
    (mount,) = [v for v in sidecar["volumeMounts"] if v["name"] == claim["metadata"]["name"]]
    data_dir = literal_env(sidecar)["RAFT_SIDECAR_DATA_DIR"]
    assert data_dir.startswith(mount["mountPath"].rstrip("/") + "/")
    assert claim["spec"]["resources"]["requests"]["storage"]
    retention = m.statefulset["spec"]["persistentVolumeClaimRetentionPolicy"]
    # Kept when the release goes; a scaled-away pod's volume goes with it
    # (its member is removed, and a removed incarnation never rejoins).
    assert retention == {"whenDeleted": "Retain", "whenScaled": "Delete"}


# ---- timing, probes and shutdown -------------------------------------------------


@pytest.mark.parametrize("case", ALL_CASES)
def test_raft_timing_survives_real_pods(rendered: Rendered, case: str) -> None:
    """etcd's defaults (100 ms heartbeat, 1000 ms election timeout), at least
    5 heartbeats per election timeout, and lease floors to match."""
    env = literal_env(rendered(case).container("sidecar"))
    tick_ms = int(env["RAFT_SIDECAR_TICK_MS"])
    election_ms = tick_ms * int(env["RAFT_SIDECAR_ELECTION_TIMEOUT_TICKS"])
    heartbeat_ms = tick_ms * int(env["RAFT_SIDECAR_HEARTBEAT_TICKS"])
    assert (heartbeat_ms, election_ms) == (100, 1000)
    assert election_ms >= 5 * heartbeat_ms
    assert int(env["RAFT_SIDECAR_TTL_MIN_MS"]) >= 2 * election_ms


@pytest.mark.parametrize("case", ALL_CASES)
def test_sidecar_probes_are_native_grpc_on_the_health_port(rendered: Rendered, case: str) -> None:
    sidecar = rendered(case).container("sidecar")
    health = container_port(sidecar, "health")
    assert port_of(literal_env(sidecar)["RAFT_SIDECAR_HEALTH_LISTEN"]) == health
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert set(sidecar[probe]["grpc"]) <= {"port", "service"}
        assert sidecar[probe]["grpc"]["port"] == health
    startup = sidecar["startupProbe"]
    # Peers may wait for volumes and scheduling: at least a minute before a restart.
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 60
    liveness = sidecar["livenessProbe"]
    # A Raft election (NOT_SERVING for under a second) never kills a sidecar.
    assert liveness["periodSeconds"] * liveness["failureThreshold"] >= 30
    # Startup and liveness ask the service that ignores leadership (the
    # sidecar's own name for it): a sidecar that cannot reach a quorum is not
    # restarted (test_manifest_run.py runs one). Readiness asks the overall
    # status, the Raft truth.
    assert liveness["grpc"]["service"] == LIVENESS_SERVICE
    assert startup["grpc"]["service"] == LIVENESS_SERVICE
    assert sidecar["readinessProbe"]["grpc"].get("service", "") == ""


@pytest.mark.parametrize("case", ALL_CASES)
def test_shutdown_leaves_time_to_hand_leadership_over(rendered: Rendered, case: str) -> None:
    m = rendered(case)
    sidecar = m.container("sidecar")
    # The kubelet's own sleep on every version that has it (KUBE_VERSION is 1.33).
    assert set(sidecar["lifecycle"]["preStop"]) == {"sleep"}
    pre_stop_s = pre_stop_sleep_s(sidecar)
    grace_s = m.pod_spec["terminationGracePeriodSeconds"]
    handover_s = 2  # SIGTERM -> revoke, transfer Raft leadership, exit (docs/sidecar.md)
    assert grace_s >= pre_stop_s + handover_s + 5, "keep a margin for a slow node"
    assert "lifecycle" not in m.container("worker"), "the worker resigns at SIGTERM, at once"


def test_pre_stop_sleeps_with_exec_before_kubernetes_1_30(helm: str, helm_home: Path) -> None:
    sidecar = Manifests(render(helm, helm_home, kube_version="1.29.0")).container("sidecar")
    assert sidecar["lifecycle"]["preStop"] == {"exec": {"command": ["sleep", "3"]}}
    assert pre_stop_sleep_s(sidecar) == 3


def test_diagnostic_mode_sleeps_instead_of_serving(helm: str, helm_home: Path) -> None:
    """A crash-looping sidecar's pod stays up, volume mounted, for
    `raft-sidecar storage inspect`: both containers sleep, nothing probes
    them, and the sidecar keeps its volume and its image."""
    normal = Manifests(render(helm, helm_home))
    m = Manifests(render(helm, helm_home, set_values=["diagnosticMode.enabled=true"]))
    for name in ("sidecar", "worker"):
        container = m.container(name)
        assert container["command"] == ["sleep"] and container["args"] == ["infinity"], name
        for key in ("startupProbe", "readinessProbe", "livenessProbe", "lifecycle"):
            assert key not in container, (name, key)
        assert container["volumeMounts"] == normal.container(name)["volumeMounts"]
        assert container["image"] == normal.container(name)["image"]
    assert "readinessProbe" in normal.container("worker")
    kubernetes_validate.validate(m.statefulset, KUBE_VERSION, strict=True)


@pytest.mark.parametrize("case", ALL_CASES)
def test_pods_spread_over_zones(rendered: Rendered, case: str) -> None:
    m = rendered(case)
    (zone,) = [
        c
        for c in m.pod_spec["topologySpreadConstraints"]
        if c["topologyKey"] == "topology.kubernetes.io/zone"
    ]
    assert zone["labelSelector"]["matchLabels"] == m.statefulset["spec"]["selector"]["matchLabels"]
    assert zone["maxSkew"] == 1
    # 5 voters over 3 zones: at most 2 per zone keeps a majority through a zone outage.
    expected = "DoNotSchedule" if case == "replicas-5" else "ScheduleAnyway"
    assert zone["whenUnsatisfiable"] == expected


# ---- helm test ---------------------------------------------------------------------


@pytest.mark.parametrize("case", ALL_CASES)
def test_helm_test_pod_checks_every_pod_and_is_not_one_of_them(
    rendered: Rendered, case: str
) -> None:
    m = rendered(case)
    (pod,) = m.of_kind("Pod")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    labels = pod["metadata"]["labels"]
    assert not selects(m.statefulset["spec"]["selector"]["matchLabels"], labels)
    assert not selects(m.one("PodDisruptionBudget")["spec"]["selector"]["matchLabels"], labels)
    for service in m.of_kind("Service"):
        assert not selects(service["spec"]["selector"], labels)
    assert not selects(m.one("NetworkPolicy")["spec"]["podSelector"]["matchLabels"], labels)
    spec = pod["spec"]
    assert spec["restartPolicy"] == "Never" and spec["automountServiceAccountToken"] is False
    (container,) = spec["containers"]
    sidecar = m.container("sidecar")
    assert container["image"] == sidecar["image"]
    assert container["securityContext"] == sidecar["securityContext"]
    headless = m.headless_service()["metadata"]["name"]
    name, health = m.statefulset["metadata"]["name"], container_port(sidecar, "health")
    domain = f"{headless}.{NAMESPACE}.svc.cluster.local"
    assert container["args"][1:] == [f"{name}-{i}.{domain}:{health}" for i in range(replicas(m))]


# ---- the worker API never leaves the pod ---------------------------------------------


@pytest.mark.parametrize("case", ALL_CASES)
def test_worker_api_is_not_exposed(rendered: Rendered, case: str) -> None:
    m = rendered(case)
    sidecar, worker = m.container("sidecar"), m.container("worker")
    api = literal_env(sidecar)["RAFT_SIDECAR_API_LISTEN"]
    assert api.startswith("127.0.0.1:")
    api_port = port_of(api)
    assert literal_env(worker)["SETTLEMENT_DEMO_SIDECAR"] == f"127.0.0.1:{api_port}"
    for container in m.pod_spec["containers"]:
        assert api_port not in [p["containerPort"] for p in container.get("ports") or []]
    for service in m.of_kind("Service"):
        for port in service["spec"]["ports"]:
            assert api_port not in (port["port"], port.get("targetPort")), service["metadata"]
    for policy in m.of_kind("NetworkPolicy"):
        for rule in policy["spec"].get("ingress") or []:
            assert api_port not in [p.get("port") for p in rule.get("ports") or []]
            assert rule.get("ports"), "a rule without ports would open every port"


@pytest.mark.parametrize("case", ALL_CASES)
def test_network_policy(rendered: Rendered, case: str) -> None:
    m = rendered(case)
    policy = m.one("NetworkPolicy")["spec"]
    sidecar = m.container("sidecar")
    own_pods = m.statefulset["spec"]["selector"]["matchLabels"]
    assert policy["podSelector"]["matchLabels"] == own_pods
    assert policy["policyTypes"] == ["Ingress"]
    by_port: dict[int, list[Any]] = {}
    for rule in policy["ingress"]:
        for port in rule["ports"]:
            by_port.setdefault(port["port"], []).append(rule.get("from"))
    # The peer port: only from this release's pods.
    assert by_port[container_port(sidecar, "peer")] == [
        [{"podSelector": {"matchLabels": own_pods}}]
    ]
    # Metrics: only from the monitoring selector.
    (metrics_from,) = by_port[container_port(sidecar, "metrics")]
    (peer,) = metrics_from
    assert "namespaceSelector" in peer
    # Health: the release's pods and its helm test pod; the kubelet's probes
    # need no rule (traffic from a pod's own node is always allowed).
    (test_pod,) = m.of_kind("Pod")
    assert by_port[container_port(sidecar, "health")] == [
        [
            {"podSelector": {"matchLabels": own_pods}},
            {"podSelector": {"matchLabels": _selector_of(test_pod)}},
        ]
    ]
    assert set(by_port) == {
        container_port(sidecar, "peer"),
        container_port(sidecar, "metrics"),
        container_port(sidecar, "health"),
        container_port(m.container("worker"), "http"),
    }


def _selector_of(pod: dict[str, Any]) -> dict[str, str]:
    labels = pod["metadata"]["labels"]
    return {k: labels[k] for k in ("app.kubernetes.io/name", "app.kubernetes.io/instance")}


def test_egress_can_be_restricted_to_peers_dns_and_the_ledger(helm: str, helm_home: Path) -> None:
    default = Manifests(render(helm, helm_home)).one("NetworkPolicy")["spec"]
    assert "egress" not in default, "off by default: a custom worker may call more"
    ledger = {"ipBlock": {"cidr": "10.1.2.0/24"}}
    m = Manifests(
        render(
            helm,
            helm_home,
            set_values=[
                "networkPolicy.egress.enabled=true",
                "networkPolicy.egress.ledger.to[0].ipBlock.cidr=10.1.2.0/24",
            ],
        )
    )
    policy = m.one("NetworkPolicy")
    spec = policy["spec"]
    assert spec["policyTypes"] == ["Ingress", "Egress"]
    own_pods = m.statefulset["spec"]["selector"]["matchLabels"]
    peers, dns, to_ledger = spec["egress"]
    assert peers == {
        "to": [{"podSelector": {"matchLabels": own_pods}}],
        "ports": [{"port": container_port(m.container("sidecar"), "peer"), "protocol": "TCP"}],
    }
    assert {(p["port"], p["protocol"]) for p in dns["ports"]} == {(53, "UDP"), (53, "TCP")}
    assert dns["to"][0]["podSelector"] == {"matchLabels": {"k8s-app": "kube-dns"}}
    assert to_ledger == {"to": [ledger], "ports": [{"port": 5432, "protocol": "TCP"}]}
    kubernetes_validate.validate(policy, KUBE_VERSION, strict=True)


def test_health_port_can_be_opened_to_all(helm: str, helm_home: Path) -> None:
    """For a network plugin that also filters traffic from the pod's node."""
    m = Manifests(render(helm, helm_home, set_values=["networkPolicy.health.fromAnywhere=true"]))
    health = container_port(m.container("sidecar"), "health")
    (rule,) = [
        r for r in m.one("NetworkPolicy")["spec"]["ingress"] if r["ports"][0]["port"] == health
    ]
    assert "from" not in rule


# ---- TLS and Secrets ---------------------------------------------------------------

TLS_ENV = {"RAFT_SIDECAR_TLS_CERT_FILE", "RAFT_SIDECAR_TLS_KEY_FILE", "RAFT_SIDECAR_TLS_CA_FILE"}


@pytest.mark.parametrize("case", ALL_CASES)
def test_tls_is_on_unless_plaintext_is_asked_for(rendered: Rendered, case: str) -> None:
    """Each sidecar reads its own pod's files from one projected volume of
    every pod's Secret; plaintext only with tls.insecurePlaintextPeers."""
    m = rendered(case)
    sidecar = m.container("sidecar")
    env = literal_env(sidecar)
    tls_volumes = [v for v in m.pod_spec["volumes"] if v["name"] == "tls"]
    if case == "plaintext":
        assert env["RAFT_SIDECAR_INSECURE_PLAINTEXT_PEERS"] == "true"
        assert not TLS_ENV & set(env)
        assert not tls_volumes
        assert not any(v["name"] == "tls" for v in sidecar["volumeMounts"])
        assert not m.of_kind("Certificate")
        return
    assert env["RAFT_SIDECAR_INSECURE_PLAINTEXT_PEERS"] == "false"
    (mount,) = [v for v in sidecar["volumeMounts"] if v["name"] == "tls"]
    assert mount["readOnly"] is True
    files = {env[name] for name in TLS_ENV}
    assert files == {
        f"{mount['mountPath']}/$(POD_NAME)/{f}" for f in ("tls.crt", "tls.key", "ca.crt")
    }
    name = m.statefulset["metadata"]["name"]
    (volume,) = tls_volumes
    sources = volume["projected"]["sources"]
    assert [src["secret"]["name"] for src in sources] == [
        f"{name}-{i}-peer-tls" for i in range(replicas(m))
    ]
    for i, src in enumerate(sources):
        paths = {item["path"] for item in src["secret"]["items"]}
        assert paths == {f"{name}-{i}/{f}" for f in ("tls.crt", "tls.key", "ca.crt")}
    assert not any(v["name"] == "tls" for v in m.container("worker")["volumeMounts"])


IDENTITY = re.compile(r"^(?P<node>[a-z0-9-]+)\.(?P<cluster>[a-z0-9.-]+)\.raft-sidecar\.internal$")


@pytest.mark.parametrize("case", [c for c in ALL_CASES if c != "plaintext"])
def test_every_pod_gets_a_certificate_naming_its_node_and_the_cluster(
    rendered: Rendered, case: str
) -> None:
    m = rendered(case)
    name = m.statefulset["metadata"]["name"]
    cluster_id = literal_env(m.container("sidecar"))["RAFT_SIDECAR_CLUSTER_ID"]
    certificates = {c["metadata"]["name"]: c for c in m.of_kind("Certificate")}
    issuers = {i["metadata"]["name"]: i for i in m.of_kind("Issuer")}
    for doc in [*certificates.values(), *issuers.values()]:
        assert doc["apiVersion"] == "cert-manager.io/v1"
        assert doc["metadata"]["namespace"] == NAMESPACE
    for i in range(replicas(m)):
        spec = certificates.pop(f"{name}-{i}-peer-tls")["spec"]
        assert spec["secretName"] == f"{name}-{i}-peer-tls"
        (dns,) = spec["dnsNames"]
        match = IDENTITY.match(dns)
        assert match is not None, dns
        assert (match["node"], match["cluster"]) == (f"{name}-{i}", cluster_id)
        assert set(spec["usages"]) >= {"server auth", "client auth"}
        assert spec["privateKey"]["rotationPolicy"] == "Always"
        issuer = spec["issuerRef"]
    if case == "tls":  # the operator's own issuer: the chart makes none
        assert issuer == {
            "name": "payments-ca",
            "kind": "ClusterIssuer",
            "group": "cert-manager.io",
        }
        assert not certificates and not issuers
        return
    # Its own CA: self-signed Issuer -> CA Certificate (key kept on renewal) -> CA Issuer.
    ca = certificates.pop(f"{name}-peer-ca")["spec"]
    assert not certificates
    assert ca["isCA"] is True and ca["privateKey"]["rotationPolicy"] == "Never"
    assert issuers[ca["issuerRef"]["name"]]["spec"] == {"selfSigned": {}}
    assert issuers[issuer["name"]]["spec"] == {"ca": {"secretName": ca["secretName"]}}


@pytest.mark.parametrize("case", ALL_CASES)
def test_ledger_url_comes_from_a_secret(rendered: Rendered, case: str) -> None:
    m = rendered(case)
    worker = m.container("worker")
    (entry,) = [e for e in env_list(worker) if e["name"] == "SETTLEMENT_DEMO_LEDGER_URL"]
    ref = entry["valueFrom"]["secretKeyRef"]
    secrets = {s["metadata"]["name"]: s for s in m.of_kind("Secret")}
    annotations = m.statefulset["spec"]["template"]["metadata"].get("annotations") or {}
    if case == "external-postgresql":
        assert ref == {"name": "settlement-ledger-credentials", "key": "postgresql-url"}
        assert not secrets, "an existing Secret is used, none is created"
        # helm template reads no cluster (lookup is empty): only the revision.
        assert "checksum/ledger-secret" not in annotations
        assert "raft-sidecar/ledger-secret-revision" not in annotations
    else:
        secret = secrets[ref["name"]]
        assert secret["stringData"][ref["key"]].startswith("postgresql://")
        assert re.fullmatch(r"[0-9a-f]{64}", annotations["checksum/ledger-secret"])
    for container in m.pod_spec["containers"]:
        for value in literal_env(container).values():
            assert "postgresql://" not in value, "a credential in plain env"


def test_rotating_an_existing_ledger_secret_rolls_the_pods(helm: str, helm_home: Path) -> None:
    """The operator's revision of an existing Secret goes into the pod
    template: changing it after a rotation makes a new revision, which the
    StatefulSet rolls out."""
    base = ["ledger.existingSecret=settlement-ledger"]

    def template(*extra: str) -> dict[str, Any]:
        sts = Manifests(render(helm, helm_home, set_values=[*base, *extra])).statefulset
        return dict(sts["spec"]["template"])

    before = template("ledger.existingSecretRevision=2026-01")
    after = template("ledger.existingSecretRevision=2026-02")
    annotations = after["metadata"]["annotations"]
    assert annotations["raft-sidecar/ledger-secret-revision"] == "2026-02"
    assert before != after
    assert template() == template(), "rendering is deterministic"


@pytest.mark.parametrize("case", ALL_CASES)
def test_each_worker_campaigns_as_its_pod(rendered: Rendered, case: str) -> None:
    """The worker's id (its candidate id, the holder the ledger's fence
    records) is the pod name, passed explicitly: unique per pod, stable across
    container restarts, and readable in the grant trail and the ledger. The
    worker's own default would be <host>-<pid>-<random>."""
    worker = rendered(case).container("worker")
    (entry,) = [e for e in env_list(worker) if e["name"] == "SETTLEMENT_DEMO_WORKER_ID"]
    assert entry["value"] == "$(POD_NAME)"
    env = resolve_env(worker, field={"metadata.name": "rs-2"}.__getitem__, secret=_any_secret)
    assert env["POD_NAME"] == env["SETTLEMENT_DEMO_WORKER_ID"] == "rs-2"


def _any_secret(name: str, key: str) -> str:
    return f"postgresql://{name}/{key}"


def test_worker_image_and_command_are_overridable(
    rendered: Rendered, helm: str, helm_home: Path
) -> None:
    default = rendered("default").container("worker")
    assert default["image"] == rendered("default").container("sidecar")["image"]
    assert default["command"] == ["settlement-demo"] and default["args"] == ["worker"]
    docs = render(
        helm,
        helm_home,
        set_values=[
            "worker.image.repository=registry.example.com/payments/worker",
            "worker.image.tag=2.0",
            "worker.command={java}",
            "worker.args={-jar,/app/worker.jar}",
            "worker.extraEnv[0].name=JAVA_OPTS",
            "worker.extraEnv[0].value=-Xmx256m",
        ],
    )
    worker = Manifests(docs).container("worker")
    assert worker["image"] == "registry.example.com/payments/worker:2.0"
    assert worker["command"] == ["java"] and worker["args"] == ["-jar", "/app/worker.jar"]
    assert literal_env(worker)["JAVA_OPTS"] == "-Xmx256m"
    # Another worker still learns its pod name as its id.
    env = resolve_env(worker, field={"metadata.name": "rs-0"}.__getitem__, secret=_any_secret)
    assert env["SETTLEMENT_DEMO_WORKER_ID"] == "rs-0"


DIGEST = "sha256:" + "0123456789abcdef" * 4


def test_an_image_digest_pins_both_containers(helm: str, helm_home: Path) -> None:
    """image.digest pulls <repository>@<digest> (a tag can move; a digest
    cannot), for the worker too unless it names an image of its own."""
    repository = "registry.example.com/payments/raft-sidecar"
    pinned = Manifests(
        render(
            helm,
            helm_home,
            set_values=[
                f"image.repository={repository}",
                "image.tag=0.1.0",
                f"image.digest={DIGEST}",
            ],
        )
    )
    for name in ("sidecar", "worker"):
        assert pinned.container(name)["image"] == f"{repository}@{DIGEST}", name
    own = Manifests(
        render(
            helm,
            helm_home,
            set_values=[
                f"image.digest={DIGEST}",
                "worker.image.repository=registry.example.com/payments/worker",
                "worker.image.tag=2.0",
            ],
        )
    )
    assert own.container("worker")["image"] == "registry.example.com/payments/worker:2.0"
    worker_digest = "sha256:" + "f" * 64
    both = Manifests(render(helm, helm_home, set_values=[f"worker.image.digest={worker_digest}"]))
    assert both.container("worker")["image"] == f"raft-sidecar@{worker_digest}"
    assert both.container("sidecar")["image"] == "raft-sidecar:0.1.0"


def test_env_expansion_follows_kubernetes() -> None:
    """$(VAR) is replaced when VAR is defined before, kept when unknown; $$ escapes."""
    container = {
        "env": [
            {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "ID", "value": "$(POD_NAME)"},
            {"name": "EARLY", "value": "$(LATE)"},
            {"name": "LATE", "value": "x"},
            {"name": "LITERAL", "value": "$$(POD_NAME)"},
        ],
        "command": ["run", "--id=$(ID)", "--late=$(LATE)", "$(UNKNOWN)"],
    }
    env = resolve_env(container, field={"metadata.name": "p-0"}.__getitem__, secret=_no)
    assert env == {
        "POD_NAME": "p-0",
        "ID": "p-0",
        "EARLY": "$(LATE)",
        "LATE": "x",
        "LITERAL": "$(POD_NAME)",
    }
    assert command_line(container, env) == ["run", "--id=p-0", "--late=x", "$(UNKNOWN)"]
