# The README's commands. Each creates the virtual environment first if needed.
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
FLWR_RUNTIME := alembic certifi cryptography fastapi grpcio grpcio-health-checking httpx iterators pathspec \
  prompt-toolkit protobuf pycryptodome pyyaml requests sqlalchemy starlette tomli tomli-w uv uvicorn
DATA ?= ../shared/data
export MATMETA_SHARED_DATA ?= $(DATA)

.PHONY: env demo test lint bench fuzz clean

env: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON) (Python 3.11)"; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch pinned first: the CPU build of 2.13.0 (an unpinned torch pulls a multi-GB CUDA build)
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -c constraints.txt -e ".[dev]"
	# flwr (matmeta federate) caps typer<0.21 and rich<15 for its own CLI, which matmeta does not use: it is
	# installed without resolving its requirements, and the runtime ones it needs are pinned in constraints.txt
	$(PY) -m pip install -q --no-deps flwr==1.42.0
	$(PY) -m pip install -q -c constraints.txt $(FLWR_RUNTIME)
	touch $(STAMP)

demo: $(STAMP)
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" bash scripts/demo.sh

lint: $(STAMP)
	$(VENV)/bin/ruff check matmeta tests scripts

test: $(STAMP) lint
	# two workers on two cores: one OpenMP thread each (two threads each oversubscribe the cores many times over)
	OMP_NUM_THREADS=1 $(PY) -m pytest -n 2 --dist loadgroup -q

# A long fuzz run (hypothesis, many random inputs; FUZZ_EXAMPLES in all): prints inputs tried, crashes, time.
FUZZ_EXAMPLES ?= 100000
fuzz: $(STAMP)
	OMP_NUM_THREADS=1 nice -n 10 $(PY) scripts/fuzz.py --examples $(FUZZ_EXAMPLES) --record out/fuzz

bench: $(STAMP)
	for r in recipes/ingest.toml recipes/engine.toml recipes/jmak.toml recipes/jmak_real.toml recipes/fewshot_perovskites.toml recipes/generate.toml recipes/explain.toml; do \
	  $(VENV)/bin/matmeta bench $$r || exit 1; done

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache out
