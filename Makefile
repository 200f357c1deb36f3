# Lepton: the two commands a new user needs are `make demo` and `make test`.
# Both create the virtual environment on first use (Python 3.11 + the pinned
# requirements.lock, installed with uv) and reuse it afterwards.

PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.lepton-installed
UV_VERSION := 0.13.9

# uv does not read pip's configuration; hand it pip's find-links (where a
# machine may keep a local torch wheel) so both installers see the same files.
FIND_LINKS := $(sort $(PIP_FIND_LINKS) $(shell $(PYTHON) -m pip config get global.find-links 2>/dev/null))
UV_FIND_LINKS_ARGS := $(foreach f,$(FIND_LINKS),--find-links $(f))

export MLFLOW_DISABLE_TELEMETRY := true
export DO_NOT_TRACK := 1

.PHONY: install demo test test-fast lint docs hooks postgres bench repro lock clean-state help browser monitoring

help:
	@echo "make demo      - set up (first time) and run the retraining loop on the bundled digits"
	@echo "make test      - set up (first time), lint, and run the whole test suite"
	@echo "                 (needs PostgreSQL at 127.0.0.1:5432 and Debian's chromium)"
	@echo "make test-fast - lint, then the tests that need no PostgreSQL, live stack or browser"
	@echo "make lint      - ruff check, ruff format --check, mypy, lint-imports"
	@echo "make docs      - serve the documentation site at http://127.0.0.1:8001 (mkdocs serve)"
	@echo "make hooks     - install the git pre-commit hook (.pre-commit-config.yaml)"
	@echo "make repro     - dvc repro: prepare -> train -> evaluate from params.yaml, no Prefect"
	@echo "make bench     - run benchmarks/overhead.py"
	@echo "make lock      - re-pin requirements.lock from requirements.in"

install: $(STAMP)

$(STAMP): requirements.lock pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found; Lepton needs Python 3.11" >&2; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q uv==$(UV_VERSION)
	$(BIN)/uv pip install --python $(BIN)/python $(UV_FIND_LINKS_ARGS) --compile-bytecode -q -r requirements.lock
	$(BIN)/uv pip install --python $(BIN)/python --no-deps -q -e .
	@touch $(STAMP)

demo: $(STAMP)
	$(BIN)/lepton demo

# The dashboard tests drive Debian's headless Chromium; install it when missing.
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  echo "installing Debian's chromium for the dashboard tests"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } \
	  || { echo "error: the dashboard tests need Debian's chromium (apt-get install chromium)" >&2; exit 1; }

# Prometheus and Alertmanager (the serving alerts; `lepton up` runs them when they are
# installed, and the tests check the rules with promtool): Debian's packages, installed
# when missing. The packages' own services are kept from starting (policy-rc.d, when
# the machine has none): `lepton up` runs its own, on loopback.
MONITORING_PKGS := prometheus prometheus-alertmanager
monitoring:
	@command -v promtool >/dev/null 2>&1 && command -v prometheus-alertmanager >/dev/null 2>&1 && exit 0; \
	echo "installing Debian's $(MONITORING_PKGS) for the serving alerts"; \
	policy=/usr/sbin/policy-rc.d; made=; \
	if [ ! -e $$policy ] && [ -w /usr/sbin ]; then printf '#!/bin/sh\nexit 101\n' > $$policy && chmod 755 $$policy && made=1; fi; \
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(MONITORING_PKGS) >/dev/null; rc=$$?; \
	[ -n "$$made" ] && rm -f $$policy; \
	[ $$rc -eq 0 ] || { echo "error: the alerting tests need Debian's $(MONITORING_PKGS) (apt-get install $(MONITORING_PKGS))" >&2; exit 1; }

# PostgreSQL at 127.0.0.1:5432 (the `postgres` tests): started with pg_ctlcluster
# when it is installed but down; otherwise `make test` stops here, saying so.
PG_HOST := 127.0.0.1
PG_PORT := 5432
PG_UP   := $(BIN)/python -c "import socket; socket.create_connection(('$(PG_HOST)', $(PG_PORT)), 2).close()" 2>/dev/null

postgres: $(STAMP)
	@$(PG_UP) && exit 0; \
	down=$$(command -v pg_ctlcluster >/dev/null 2>&1 && command -v pg_lsclusters >/dev/null 2>&1 && \
	  pg_lsclusters -h | awk '$$3 == $(PG_PORT) && $$4 != "online" {print $$1 "/" $$2}'); \
	for c in $$down; do \
	  echo "starting PostgreSQL $$c for the postgres tests"; pg_ctlcluster $${c%/*} $${c#*/} start; done; \
	if [ -n "$$down" ]; then for i in 1 2 3 4 5 6 7 8 9 10; do $(PG_UP) && exit 0; sleep 1; done; fi; \
	echo "error: make test needs PostgreSQL at $(PG_HOST):$(PG_PORT) (trust auth) and none answers; start it, or run make test-fast" >&2; \
	exit 1

# Every check runs, so one pass shows all findings; any finding fails the target.
lint: $(STAMP)
	@rc=0; \
	echo "ruff check ."; $(BIN)/ruff check . || rc=1; \
	echo "ruff format --check ."; $(BIN)/ruff format --check . || rc=1; \
	echo "mypy (packages and strictness: pyproject.toml [tool.mypy])"; $(BIN)/mypy || rc=1; \
	echo "lint-imports --no-cache"; $(BIN)/lint-imports --no-cache || rc=1; \
	exit $$rc

test: $(STAMP) lint postgres browser monitoring
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python -m pytest $(PYTEST_ARGS)

# No server to provide: the tests marked slow, postgres, live or browser are left
# out (tests/conftest.py marks them); a few minutes on two cores.
test-fast: $(STAMP) lint
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python -m pytest -m "not slow and not postgres and not live and not browser" $(PYTEST_ARGS)

# mkdocs.yml at the root; http://127.0.0.1:8001 (8000 is the model server's default port)
MKDOCS_ARGS ?= -a 127.0.0.1:8001
docs: $(STAMP)
	$(BIN)/mkdocs serve $(MKDOCS_ARGS)

# The checks of `make lint`, before each commit, from the virtual environment
hooks: $(STAMP)
	$(BIN)/pre-commit install

repro: $(STAMP)
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/dvc repro

bench: $(STAMP)
	$(BIN)/python benchmarks/overhead.py

# The lock names torch==2.13.0 (no local tag) so it installs anywhere; while
# re-locking, the CPU build is put back as uv's preference, or uv would prefer the
# index's CUDA build and pull several GB of nvidia packages into the lock.
lock: $(STAMP)
	sed -i 's/^torch==2.13.0$$/torch==2.13.0+cpu/' requirements.lock
	$(BIN)/uv pip compile requirements.in --python-version 3.11 $(UV_FIND_LINKS_ARGS) --no-header -q -o requirements.lock
	sed -i 's/^torch==2.13.0+cpu/torch==2.13.0/' requirements.lock

clean-state:
	rm -rf .lepton
