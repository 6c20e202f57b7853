# One command per job; CI (.ci/run) calls `make test`.
.PHONY: setup demo test lint typecheck unit bench

setup:
	python3 -m pip install -e '.[dev]'

demo: setup
	hybrid-router demo

lint:
	ruff check router tests bench
	ruff format --check router tests bench
	lint-imports

typecheck:
	mypy

unit:
	python3 -m pytest -q

test: setup lint typecheck unit

bench:
	python3 bench/realtime.py
