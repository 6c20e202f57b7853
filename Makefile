# One command per job; CI (.ci/run) calls `make test`. The test tiers are described in CONTRIBUTING.md.
.PHONY: setup demo test lint typecheck unit integration e2e coverage bench

PYTHON ?= python3
# Some machines set PYTHONDONTWRITEBYTECODE; the tests then recompile every module and redo pytest's assertion
# rewriting in every worker on every run (about 6 s of each run's start here). Let the recipes cache them.
unexport PYTHONDONTWRITEBYTECODE
# Tests run in parallel, one worker per core (pytest-xdist); worksteal evens out the few long e2e tests.
# Every test isolates itself (its own Redis key prefix, ports and temporary directory). JOBS=0 runs them in one process.
JOBS ?= auto
PYTEST := $(PYTHON) -m pytest -q -n $(JOBS) --dist worksteal -p no:faker
# Unmarked tests: pure code, Redis, the simulator alone (about 33 s here on 2 cores). The markers are declared in pyproject.toml.
UNIT := not integration and not e2e and not slow

setup:
	$(PYTHON) -m pip install -e '.[dev]'

demo: setup
	hybrid-router demo

lint:
	ruff check router tests bench
	ruff format --check router tests bench
	lint-imports

typecheck:
	mypy

unit:
	$(PYTEST) -m '$(UNIT)'

integration:
	$(PYTEST) -m integration

e2e:
	$(PYTEST) -m 'e2e or slow'

# Every tier, with line and branch coverage of router/ printed at the end (no threshold).
coverage:
	$(PYTEST) --cov --cov-report=term

test: setup lint typecheck coverage

bench:
	$(PYTHON) bench/realtime.py
