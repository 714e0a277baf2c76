# snapshotd developer tasks. `make test` and `make run` work on a fresh clone.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install run test lint lint-deploy bench bench-quick clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

# The demo's bounded-state workflow is configured, so `snapshotd demo` against this
# daemon compares it with the step log.
run: install
	SNAPSHOTD_WORKFLOWS__DEMO_KV__REDUCER=last_by_key $(BIN)/snapshotd serve

test: install
	$(BIN)/python -m pytest

lint: install
	$(BIN)/ruff check service tests bench
	$(BIN)/ruff format --check service tests bench
	$(BIN)/mypy

# The Dockerfile, manifests, compose file, unit, alert rules and dashboard, checked offline.
lint-deploy: install
	$(BIN)/python -m pytest -q tests/test_deploy.py tests/test_dashboards.py

# The bench extra (eventsourcing, psycopg, matplotlib) is only needed here.
BENCH_STAMP := $(VENV)/.installed-bench

$(BENCH_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev,bench]'
	touch $(BENCH_STAMP)

bench: $(BENCH_STAMP)
	$(BIN)/python -m bench

bench-quick: $(BENCH_STAMP)
	$(BIN)/python -m bench --quick

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
