# The two quick-start commands. Each makes .venv on first use and installs what it needs:
# torch 2.13.0 first when the venv has no torch (a bare `torch` requirement would pull a
# multi-GB CUDA build), then Kiln itself with its extras.

VENV ?= .venv
PYTHON := $(VENV)/bin/python
STAMP := $(VENV)/.kiln-installed
PYTEST_WORKERS ?= 2

.PHONY: demo test lint format clean

demo: $(STAMP)
	$(PYTHON) examples/demo.py

test: $(STAMP)
	$(PYTHON) scripts/fetch_models.py
	$(PYTHON) -m ruff check .
	$(PYTHON) -m pytest -n $(PYTEST_WORKERS) -q

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

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis .ruff_cache *.egg-info
