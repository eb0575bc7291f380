#!/usr/bin/env bash
# Install etcd, the baseline of `python -m bench.etcd_baseline`, into .tools/bin:
#
#   etcd   from Debian's `etcd-server` package (3.4 on bookworm), unpacked with
#          dpkg-deb and never installed: installing the package would register
#          and, where an init system runs, start a system etcd on 2379/2380,
#          which the bench neither needs nor should leave behind on a shared
#          machine. The bench starts its own members on their own ports.
#
#   scripts/install_etcd.sh        (or `make bench-etcd`)
#
# Idempotent: an etcd already in .tools/bin (or on PATH) is kept. Needs
# apt-get and dpkg-deb; runs as root without sudo, otherwise `apt-get update`
# (only when the package lists do not know etcd-server) goes through sudo.
# RAFT_SIDECAR_TOOLS_DIR overrides the target directory.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BIN="${RAFT_SIDECAR_TOOLS_DIR:-$ROOT/.tools/bin}"
PACKAGE="etcd-server"

LOG_NAME=install_etcd
# shellcheck source=scripts/deb_unpack.sh
source "$ROOT/scripts/deb_unpack.sh"

if [[ -x "$BIN/etcd" ]]; then
    say "$("$BIN/etcd" --version | head -n 1) already in $BIN"
    exit 0
fi
if command -v etcd >/dev/null 2>&1; then
    say "$(etcd --version | head -n 1) already on PATH ($(command -v etcd))"
    exit 0
fi

WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$BIN"
deb_unpack "$PACKAGE" usr/bin/etcd "$BIN/etcd" "$WORK"
"$BIN/etcd" --version >/dev/null || die "installed etcd does not run"
say "installed $("$BIN/etcd" --version | head -n 1) (from $DEB_FILE) into $BIN"
