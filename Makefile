# llm4all-recipes — one environment (.venv) from the committed lock file (constraints.txt).
#   make demo    fresh machine: create .venv, install, run the offline demo on the tiny default
#   make test    the test suite (CI runs it through .ci/run)

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed
# pip 23 (Python 3.11's bundled pip) cannot resolve huggingface-hub's `hf_xet` extra: pin a recent one.
PIP_VERSION ?= 26.3
TORCH_VERSION ?= 2.13.0
PYTEST_ARGS ?=
# one pytest worker per core of the 2-core CI machine (each worker builds the session's tiny model once)
TEST_WORKERS ?= 2

export HF_HUB_DISABLE_TELEMETRY := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install demo test quality style bench lock clean help

help:
	@echo "make demo | test | install | quality | style | bench | lock | clean"

$(STAMP): setup.cfg pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --disable-pip-version-check "pip==$(PIP_VERSION)"
	@# torch first, from its CPU build: a plain `torch` requirement would pull a multi-GB CUDA build
	$(PIP) install -q "torch==$(TORCH_VERSION)"
	$(PIP) install -q -c constraints.txt -e ".[dev,eval]"
	@# lighteval downloads tinyBenchmarks.pkl at import unless the file exists: write a placeholder
	$(PY) -c "import importlib.util, pathlib; p = pathlib.Path(importlib.util.find_spec('lighteval').origin).parent / 'tasks' / 'tasks' / 'tinyBenchmarks.pkl'; p.exists() or p.write_bytes(b'')"
	$(PIP) check
	touch $(STAMP)

install: $(STAMP)

# One thread per process: on 2 cores, torch's 2 threads slow down 20-50x as soon as anything else runs.
demo: install
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} HF_HUB_OFFLINE=1 $(VENV)/bin/llm4all demo

test: install
	OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 $(PY) -m pytest -q -n $(TEST_WORKERS) --durations=20 $(PYTEST_ARGS) tests

quality: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/llm4all validate recipes

style: install
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

# Benchmarks write docs/BENCHMARKS.md (each section with its command). They need the demo's outputs.
# The French benchmark model and the benchmarks on it (healing.py, fused.py, forgetting.py): see
# benchmarks/README.md (a ~1 h CPU training, then each script's command in docs/BENCHMARKS.md).
bench: demo
	$(PY) benchmarks/memory_estimate.py --write-docs
	OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 $(PY) benchmarks/compression.py --model outputs/tiny-llama/tiny-model/base \
		--text tests/fixtures/text/old_train.jsonl --eval tests/fixtures/text/old_eval.jsonl --name tiny-llama --write-docs
	OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 $(PY) benchmarks/kd.py --write-docs

# Refresh the lock after changing install_requires (review the diff before committing).
lock: install
	{ sed -n '1,3p' constraints.txt; $(PIP) freeze --exclude-editable | sed 's/^torch==\(.*\)+cpu$$/torch==\1/'; } > constraints.txt.new
	mv constraints.txt.new constraints.txt

clean:
	rm -rf outputs hub .pytest_cache .ruff_cache
