# Two commands for a newcomer: `make run` and `make test`. Everything else is for the team.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export PYTHONDONTWRITEBYTECODE := 1

.PHONY: run test lint bench bench-admin soak migrate check-config clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	@touch $(STAMP)

run: $(STAMP)
	$(BIN)/python -m edge migrate
	$(BIN)/python -m edge serve

migrate: $(STAMP)
	$(BIN)/python -m edge migrate

check-config: $(STAMP)
	$(BIN)/python -m edge check-config

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check edge plugins tests bench
	$(BIN)/ruff format --check edge plugins tests bench
	$(BIN)/mypy

bench: $(STAMP)
	$(BIN)/python -m bench $(BENCH_ARGS)

# Issue 19: GET /api/admin/overview over a million usage rows on MariaDB (bench/overview.py).
bench-admin: $(STAMP)
	$(BIN)/python -m bench.overview $(BENCH_ARGS)

# Issue 7's memory check: five minutes of mixed load on the full chain, then `reconcile`.
soak: $(STAMP)
	$(BIN)/python -m bench --targets full --cases "" --soak 300 --json var/bench/soak.json $(BENCH_ARGS)

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache
