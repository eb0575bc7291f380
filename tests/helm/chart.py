"""Rendering the chart with the real helm, and reading what it rendered.

``render`` runs ``helm template`` and returns the manifests as dicts;
``Manifests`` finds objects and containers in them; ``resolve_env`` and
``expand`` do what the kubelet does with a container's ``env`` and ``$(VAR)``
references, so tests can run exactly the rendered command lines.
"""

from __future__ import annotations

import functools
import os
import re
import subprocess
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tests.helm.tools import REPO_ROOT

CHART = REPO_ROOT / "helm" / "raft-sidecar"
CI_VALUES = sorted((CHART / "ci").glob("*.yaml"))
KUBE_VERSION = "1.33.0"
"""The Kubernetes version manifests are rendered for and validated against."""
RELEASE = "rs"
NAMESPACE = "payments"

CASES: dict[str, tuple[Path, ...]] = {"default": ()}
CASES.update({path.stem.removesuffix("-values"): (path,) for path in CI_VALUES})
"""Every rendering the tests check: default values and each ci/*.yaml."""


class HelmError(Exception):
    def __init__(self, returncode: int, output: str) -> None:
        super().__init__(output)
        self.returncode = returncode
        self.output = output


def helm_env(home: Path) -> dict[str, str]:
    """Keep helm's cache, config and data out of the user's home."""
    env = dict(os.environ)
    for var in ("HELM_CACHE_HOME", "HELM_CONFIG_HOME", "HELM_DATA_HOME"):
        env[var] = str(home / var.lower())
    return env


def run_helm(helm: str, home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [helm, *args], capture_output=True, text=True, check=False, env=helm_env(home), timeout=60
    )


def render(
    helm: str,
    home: Path,
    values: Sequence[Path] = (),
    set_values: Sequence[str] = (),
    *,
    release: str = RELEASE,
    namespace: str = NAMESPACE,
    kube_version: str = KUBE_VERSION,
) -> list[dict[str, Any]]:
    """``helm template`` the chart; raises HelmError with helm's output on failure."""
    args = ["template", release, str(CHART), "--namespace", namespace]
    args += ["--kube-version", kube_version]
    for path in values:
        args += ["--values", str(path)]
    for item in set_values:
        args += ["--set", item]
    result = run_helm(helm, home, *args)
    if result.returncode != 0:
        raise HelmError(result.returncode, result.stdout + result.stderr)
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


@dataclass(frozen=True)
class Manifests:
    docs: list[dict[str, Any]]

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        return [d for d in self.docs if d.get("kind") == kind]

    def one(self, kind: str) -> dict[str, Any]:
        found = self.of_kind(kind)
        assert len(found) == 1, f"expected one {kind}, rendered {len(found)}"
        return found[0]

    def named(self, kind: str, name: str) -> dict[str, Any]:
        for doc in self.of_kind(kind):
            if doc["metadata"]["name"] == name:
                return doc
        raise AssertionError(f"no {kind} named {name}")

    @property
    def statefulset(self) -> dict[str, Any]:
        return self.one("StatefulSet")

    @property
    def pod_spec(self) -> dict[str, Any]:
        spec: dict[str, Any] = self.statefulset["spec"]["template"]["spec"]
        return spec

    def container(self, name: str) -> dict[str, Any]:
        for container in self.pod_spec["containers"]:
            if container["name"] == name:
                return dict(container)
        raise AssertionError(f"no container {name}")

    def headless_service(self) -> dict[str, Any]:
        name = self.statefulset["spec"]["serviceName"]
        return self.named("Service", name)


def env_list(container: Mapping[str, Any]) -> list[dict[str, Any]]:
    return list(container.get("env") or [])


def env_names(container: Mapping[str, Any]) -> list[str]:
    return [e["name"] for e in env_list(container)]


def literal_env(container: Mapping[str, Any]) -> dict[str, str]:
    """The env entries that have a literal value (unexpanded)."""
    return {e["name"]: e["value"] for e in env_list(container) if "value" in e}


_REF = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")


def expand(value: str, env: Mapping[str, str]) -> str:
    """Kubernetes' $(VAR) expansion: known names are replaced, unknown ones
    stay as written, and $$ is a literal $."""

    def sub(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        return env.get(match.group(1), match.group(0))

    return _REF.sub(sub, value)


def resolve_env(
    container: Mapping[str, Any],
    *,
    field: Callable[[str], str],
    secret: Callable[[str, str], str],
) -> dict[str, str]:
    """The container's environment as the kubelet builds it, in order: each
    value may refer to variables defined before it. ``field(path)`` answers
    fieldRef (``metadata.name``), ``secret(name, key)`` secretKeyRef."""
    env: dict[str, str] = {}
    for entry in env_list(container):
        name = entry["name"]
        if "value" in entry:
            env[name] = expand(str(entry["value"]), env)
            continue
        source = entry.get("valueFrom") or {}
        if "fieldRef" in source:
            env[name] = field(source["fieldRef"]["fieldPath"])
        elif "secretKeyRef" in source:
            ref = source["secretKeyRef"]
            env[name] = secret(ref["name"], ref["key"])
        else:
            raise AssertionError(f"env {name}: unsupported source {source}")
    return env


def command_line(container: Mapping[str, Any], env: Mapping[str, str]) -> list[str]:
    argv = list(container.get("command") or []) + list(container.get("args") or [])
    return [expand(str(a), env) for a in argv]


def pre_stop_sleep_s(container: Mapping[str, Any]) -> int:
    """Seconds of a container's preStop sleep: the kubelet's own sleep
    action (Kubernetes 1.30+) or ``exec sleep N`` before it."""
    hook = container["lifecycle"]["preStop"]
    if "sleep" in hook:
        return int(hook["sleep"]["seconds"])
    command = hook["exec"]["command"]
    assert command[0] == "sleep", command
    return int(command[1])


def secret_value(manifests: Manifests, name: str, key: str) -> str | None:
    """A key of a Secret the chart itself renders (None for an external one)."""
    for doc in manifests.of_kind("Secret"):
        if doc["metadata"]["name"] == name:
            data = doc.get("stringData") or {}
            return str(data[key]) if key in data else None
    return None


def parse_peers(value: str) -> dict[str, str]:
    peers = {}
    for item in value.split(","):
        node_id, _, address = item.partition("=")
        peers[node_id] = address
    return peers


# ---- PromQL -------------------------------------------------------------------

_PROMQL_KEYWORDS = frozenset(
    {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "offset"}
    | {"and", "or", "unless", "atan2", "inf", "nan", "start", "end"}
)
_GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
_MATCHERS = re.compile(r"\{([^}]*)\}")
_MATCHER_LABEL = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)\s*(=~|!~|!=|=)")
_IDENT = re.compile(r"(?<![\w.$])([A-Za-z_:][\w:]*)(\s*\()?")


def _strip_strings(expr: str) -> str:
    expr = re.sub(r'"(?:\\.|[^"\\])*"', '""', expr)
    return re.sub(r"'(?:\\.|[^'\\])*'", "''", expr)


def promql_metric_names(expr: str) -> set[str]:
    """Metric names an expression selects: identifiers that are not functions,
    keywords, labels (in matchers or grouping clauses) or Grafana variables."""
    text = _strip_strings(expr)
    text = re.sub(r"\$\{?\w+\}?", "", text)  # $var, ${var}, $__rate_interval
    text = _MATCHERS.sub("", text)
    text = re.sub(r"\[[^\]]*\]", "", text)  # ranges and subqueries
    text = _GROUPING.sub("", text)
    names = set()
    for match in _IDENT.finditer(text):
        word, call = match.group(1), match.group(2)
        if call or word in _PROMQL_KEYWORDS:
            continue
        names.add(word)
    return names


_MADE_LABEL = re.compile(
    r'count_values\s*(?:(?:by|without)\s*\([^)]*\)\s*)?\(\s*"(\w+)"'
    r'|label_replace\(.*?,\s*"(\w+)"\s*,\s*"[^"]*"\s*,\s*"\w+"',
    re.S,
)


def promql_made_labels(expr: str) -> set[str]:
    """Labels an expression makes itself: count_values' and label_replace's."""
    return {a or b for a, b in _MADE_LABEL.findall(expr)}


def promql_label_names(expr: str) -> set[str]:
    """Label names an expression matches on or groups by, except those it
    makes itself (``promql_made_labels``)."""
    text = _strip_strings(expr)
    labels = set()
    for body in _MATCHERS.findall(text):
        labels.update(m.group(1) for m in _MATCHER_LABEL.finditer(body))
    for _, body in _GROUPING.findall(text):
        labels.update(part.strip() for part in body.split(",") if part.strip())
    return labels - promql_made_labels(expr)


def label_values_query(query: str) -> tuple[str, str | None]:
    """Grafana's ``label_values(expr, label)`` -> (expr, label)."""
    match = re.fullmatch(r"\s*label_values\((.*),\s*([A-Za-z_]\w*)\s*\)\s*", query, re.S)
    if match is None:
        return query, None
    return match.group(1), match.group(2)


def exported_names(families: Iterable[Any]) -> set[str]:
    """Every sample name a scrape can contain, from the families' types, also
    for labelled metrics with no child yet (those still print HELP and TYPE)."""
    suffixes = {
        "counter": ("_total", "_created"),
        "histogram": ("_bucket", "_sum", "_count", "_created"),
        "summary": ("_sum", "_count", "_created", ""),
        "gauge": ("",),
        "info": ("_info",),
        "stateset": ("",),
        "gaugehistogram": ("_bucket", "_gsum", "_gcount"),
        "unknown": ("",),
    }
    families = list(families)
    # _created series exist only if the process exports them at all
    # (prometheus-client can switch them off).
    created = any(s.name.endswith("_created") for f in families for s in f.samples)
    names = set()
    for family in families:
        for suffix in suffixes.get(family.type, ("",)):
            if suffix != "_created" or created:
                names.add(family.name + suffix)
        names.update(sample.name for sample in family.samples)
    return names


@functools.cache
def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())
