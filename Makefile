# sam-train: every target sets up .venv first when needed (uv, from the committed uv.lock).
VENV := .venv
UV := $(shell command -v uv 2>/dev/null || echo "python3 -m uv")
PYTEST := $(VENV)/bin/pytest

.PHONY: install quickstart test test-fast lint format bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml uv.lock
	@command -v uv >/dev/null 2>&1 || python3 -m uv --version >/dev/null 2>&1 || python3 -m pip install --quiet uv
	$(UV) sync --frozen
	@touch $@

quickstart: install
	$(VENV)/bin/sam-train experiment=quickstart

test: install
	$(PYTEST) -q

test-fast: install
	$(PYTEST) -q -m "not slow"

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: install
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

bench: install
	$(VENV)/bin/python scripts/bench.py --quick

clean:
	rm -rf $(VENV) outputs multirun .pytest_cache .ruff_cache
