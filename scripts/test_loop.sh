#!/usr/bin/env bash
# The real-process tests N times (default 3) while CPU burners load every
# core: run before landing a change to the runtime, the transport or the
# test harness (a test that passes alone and fails on a busy machine is a
# defect). Stops at the first red round; the burners are killed on any exit.
#
#   make test-loop            # 3 rounds
#   make test-loop N=10       # 10 rounds
#   BURNERS=4 make test-loop  # more load than one burner per core
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

rounds="${1:-3}"
burners="${BURNERS:-$(nproc)}"
python="${PYTHON:-.venv/bin/python}"
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
}
trap cleanup EXIT INT TERM

for _ in $(seq "$burners"); do
    nice -n 5 "$python" -c 'while True: pass' &
    pids+=($!)
done
echo "test-loop: $rounds rounds, $burners CPU burners, load $(cut -d' ' -f1-3 /proc/loadavg)"
for round in $(seq "$rounds"); do
    echo "test-loop: round $round of $rounds"
    "$python" -m pytest -n 2 -q -p no:cacheprovider \
        tests/integration tests/node tests/transport tests/settlement tests/test_netlab.py
done
echo "test-loop: $rounds rounds green (load $(cut -d' ' -f1-3 /proc/loadavg))"
