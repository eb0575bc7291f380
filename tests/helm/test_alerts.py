"""The alert rules (helm/raft-sidecar/files/alerts.yaml): promtool accepts
them as a file and as the chart renders them, promtool's unit tests show each
alert firing and not firing, and each alert has its runbook section."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from tests.helm.chart import CHART, Manifests, load_yaml
from tests.helm.tools import REPO_ROOT

ALERTS = CHART / "files" / "alerts.yaml"
ALERT_TESTS = Path(__file__).with_name("alerts.test.yaml")
RUNBOOKS = REPO_ROOT / "docs" / "runbooks.md"

REQUIRED_ALERTS = {
    "RaftSidecarElectionNoHolder",  # no holder for an election
    "RaftSidecarNoRaftLeader",
    "RaftSidecarLeaderFlapping",
    "RaftSidecarHolderFlapping",
    "RaftSidecarLeaseExpirations",
    "RaftSidecarUndecodableEntries",  # a command got past the leader's gate
    "SettlementStaleTokenRejections",  # at the ledger
    "SettlementFenceHolderConflict",  # one token, two workers
    "RaftSidecarDown",
    "RaftSidecarClusterDown",  # every sidecar gone: absent series, not a sum of nothing
    "RaftSidecarNoSidecarTargets",  # the rules would be blind
    "RaftSidecarQuorumLost",  # kube-state-metrics replicas against sidecars with a leader
    "RaftSidecarTwoLeadersInOneTerm",  # Raft's Election Safety
    "RaftSidecarFencingTokenWentBackwards",
    "RaftSidecarReplicasDisagree",  # state digests at the same applied index
    "RaftSidecarSlowFsync",
    "RaftSidecarVolumeFillingUp",
    "RaftSidecarApplyLag",
    "RaftSidecarQuorumAtRisk",
    "RaftSidecarPeerCertificateExpiringSoon",  # peer mTLS
    "RaftSidecarPeerCertificateReloadRefused",
}


def rules() -> list[dict[str, Any]]:
    return [r for g in load_yaml(ALERTS)["groups"] for r in g["rules"]]


def run(tool: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([tool, *args], capture_output=True, text=True, check=False, timeout=60)


def test_promtool_check_rules_file(promtool: str) -> None:
    result = run(promtool, "check", "rules", str(ALERTS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules())} rules found" in result.stdout


def test_promtool_check_rendered_prometheus_rule(
    promtool: str, rendered: Callable[[str], Manifests], tmp_path: Path
) -> None:
    spec = rendered("monitoring").one("PrometheusRule")["spec"]
    path = tmp_path / "rendered-rules.yaml"
    path.write_text(yaml.safe_dump({"groups": spec["groups"]}))
    result = run(promtool, "check", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_unit_tests(promtool: str) -> None:
    result = run(promtool, "test", "rules", str(ALERT_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_unit_tests_show_each_alert_firing_and_not_firing() -> None:
    fired: set[str] = set()
    quiet: set[str] = set()
    for case in load_yaml(ALERT_TESTS)["tests"]:
        for check in case.get("alert_rule_test") or []:
            (fired if check.get("exp_alerts") else quiet).add(check["alertname"])
    names = {r["alert"] for r in rules()}
    assert names - fired == set(), "alerts never shown firing"
    assert names - quiet == set(), "alerts never shown quiet"


def test_required_alerts_exist_and_are_complete() -> None:
    by_name = {r["alert"]: r for r in rules()}
    assert len(by_name) == len(rules()), "duplicate alert names"
    assert set(by_name) >= REQUIRED_ALERTS
    for name, rule in by_name.items():
        assert rule["labels"]["severity"] in {"critical", "warning"}, name
        assert {"summary", "description", "runbook_url"} <= set(rule["annotations"]), name


def github_anchor(heading: str) -> str:
    """GitHub's heading anchor: lower case, punctuation dropped, spaces to -."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def runbook_sections() -> dict[str, str]:
    """Anchor of each `## ` heading -> its text up to the next one."""
    sections: dict[str, str] = {}
    current = None
    for line in RUNBOOKS.read_text().splitlines():
        if line.startswith("## "):
            current = github_anchor(line[3:])
            sections[current] = ""
        elif current is not None:
            sections[current] += line + "\n"
    return sections


def test_every_alert_links_its_runbook_section() -> None:
    sections = runbook_sections()
    for rule in rules():
        url = rule["annotations"]["runbook_url"]
        path, _, anchor = url.partition("#")
        assert path == "docs/runbooks.md", url
        assert anchor == rule["alert"].lower(), url
        assert anchor in sections, f"docs/runbooks.md has no section for {rule['alert']}"
        body = sections[anchor]
        for part in ("Meaning", "Impact", "Diagnosis", "Action"):
            assert f"**{part}.**" in body, f"{rule['alert']}: runbook lacks {part}"
        # The runbook names what the alert measures.
        for metric in re.findall(r"(?:raft_sidecar|settlement_worker)_\w+", rule["expr"]):
            base = re.sub(r"_(total|created|bucket|sum|count)$", "", metric)
            assert base in body, f"{rule['alert']}: runbook does not mention {base}"
