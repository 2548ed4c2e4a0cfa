# Every target creates .venv and installs what it needs when missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-dev
# NO_MKDOCS_2_WARNING: Material's banner about its successor, printed on every build.
MKDOCS := NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs

.PHONY: demo test check docs bench gpu-check clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/scoring demo --dir demo

test: $(STAMP)
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

check: $(STAMP)
	$(BIN)/ruff check scoring jobs tests bench docs
	$(BIN)/ruff format --check scoring jobs tests bench docs
	$(BIN)/mypy
	$(MKDOCS) build --strict -d .site-check

# The site under docs/, into site/ (open site/index.html). Not -q: under -q, --strict lets warnings pass.
docs: $(STAMP)
	$(MKDOCS) build --strict -d site

bench: $(STAMP)
	$(BIN)/python bench/bench.py $(BENCH_ARGS)

# On a machine with an NVIDIA GPU: swaps onnxruntime for onnxruntime-gpu in .venv, then checks.
gpu-check: $(STAMP)
	$(BIN)/python -c "import onnxruntime as o, sys; sys.exit('CUDAExecutionProvider' not in o.get_available_providers())" \
	  || ($(BIN)/python -m pip uninstall -q -y onnxruntime && $(BIN)/python -m pip install -q -e '.[gpu]')
	$(BIN)/python bench/gpu_check.py $(GPU_CHECK_ARGS)

clean:
	rm -rf $(VENV) .venv-peers demo bench-data site .site-check .pytest_cache .mypy_cache .ruff_cache
