# One entry point for every routine task. The venv is built on first use, so
# `make demo` and `make test` work on a fresh machine with nothing but Python 3.11.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo sim-demo test test-loop check sim sim-long sim-mutants bench proto clean chaos chaos-long

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m settlement_demo.cli run

sim-demo: $(STAMP)
	$(BIN)/python -m tests.sim.demo

# The whole suite: installs helm and promtool first when they are missing
# (idempotent; scripts/install_tools.sh), so no chart test skips.
test: $(STAMP)
	bash scripts/install_tools.sh
	$(BIN)/python -m pytest -n 2 -q

# The chaos suite (docs/chaos.md; needs root for the network namespaces): one
# seeded run of real sidecars and workers under the nemesis, then the four
# negative controls, each of which must be reported as a violation. SEED=S
# replays another schedule; each run prints its own replay command.
SEED ?= 1
chaos: $(STAMP)
	$(BIN)/python -m tests.chaos --suite ci --seed $(SEED)

# Longer campaign: six 5-minute runs (3 and 5 nodes, SQLite and PostgreSQL at
# 127.0.0.1:5432 db test) and every control on both ledgers; about an hour.
chaos-long: $(STAMP)
	$(BIN)/python -m tests.chaos --suite long --seed $(SEED)

# The real-process tests N times under CPU burners (scripts/test_loop.sh):
# before landing a change to the runtime, the transport or the harness.
N ?= 3
test-loop: $(STAMP)
	bash scripts/install_tools.sh
	bash scripts/test_loop.sh $(N)

# Format, lint, strict typing, import contracts, buf lint, generated-code freshness.
check: $(STAMP)
	$(BIN)/python scripts/check.py

# Regenerate sidecar/pb/ from proto/ (commit the result).
proto: $(STAMP)
	$(BIN)/python scripts/gen_proto.py

# The mutant searches from seed 0 (about 10 minutes of a core): the default
# run replays each mutant's recorded first seed; run this after a change to
# the core or the simulator to find where the first seeds moved.
sim-mutants: $(STAMP)
	RAFT_SIDECAR_LONG=1 $(BIN)/python -m pytest -n 2 -q tests/sim/test_mutants.py

# 50,000 seeds outside the ranges CI (0-499) and the mutants (0-1,999) use, on
# both cores, at low priority: about 30 minutes when both are free.
sim-long: $(STAMP)
	nice -n 10 $(BIN)/python -m tests.sim --first-seed 100000 --seeds 50000 --steps 2000 --jobs 2 --progress 5000

# The last step prints our figures beside etcd's (Debian's etcd-server, unpacked
# into .tools/bin by `make bench-etcd`); without etcd it prints ours alone and
# says how to install it. Not part of `make test`.
bench: $(STAMP)
	$(BIN)/python -m bench.raft_core
	$(BIN)/python -m bench.storage
	$(BIN)/python -m bench.sidecar
	$(BIN)/python -m bench.membership
	$(BIN)/python -m bench.disaster
	$(BIN)/python -m bench.members
	$(BIN)/python -m bench.silent_failover
	$(BIN)/python -m bench.stop_handover
	$(BIN)/python -m bench.etcd_baseline

# etcd for bench.etcd_baseline, into .tools/bin (scripts/install_etcd.sh), then the bench.
.PHONY: bench-etcd
bench-etcd: $(STAMP)
	bash scripts/install_etcd.sh
	$(BIN)/python -m bench.etcd_baseline

# helm and promtool for tests/helm/, into .tools/bin (scripts/install_tools.sh).
.PHONY: tools
tools:
	bash scripts/install_tools.sh

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
