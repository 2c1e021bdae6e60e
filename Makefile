# sam-train: every target sets up .venv first when needed (uv, from the committed uv.lock).
VENV := .venv
PYTHON ?= python3
# uv from PATH, else a private copy in UV_BOOTSTRAP: `pip install uv` into the system Python is
# refused on PEP 668 systems (Debian, Ubuntu: "externally-managed-environment").
UV_BOOTSTRAP := .uv-bootstrap
SYSTEM_UV := $(shell command -v uv 2>/dev/null)
UV := $(or $(SYSTEM_UV),$(UV_BOOTSTRAP)/bin/uv)
PYTEST := $(VENV)/bin/pytest
# pytest-xdist workers: one per core, at most 4 (each imports torch; each keeps one thread).
# GNU nproc reports OMP_NUM_THREADS as the core count: `OMP_NUM_THREADS=1 make test` would run
# one worker, so it is asked without it.
TEST_WORKERS ?= $(shell n=$$(env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc 2>/dev/null || echo 2); [ $$n -gt 4 ] && n=4; echo $$n)

.PHONY: install quickstart test test-fast lint format bench clean

install: $(VENV)/.installed

# --compile-bytecode: the first run would otherwise sit silent for 30-40 s compiling torch.
# --all-extras: the optional loggers, SLURM launcher and Optuna sweeper too, so their tests run.
$(VENV)/.installed: pyproject.toml uv.lock $(if $(SYSTEM_UV),,$(UV_BOOTSTRAP)/bin/uv)
	$(UV) sync --frozen --all-extras --compile-bytecode
	@touch $@

# A virtual environment of its own for uv. Without ensurepip (Debian without python3-venv) the
# environment is made without pip and filled by the system's pip (`pip --python`, pip >= 22.3).
$(UV_BOOTSTRAP)/bin/uv:
	@echo "uv is not on PATH: installing it into $(UV_BOOTSTRAP)/ (delete it to reinstall)"
	@if $(PYTHON) -m venv $(UV_BOOTSTRAP) >/dev/null 2>&1; then \
		$(UV_BOOTSTRAP)/bin/python -m pip install --quiet --disable-pip-version-check uv; \
	elif $(PYTHON) -m venv --clear --without-pip $(UV_BOOTSTRAP) \
		&& $(PYTHON) -m pip --version >/dev/null 2>&1; then \
		$(PYTHON) -m pip --python $(UV_BOOTSTRAP)/bin/python install --quiet uv; \
	else \
		echo "cannot install uv: $(PYTHON) has neither ensurepip nor pip; install uv" \
			"(https://docs.astral.sh/uv/getting-started/installation/) or python3-venv" >&2; \
		exit 1; \
	fi
	@test -x $@ || { echo "uv did not install into $(UV_BOOTSTRAP)/" >&2; exit 1; }

quickstart: install
	$(VENV)/bin/sam-train experiment=quickstart

# One thread: the tests run processes side by side on shared cores (two threads each would
# spin-wait), and resumed runs are compared bit for bit with a reference of the same threads.
# --dist worksteal: a worker that runs out takes tests off the end of the other's queue, and
# conftest.py puts the files that start processes first, so a long test never runs last alone.
test: install
	OMP_NUM_THREADS=1 $(PYTEST) -q -n $(TEST_WORKERS) --dist worksteal

test-fast: install
	OMP_NUM_THREADS=1 $(PYTEST) -q -n $(TEST_WORKERS) --dist worksteal -m "not slow"

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: install
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

bench: install
	$(VENV)/bin/python -m scripts.bench --quick
	$(VENV)/bin/python -m scripts.bench --quick --sections hot_path --workloads resnet50 --out outputs/bench/resnet50  # SAM's bookkeeping share
	$(VENV)/bin/python -m scripts.bench --quick --sections ratio --reps 21 --out outputs/bench/ratio21  # SAM/base within 1.5%: 7 pairs cannot resolve it on the small workloads

clean:
	rm -rf $(VENV) $(UV_BOOTSTRAP) outputs multirun .pytest_cache .ruff_cache
