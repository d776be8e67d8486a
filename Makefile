# Entry points for developers and CI; the logic lives in deploy/*.sh.
# CORRAL_DIR (default ./var), CORRAL_MODE (separate|single) and CORRAL_NATS_PORT
# are passed through the environment, e.g. `CORRAL_MODE=single make up`.
SHELL := /bin/bash
VENV := .venv
BENCHES := $(wildcard bench/*.py)

.PHONY: install up down test unit bench image lint

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

bench: install  ## every bench/*.py, stopping at the first failure
	@if [ -z "$(BENCHES)" ]; then echo "no bench/*.py yet"; fi
	@set -e; for b in $(BENCHES); do echo "== $$b"; $(VENV)/bin/python "$$b"; done

image:  ## the busybox image the tests and docs use
	$(VENV)/bin/corral image build busybox --alias busybox

lint:
	$(VENV)/bin/ruff check .
