# The two commands of the README. Each makes its own virtual environment on first use.
#   make demo   run the whole job on the embedded tiny model (CPU, no download of weights)
#   make test   run the test suite
# TORCH: the PyTorch requirement. Users: leave it, or pass the CUDA build you want, e.g.
#   make demo TORCH="torch==2.9.1 torchvision==0.24.1"
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch torchvision
PY := $(VENV)/bin/python

.PHONY: demo test lint bench gpu-proof clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH)
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

demo: $(VENV)/.installed
	$(PY) -m zirelia_local.train configs/demo.toml

test: $(VENV)/.installed
	$(PY) -m ruff check
	$(PY) -m pytest

lint: $(VENV)/.installed
	$(PY) -m ruff check

bench: $(VENV)/.installed
	$(PY) benchmarks/run_all.py

# On one CUDA GPU: FLUX.1-dev-shaped random weights, every stage measured (--quick, at most 8 min on an H100);
# writes docs/benchmarks-gpu.md. `make gpu-proof ARGS=--full` for every case. See benchmarks/README.md.
gpu-proof: $(VENV)/.installed
	$(PY) benchmarks/gpu_proof.py $(ARGS)

clean:
	rm -rf $(VENV) runs/demo
