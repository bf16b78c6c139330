# The two quick-start commands. Each makes .venv on first use and installs what it needs:
# torch 2.13.0 first when the venv has no torch (a bare `torch` requirement would pull a
# multi-GB CUDA build), then Kiln itself with its extras.

VENV ?= .venv
PYTHON := $(VENV)/bin/python
STAMP := $(VENV)/.kiln-installed
BENCH_STAMP := $(VENV)/.kiln-bench-installed
PYTEST_WORKERS ?= 2

.PHONY: demo test bench lint format clean

demo: $(STAMP)
	$(PYTHON) examples/demo.py

test: $(STAMP)
	$(PYTHON) scripts/fetch_models.py
	$(PYTHON) -m ruff check .
	$(PYTHON) -m pytest -n $(PYTEST_WORKERS) -q

# The CPU benchmark suite (benchmarks/README.md); BENCH_ARGS=--quick for the reduced set.
bench: $(BENCH_STAMP)
	$(PYTHON) benchmarks/cpu_suite.py $(BENCH_ARGS)

lint: $(STAMP)
	$(PYTHON) -m ruff check .
	$(PYTHON) -m ruff format --check .

format: $(STAMP)
	$(PYTHON) -m ruff format .

$(STAMP): pyproject.toml
	test -x $(PYTHON) || python3 -m venv $(VENV)
	$(PYTHON) -c "import torch" 2>/dev/null || $(PYTHON) -m pip install --quiet torch==2.13.0
	$(PYTHON) -m pip install --quiet -e ".[torch,onnx,dev]"
	touch $(STAMP)

$(BENCH_STAMP): $(STAMP)
	$(PYTHON) -m pip install --quiet -e ".[torch,onnx,bench]"
	touch $(BENCH_STAMP)

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis .ruff_cache *.egg-info
