# Entry points for developers and CI; the logic lives in deploy/*.sh.
# CORRAL_DIR (default ./var), CORRAL_MODE (separate|single) and CORRAL_NATS_PORT
# are passed through the environment, e.g. `CORRAL_MODE=single make up`.
SHELL := /bin/bash
VENV := .venv
BENCHES := $(wildcard bench/*.py)

.PHONY: install up down test unit bench bench-all bench-cluster image lint nats-api cluster-up cluster-down cluster-kill cluster-join

install:  ## Debian packages, subuid/subgid, venv and pip (only what is missing)
	deploy/install.sh

up:  ## install, then start NATS + services + gateway and wait for the API
	deploy/up.sh

down:  ## stop what `make up` started (by pid file), keep the data
	deploy/down.sh

test: install  ## the whole suite, tests/unit included; pytest's own exit code (5 = nothing collected) fails
	$(VENV)/bin/pytest -q

unit:  ## unit tests of pure logic: no root, no services, seconds
	$(VENV)/bin/pytest -q tests/unit

bench: install  ## the speed and footprint table (bench/speed.py); LXD_SOCK=... measures LXD too
	$(VENV)/bin/python -m bench.speed $(BENCH_ARGS)

bench-cluster: install  ## issue 13's cluster figures (bench/cluster.py): lxc list of 1000 records over 3 nodes
	$(VENV)/bin/python -m bench.cluster $(BENCH_ARGS)

bench-all: install  ## every bench/*.py, stopping at the first failure
	@set -e; for b in $(filter-out bench/common.py bench/__init__.py,$(BENCHES)); do \
		echo "== $$b"; $(VENV)/bin/python -m bench.$$(basename $$b .py); done

image:  ## the busybox image the tests and docs use
	$(VENV)/bin/corral image build busybox --alias busybox

lint:
	$(VENV)/bin/ruff check .

nats-api:  ## after adding or changing a bus verb: docs/nats-api.md and shared/client/api.py from the catalogue
	$(VENV)/bin/python -m services.catalog --markdown > docs/nats-api.md
	$(VENV)/bin/python -m services.catalog --client > shared/client/api.py

# A cluster of N nodes on this machine, each in its own network namespace (docs/cluster.md).
# CORRAL_CLUSTER_PREFIX names the namespaces (default corral).
cluster-up:  ## N nodes (default 3): namespaces, a NATS cluster, services + gateway per node
	N=$(N) deploy/cluster-up.sh

cluster-kill:  ## SIGKILL every process of node NODE=K (cluster-up brings it back)
	NODE=$(NODE) deploy/cluster-kill.sh

cluster-join:  ## a node joins with the token of `lxc cluster add nodeK` (TOKEN=...)
	TOKEN=$(TOKEN) deploy/cluster-join.sh

cluster-down:  ## stop every node, remove the namespaces, veths and hub (data kept)
	deploy/cluster-down.sh
