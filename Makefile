# rescue_gpu: set-up, tests, demo and benchmarks.  `make demo` and `make test` work on a fresh machine.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
# The torch/torchvision pair that installs on our machines (CPU use; CUDA build).
TORCH_PINS ?= torch==2.14.1 torchvision==0.29.1
DEMO_OUT ?= demo-out

.PHONY: install test demo bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_PINS)
	$(PY) -m pip install -q -e '.[dev]' $(TORCH_PINS)
	touch $@

test: install
	$(PY) -m pytest -q

demo: install
	$(VENV)/bin/rescue demo --out $(DEMO_OUT)
	$(VENV)/bin/rescue cells demo --out $(DEMO_OUT)/cells

bench: install
	$(PY) benchmarks/bench_fcs.py
	$(PY) benchmarks/bench_simulate.py
	$(PY) benchmarks/bench_projection.py
	$(PY) benchmarks/bench_engine.py
	$(PY) benchmarks/bench_cohort.py
	$(PY) benchmarks/bench_cells.py --e2e

clean:
	rm -rf $(VENV) $(DEMO_OUT) .pytest_cache
