# One command per job; CI (.ci/run) calls `make demo` and `make test` in a fresh clone (`make fresh`).
# The test tiers are described in CONTRIBUTING.md.
.PHONY: setup node demo test test-random lint typecheck unit integration e2e coverage bench lock latest fresh \
	deploy-files

# The Python that creates the project's virtualenv; every command below runs in that virtualenv.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PY := $(BIN)/python
# The exact uv that installs the lock; the lock lists it too, so `uv sync` keeps it in the virtualenv.
UV_VERSION := 0.13.8
# uv uses the Python of the virtualenv and never downloads one of its own.
export UV_PYTHON_DOWNLOADS := never
export UV_PROJECT_ENVIRONMENT := $(abspath $(VENV))

# Some machines set PYTHONDONTWRITEBYTECODE; the tests then recompile every module and redo pytest's assertion
# rewriting in every worker on every run (about 6 s of each run's start here). Let the recipes cache them.
unexport PYTHONDONTWRITEBYTECODE
# Tests run in parallel, one worker per core (pytest-xdist); worksteal evens out the few long e2e tests.
# Every test isolates itself (its own Redis key prefix, ports and temporary directory). JOBS=0 runs them in one process.
JOBS ?= auto
# ORDER=random shuffles the tests (pytest-randomly; the seed is printed, `-p randomly --randomly-seed=N` repeats it).
ORDER ?= file
ifeq ($(ORDER),random)
ORDER_FLAGS := -p randomly
else
ORDER_FLAGS := -p no:randomly
endif
PYTEST := $(PY) -m pytest -q -n $(JOBS) --dist worksteal -p no:faker $(ORDER_FLAGS)
# Unmarked tests: pure code, Redis, the simulator alone (about 25 s here on 2 cores). The markers are in pyproject.toml.
UNIT := not integration and not e2e and not slow
# The unit tier runs two workers per core: its tests wait on Redis, the simulator and the clock more than they compute
# (one worker per core left the cores idle a third of the time: 33 s against 25 s here). JOBS=N still decides.
UNIT_JOBS := $(if $(filter auto,$(JOBS)),$(shell n=$$(nproc 2>/dev/null || echo 1); echo $$((2 * n))),$(JOBS))

# The project's virtualenv with exactly what uv.lock says (the package editable, its extras, the dev group).
# Re-run when the lock or the project file changes; never touches the system Python.
setup: $(VENV)/.synced
$(VENV)/.synced: pyproject.toml uv.lock $(BIN)/uv
	$(BIN)/uv sync --locked --python $(PY) --quiet
	@touch $@
$(BIN)/uv:
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check uv==$(UV_VERSION)

# openai-node, the client of a few e2e tests, from its lock file; without Node those tests are skipped (one line).
node:
	@if command -v npm >/dev/null 2>&1 && command -v node >/dev/null 2>&1; then \
	  if [ ! -f tests/node/node_modules/.package-lock.json ] || [ tests/node/package-lock.json -nt tests/node/node_modules/.package-lock.json ]; then \
	    (cd tests/node && npm ci --no-audit --no-fund --loglevel=error); \
	  fi; \
	else \
	  echo "node: no Node.js/npm on PATH, the openai-node tests will be skipped"; \
	fi

demo: setup
	$(BIN)/hybrid-router demo

lint: setup
	$(BIN)/ruff check router tests bench
	$(BIN)/ruff format --check router tests bench
	$(BIN)/lint-imports

typecheck: setup
	$(BIN)/mypy

unit: setup
	$(PYTEST) -m '$(UNIT)' -n $(UNIT_JOBS)

integration: setup
	$(PYTEST) -m integration

e2e: setup node
	$(PYTEST) -m 'e2e or slow'

# Every tier, with line and branch coverage of router/ printed at the end (no threshold).
coverage: setup node
	$(PYTEST) --cov --cov-report=term

test: setup node lint typecheck coverage

# The whole suite once more in a random order, without coverage: order and timing dependencies show up here.
test-random: setup node
	$(MAKE) --no-print-directory ORDER=random _alltiers
_alltiers:
	$(PYTEST)

# The regression guard: what the router adds to a real-time call (p50/p99) and its CPU per call, against the simulator
# called directly in the same run (ratios, so a busy machine moves both sides). About 40 s; BENCH_ARGS adds flags.
# The whole comparison (both transports, longer windows, rounds) is `bench/realtime.py --help`.
BENCH_ARGS ?=
bench: setup
	$(PY) bench/realtime.py --transport aiohttp --duration 6 --warmup 1 --concurrency 32 --latency-ms 50 --pin \
	  --guard $(BENCH_ARGS)

# The Kubernetes manifests (deploy/kubernetes, docs/deploy.md) build their ConfigMaps from copies of the config, the
# price table, the policies and the Grafana dashboard: kustomize reads no file outside a kustomization's directory.
# Run this after changing any of them (tests/test_deploy_kubernetes.py fails while a copy differs); a new policy
# file also needs its line in deploy/kubernetes/base/kustomization.yaml, which the same test names.
K8S := deploy/kubernetes
deploy-files:
	mkdir -p $(K8S)/base/files/policies $(K8S)/components/monitoring
	cp config/router.yaml config/pricing.yaml $(K8S)/base/files/
	rm -f $(K8S)/base/files/policies/*.yaml
	cp policies/*.yaml $(K8S)/base/files/policies/
	cp config/grafana/dashboards/hybrid-router.json $(K8S)/components/monitoring/

# Update the lock after changing a dependency in pyproject.toml (or to take newer versions: `make lock ARGS=--upgrade`).
lock: $(BIN)/uv
	$(BIN)/uv lock --python $(PY) $(ARGS)

# The newest versions pyproject.toml allows, in a throwaway clone of HEAD: lint, types and the unit tier. Drift shows up here
# before it reaches a new user's `make setup`; CI runs it and reports it without failing.
latest:
	@set -e; dir=$$(mktemp -d); trap 'rm -rf "$$dir"' EXIT; \
	git clone -q "$(CURDIR)" "$$dir/repo"; \
	cd "$$dir/repo" && $(MAKE) --no-print-directory lock ARGS=--upgrade >/dev/null && \
	$(MAKE) --no-print-directory setup lint typecheck unit

# The README's two commands as a new user runs them: a clone of the committed HEAD in a temporary directory, a new
# virtualenv, an empty HOME and no package caches. `make fresh PYTHON=python3.13 RUN="make demo && make unit"` varies it.
RUN ?= make demo && make test
fresh:
	@set -e; dir=$$(mktemp -d); trap 'rm -rf "$$dir"' EXIT; \
	git clone -q "$(CURDIR)" "$$dir/repo"; mkdir -p "$$dir/home"; \
	echo "fresh: $$(git rev-parse --short HEAD) in $$dir/repo, HOME=$$dir/home, Python $$($(PYTHON) -c 'import sys; print(sys.version.split()[0])')"; \
	cd "$$dir/repo" && env -u PIP_FIND_LINKS -u VIRTUAL_ENV HOME="$$dir/home" XDG_CACHE_HOME="$$dir/home/.cache" \
	  UV_CACHE_DIR="$$dir/home/.cache/uv" PIP_NO_CACHE_DIR=1 npm_config_cache="$$dir/home/.npm" \
	  PYTHON="$$(command -v $(PYTHON))" MAKEFLAGS= MAKELEVEL= sh -c 'set -e; $(RUN)'
