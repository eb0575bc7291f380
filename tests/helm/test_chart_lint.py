"""`helm lint --strict` and `helm template` accept every values file we ship,
and refuse bad values with a message that names the value and the fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helm.chart import CASES, CHART, KUBE_VERSION, HelmError, render, run_helm


@pytest.mark.parametrize("case", sorted(CASES))
def test_helm_lint_strict(helm: str, helm_home: Path, case: str) -> None:
    args = ["lint", "--strict", str(CHART), "--kube-version", KUBE_VERSION]
    for path in CASES[case]:
        args += ["--values", str(path)]
    result = run_helm(helm, helm_home, *args)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "[WARNING]" not in output and "[ERROR]" not in output, output


def test_every_ci_values_file_is_a_case() -> None:
    assert {
        "replicas-3", "replicas-5", "external-postgresql", "tls", "plaintext", "monitoring"
    } <= set(CASES)  # fmt: skip


# (--set arguments, a fragment helm must print)
REFUSED = {
    "replicaCount 2 (even, no majority to spare)": (
        ["replicaCount=2"],
        "at '/replicaCount': value must be one of 3, 5, 7",
    ),
    "replicaCount 4 (even)": (["replicaCount=4"], "at '/replicaCount': value must be one of"),
    "replicaCount 1": (["replicaCount=1"], "at '/replicaCount': value must be one of"),
    "replicaCount a string": (["replicaCount=three"], "got string, want integer"),
    "an unknown top-level key": (["replicas=3"], "additional properties 'replicas' not allowed"),
    "an unknown nested key (typo)": (
        ["sidecar.raft.tickMillis=15"],
        "additional properties 'tickMillis' not allowed",
    ),
    "a port out of range": (["sidecar.ports.peer=70000"], "/sidecar/ports/peer"),
    "TLS off without saying plaintext is meant": (
        ["tls.enabled=false"],
        "tls.enabled=false makes peer traffic plaintext and unauthenticated: "
        "set tls.insecurePlaintextPeers=true",
    ),
    "plaintext asked for with TLS on": (
        ["tls.insecurePlaintextPeers=true"],
        "tls.insecurePlaintextPeers=true goes only with tls.enabled=false",
    ),
    "a cluster id certificates cannot name": (["sidecar.clusterId=Payments_EU"], "/clusterId"),
    "an unknown issuer kind": (["tls.certManager.issuerRef.kind=Vault"], "issuerRef/kind"),
    "a non-PostgreSQL ledger URL": (["ledger.url=mysql://db/x"], "/ledger/url"),
    "resources without limits": (["sidecar.resources.limits=null"], "limits"),
    "an unknown anti-affinity type": (["podAntiAffinity.type=sometimes"], "podAntiAffinity/type"),
    "a root user": (["securityContext.runAsUser=0"], "/securityContext/runAsUser"),
    # Cross-field rules, enforced by the templates (templates/_helpers.tpl).
    "a PDB that lets evictions break quorum": (
        ["podDisruptionBudget.maxUnavailable=2"],
        "podDisruptionBudget.maxUnavailable=2 would let evictions break quorum: "
        "3 replicas need 2 up",
    ),
    "a lease floor below two election timeouts": (
        ["sidecar.lease.ttlMinMs=200"],
        "below two election timeouts",
    ),
    "a worker TTL the sidecar would refuse": (
        ["worker.ttlMs=120000"],
        "worker.ttlMs=120000 is outside sidecar.lease [2000, 60000]",
    ),
    "no ledger URL at all": (["ledger.url="], "set ledger.existingSecret"),
    "an election timeout under 5 heartbeats (etcd's rule)": (
        ["sidecar.raft.heartbeatTicks=3"],
        "sidecar.raft.electionTimeoutTicks=10 is under 5 heartbeats (5 x heartbeatTicks=3)",
    ),
    "an election timeout real pods cannot keep": (
        ["sidecar.raft.tickMs=15", "sidecar.lease.ttlMinMs=1000"],
        "the election timeout (sidecar.raft.tickMs x electionTimeoutTicks = 150 ms) "
        "is under 500 ms",
    ),
    "a tick below the schema's floor": (["sidecar.raft.tickMs=5"], "/sidecar/raft/tickMs"),
    "an update partition above the replica count": (
        ["updateStrategy.partition=4"],
        "updateStrategy.partition=4 is above replicaCount=3",
    ),
    "an unknown update strategy": (["updateStrategy.type=Recreate"], "/updateStrategy/type"),
    "a digest that is not sha256:<64 hex>": (["image.digest=sha256:abc"], "/image/digest"),
    "a digest in the tag": (["image.tag=0.1.0@sha256:" + "a" * 64], "/image/tag"),
    "PVCs deleted with the StatefulSet, unacknowledged": (
        ["persistence.retentionPolicy.whenDeleted=Delete"],
        "persistence.retentionPolicy whenDeleted=Delete deletes every Raft data volume",
    ),
    "plaintext peers without the NetworkPolicy": (
        ["tls.enabled=false", "tls.insecurePlaintextPeers=true", "networkPolicy.enabled=false"],
        "tls.enabled=false with networkPolicy.enabled=false leaves the peer port open",
    ),
    "a zone constraint twice": (
        [
            "topologySpreadConstraints[0].topologyKey=topology.kubernetes.io/zone",
            "topologySpreadConstraints[0].maxSkew=1",
            "topologySpreadConstraints[0].whenUnsatisfiable=DoNotSchedule",
        ],
        "topologySpreadConstraints repeats topology.kubernetes.io/zone",
    ),
    "a sidecar without a memory limit": (
        ["sidecar.resources.limits.memory=null"],
        "missing property 'memory'",
    ),
    "a grace period shorter than the handover": (
        ["terminationGracePeriodSeconds=5"],
        "leaves no time for the handover",
    ),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_bad_values_are_refused_with_a_clear_message(helm: str, helm_home: Path, case: str) -> None:
    set_values, message = REFUSED[case]
    with pytest.raises(HelmError) as refused:
        render(helm, helm_home, set_values=set_values)
    assert message in refused.value.output, refused.value.output


def test_acknowledged_data_loss_and_tls_off_behind_the_network_policy_render(
    helm: str, helm_home: Path
) -> None:
    docs = render(
        helm,
        helm_home,
        set_values=[
            "persistence.retentionPolicy.whenDeleted=Delete",
            "persistence.retentionPolicy.acknowledgeDataLoss=true",
            "tls.enabled=false",
            "tls.insecurePlaintextPeers=true",
        ],
    )
    (sts,) = [d for d in docs if d["kind"] == "StatefulSet"]
    assert sts["spec"]["persistentVolumeClaimRetentionPolicy"]["whenDeleted"] == "Delete"
    assert [d for d in docs if d["kind"] == "NetworkPolicy"]


def test_pdb_of_two_is_fine_for_five_replicas(helm: str, helm_home: Path) -> None:
    docs = render(
        helm, helm_home, set_values=["replicaCount=5", "podDisruptionBudget.maxUnavailable=2"]
    )
    pdb = next(d for d in docs if d["kind"] == "PodDisruptionBudget")
    assert pdb["spec"]["maxUnavailable"] == 2


def test_notes_render(helm: str, helm_home: Path) -> None:
    args = ["install", "rs", str(CHART), "--dry-run=client", "--namespace", "payments"]
    result = run_helm(helm, helm_home, *args)
    assert result.returncode == 0, result.stdout + result.stderr
    notes = result.stdout.split("NOTES:", 1)[1]
    assert "rs-raft-sidecar-2  rs-raft-sidecar-2.rs-raft-sidecar-headless.payments.svc" in notes
    assert "tolerates 1 lost pod(s)" in notes
    assert "helm test rs -n payments" in notes
    assert (
        "Peer mTLS: on. Each pod's certificate comes from its Secret <pod name>-peer-tls" in notes
    )
    assert "rs-raft-sidecar-0.payments.rs-raft-sidecar.raft-sidecar.internal" in notes
    args += ["--set", "tls.enabled=false", "--set", "tls.insecurePlaintextPeers=true"]
    result = run_helm(helm, helm_home, *args)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "WARNING: peer mTLS is off" in result.stdout.split("NOTES:", 1)[1]
    assert "WARNING: the ledger URL comes from values" in notes
    # helm 4's client-side dry run assumes Kubernetes 1.35, which honours
    # maxUnavailable of a StatefulSet: no warning about it.
    assert "MaxUnavailableStatefulSet" not in notes
