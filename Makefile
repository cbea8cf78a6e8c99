# learnops — the two commands a newcomer needs are `make demo` and `make test`.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint typecheck unit integration bench faults screenshots up down status clean

## The virtualenv is filled by uv (from PyPI, into the venv) when it installs, else by pip:
## the same packages at the same versions, in 16 s instead of pip's 41 s on this machine
## (the project's own packaging is unchanged; pip installs it as before: pip install '.[dev]').
## --compile-bytecode: with PYTHONDONTWRITEBYTECODE set, as here, nothing else writes .pyc files.
## uv reads none of pip's settings: the environment's PIP_INDEX_URL, PIP_EXTRA_INDEX_URL,
## PIP_FIND_LINKS, PIP_CONSTRAINT and PIP_CERT are handed to it under its own names (a
## pip.conf is not: a uv install that fails for any reason is done again by pip).
PIP_TO_UV = $(if $(PIP_INDEX_URL),UV_INDEX_URL="$(PIP_INDEX_URL)") \
	$(if $(PIP_EXTRA_INDEX_URL),UV_EXTRA_INDEX_URL="$(PIP_EXTRA_INDEX_URL)") \
	$(if $(PIP_FIND_LINKS),UV_FIND_LINKS="$(PIP_FIND_LINKS)") \
	$(if $(PIP_CONSTRAINT),UV_CONSTRAINT="$(PIP_CONSTRAINT)") \
	$(if $(PIP_CERT),SSL_CERT_FILE="$(PIP_CERT)")
$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), f"learnops needs Python 3.11+, found {sys.version.split()[0]}"'
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@if $(BIN)/python -m pip install --quiet uv \
		&& env $(PIP_TO_UV) $(BIN)/uv pip install --quiet --compile-bytecode --python $(BIN)/python -e '.[dev]'; then \
		:; \
	else \
		echo "uv did not install the packages: installing with pip"; \
		$(BIN)/python -m pip install --quiet --upgrade pip && $(BIN)/python -m pip install --quiet -e '.[dev]'; \
	fi
	@touch $(STAMP)

## make test: lint, type-check, unit tests, then integration tests on real Kafka and PostgreSQL.
## Three pytest-xdist processes share the files out (whole files, so module workers stay
## shared); each starts its own Kafka and PostgreSQL (tests/services.py). On two cores the
## suite uses about 530 s of CPU; with two processes they spent a third of the run waiting
## (for workers, timers and rebalances), so a third fills those waits: 357 s of pytest
## against 413 s with two, back to back on one clone; a fourth gave the same 357 s (the
## cores are then full, and each process adds a broker). Files go out in
## collection order (faults, integration, then the many short unit files that even out
## the end); xdist's default sends the files with most tests first, which left the long
## few-test files (the fault subset, the bandit's promotion walk) to the end, and one
## process idle for the last 38 s of a clean-clone run.
PYTEST_WORKERS ?= 3
PYTEST := $(BIN)/python -m pytest -q -p no:cacheprovider
test: $(STAMP)
	@# Byte-compile our own modules (pip compiles the installed packages, not an editable
	@# project): with PYTHONDONTWRITEBYTECODE set, as on this machine, every worker and CLI
	@# process the tests start compiled them again (~0.1 s of CPU each, a few hundred).
	$(BIN)/python -m compileall -q agents learning models storage learnops tests
	@# pytest rewrites the asserts of each test module it imports and caches the result only
	@# where Python may write bytecode, so with PYTHONDONTWRITEBYTECODE set every xdist process
	@# rewrote all of them: a collection took 12.2 s of CPU, 5.8 s with the cache. One
	@# collection writes the cache, on the core that lint and mypy (one thread) leave idle.
	@env -u PYTHONDONTWRITEBYTECODE $(PYTEST) --collect-only tests >/dev/null 2>&1 & collecting=$$!; \
		$(MAKE) --no-print-directory lint typecheck; checked=$$?; \
		wait $$collecting; exit $$checked
	$(PYTEST) --durations=25 -n $(PYTEST_WORKERS) --dist loadfile --no-loadscope-reorder tests

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

typecheck: $(STAMP)
	$(BIN)/mypy

## make screenshots: the console's browser tests, saving their screenshots into docs/screenshots
## (`make test` saves them under .local/screenshots, so that it leaves the checkout clean).
screenshots: $(STAMP)
	LEARNOPS_SCREENSHOTS_DIR=$(CURDIR)/docs/screenshots $(BIN)/python -m pytest -q -p no:cacheprovider \
		tests/integration/test_console.py tests/integration/test_console_concerns.py \
		tests/integration/test_console_bandits.py

unit: $(STAMP)
	$(BIN)/python -m pytest -q tests/unit

integration: $(STAMP)
	$(BIN)/python -m pytest -q tests/integration

## make demo: local Kafka + PostgreSQL, the worker, a simulated orchestrator, and what happened.
demo: $(STAMP)
	bash scripts/demo.sh

## make faults: kill -9, broker and PostgreSQL outages, two workers, a partition count raised
## under traffic, a fuzz corpus; exact counts.
## Each script starts its own Kafka and PostgreSQL on free ports (docs/operations.md, "Fault suite").
## kill9 runs as a plain group member, as a static one (LEARNOPS_GROUP_INSTANCE_ID), and with
## RocksDB tables; repartition with the memory and the RocksDB store.
faults: $(STAMP)
	@# The RocksDB table store's runs need its extra (rocksdict, from PyPI).
	$(BIN)/python -m pip install --quiet -e '.[dev,rocksdb]'
	@status=0; for f in kill9 "kill9 --static" "kill9 --store rocksdb --kills 8" outages \
		two_workers repartition "repartition --store rocksdb" "repartition --stale-producer" fuzz; do \
		echo "== tests.faults.$$f"; $(BIN)/python -m tests.faults.$$f || status=1; \
	done; exit $$status

bench: $(STAMP)
	bash scripts/services.sh up >/dev/null
	eval "$$(bash scripts/services.sh env)" && for b in bench/*.py; do echo "== $$b"; $(BIN)/python $$b; done

up:
	bash scripts/services.sh up

down:
	bash scripts/demo.sh stop-console
	bash scripts/services.sh down

status:
	bash scripts/services.sh status

clean: down
	rm -rf .local
