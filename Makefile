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

.PHONY: install demo test test-fast bench repro lock clean-state help browser

help:
	@echo "make demo   - set up (first time) and run the retraining loop on the bundled digits"
	@echo "make test   - set up (first time) and run the whole test suite"
	@echo "make repro  - dvc repro: prepare -> train -> evaluate from params.yaml, no Prefect"
	@echo "make bench  - run benchmarks/overhead.py"
	@echo "make lock   - re-pin requirements.lock from requirements.in"

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

test: $(STAMP) browser
	$(BIN)/lint-imports --no-cache
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python -m pytest $(PYTEST_ARGS)

test-fast: $(STAMP)
	$(BIN)/lint-imports --no-cache
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

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
