# rescue_gpu: set-up, tests, demo and benchmarks.  `make demo` and `make test` work on a fresh machine.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
# The torch/torchvision pair that installs on our machines (CPU use; CUDA build).
TORCH_PINS ?= torch==2.14.1 torchvision==0.29.1
DEMO_OUT ?= demo-out

# gpu-check: the one-shot check on the GPU machine (see ../shared/GPU.md); results under $(GPU_OUT).
GPU_OUT ?= $(if $(OUT),$(OUT),gpu-check-out)

.PHONY: install slurm-deps test test-main test-gpusim demo bench gpu-check clean

install: $(VENV)/.installed

# torch's CUDA build needs about 6 GB in the venv: say so up front rather than fail half-way.
$(VENV)/.installed: pyproject.toml
	@free=$$(df -Pk . | awk 'NR==2 {print $$4}'); if [ -n "$$free" ] && [ "$$free" -lt 7000000 ]; then \
	  echo "install: warning: only $$((free / 1048576)) GiB free here; the venv needs about 6 GiB and the tests about 2 GiB of temporary files" >&2; fi
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_PINS)
	$(PY) -m pip install -q -e '.[dev]' $(TORCH_PINS)
	touch $@

# A one-node SLURM for tests/test_slurm.py (marker slurm): Debian's slurmctld, slurmd and munge,
# installed only as root, where apt-get exists and slurmd is missing. Never fails the build:
# without the packages that test skips and says why.
slurm-deps:
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && ! command -v slurmd >/dev/null 2>&1 \
	    && [ ! -x /usr/sbin/slurmd ]; then \
	  echo "slurm-deps: apt-get install slurmctld slurmd slurm-client munge (log: /tmp/slurm-deps.log)"; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
	     slurmctld slurmd slurm-client munge) > /tmp/slurm-deps.log 2>&1 \
	    || echo "slurm-deps: apt-get failed (see /tmp/slurm-deps.log): tests/test_slurm.py will skip"; \
	fi; true

# Two pytest processes: the main run (gpusim deselected by addopts) and the GPU kernels in
# numba's CUDA simulator. Both always run; the target fails if either fails.
test: install slurm-deps
	@rc=0; \
	$(PY) -m pytest -q || rc=1; \
	NUMBA_ENABLE_CUDASIM=1 $(PY) -m pytest -q -m gpusim tests/test_gpusim.py || rc=1; \
	exit $$rc

test-main: install
	$(PY) -m pytest -q

test-gpusim: install
	NUMBA_ENABLE_CUDASIM=1 $(PY) -m pytest -q -m gpusim tests/test_gpusim.py

# No install step: the GPU machine has no network (wheels from .whl/, see GPU.md).
gpu-check:
	PYTHONUNBUFFERED=1 $(PYTHON) benchmarks/gpu_check.py --out $(GPU_OUT)

demo: install
	$(VENV)/bin/rescue demo --out $(DEMO_OUT)
	$(VENV)/bin/rescue cells demo --out $(DEMO_OUT)/cells

bench: install
	$(VENV)/bin/rescue bench --peer --json bench-out/bench.json --plot bench-out/bench.png
	$(PY) benchmarks/bench_fcs.py
	$(PY) benchmarks/bench_simulate.py
	$(PY) benchmarks/bench_projection.py
	$(PY) benchmarks/bench_engine.py
	$(PY) benchmarks/bench_cohort.py
	$(PY) benchmarks/bench_cells.py --e2e

clean:
	rm -rf $(VENV) $(DEMO_OUT) .pytest_cache gpu-check-out bench-out
