# hpe_bench — every command a user needs. `make demo` and `make test` set up .venv first if needed.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
# GPU users: make setup TORCH="torch==2.5.1 torchvision==0.20.1 --index-url https://download.pytorch.org/whl/cu124"
TORCH  ?= torch==2.14.1 torchvision==0.29.1
STAMP  := $(VENV)/.installed
export WANDB_MODE ?= offline
export HF_HUB_OFFLINE ?= 1
export PYTHONUNBUFFERED := 1

.PHONY: setup demo test test-fast bench bench-gpu table figures grid slurm clean-cache help export bench-latency mini

help:
	@echo "make demo    - set up if needed, train + test the baseline on the embedded synthetic dataset"
	@echo "make test    - set up if needed, run the test suite"
	@echo "make bench   - speed benchmarks, JSON + table (BENCH_ARGS=--quick); make bench-gpu on a GPU"
	@echo "make table   - outputs/table.md (every run, mean/std over seeds) + the paper tables beside the published"
	@echo "               numbers in outputs/tables/<paper>_<table>.md/.tex/.csv (TABLE_ARGS=\"--protocol arkitface=synthetic\")"
	@echo "make figures - the papers' figures from the runs under outputs/ into outputs/figures/ (PNG + PDF)"
	@echo "make grid PAPER=trg TABLE=table1 [SEEDS=1,2,3] [LAUNCHER=slurm] [GRID_ARGS=\"--dry-run trainer=gpu\"] - one paper table's runs"
	@echo "make slurm   - start a single-node SLURM here (root; installs slurm-wlm + munge): make grid LAUNCHER=slurm submits to it"
	@echo "make mini    - OpNet Table 2 (BL, - NLL) at CPU size on synthetic data, 2 seeds (~13 min on 2 idle cores)"
	@echo "make setup   - create $(VENV) (TORCH=... picks the torch build)"
	@echo "make export RUN=<run dir> [EXPORT_ARGS=int8=true] - ONNX model (+ int8) + JSON sidecar into <run dir>/export/"
	@echo "make bench-latency - batch-1 CPU latency, ONNX Runtime vs PyTorch, 2 threads"

setup: $(STAMP)

# Idempotent: the stamp depends on pyproject.toml, so changed dependencies reinstall.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -c "import torch, torchvision" 2>/dev/null || $(PY) -m pip install --quiet $(TORCH)
	$(PY) -m pip install --quiet -e ".[dev,deploy]"
	# `hpe-bench predict`'s face detector (MTCNN, weights inside the wheel); its metadata pins torch<2.3 and
	# numpy<2 although its MTCNN runs on current versions, hence --no-deps (docs/predict.md)
	$(PY) -m pip install --quiet --no-deps "facenet-pytorch==2.6.0"
	touch $(STAMP)

demo: setup
	$(PY) -m hpe_bench experiment=demo

test: setup
	$(PY) -m pytest -q tests

test-fast: setup
	$(PY) -m pytest -q -m "not slow" tests

# one JSON + table: generation, loader, train img/s (step and pipeline), eager/ONNX/int8 latency (docs/performance.md)
bench: setup
	$(PY) benchmarks/bench.py $(BENCH_ARGS)

bench-gpu: setup
	$(PY) benchmarks/bench_gpu.py $(BENCH_ARGS)

# make export RUN=outputs/runs/<exp>/<time> [EXPORT_ARGS="out=model.onnx outputs=quat,coord"]
export: setup
	@test -n "$(RUN)" || (echo "usage: make export RUN=outputs/runs/<exp>/<time>" && exit 2)
	$(PY) -m hpe_bench.export run_dir=$(RUN) $(EXPORT_ARGS)

bench-latency: setup
	$(PY) benchmarks/bench_latency.py $(BENCH_ARGS)

table: setup
	$(PY) -m hpe_bench.table outputs --out outputs/table.md --paper-dir outputs/tables $(TABLE_ARGS)

figures: setup
	$(PY) -m hpe_bench.figures --out outputs/figures all outputs

# Re-entrant: running it again skips finished jobs and retries failed ones (experiments/README.md).
# LAUNCHER=slurm submits every job through Hydra's submitit launcher (docs/cluster.md), e.g.
#   make grid PAPER=trg TABLE=table1 LAUNCHER=slurm GRID_ARGS="trainer=gpu hydra.launcher.partition=gpu"
SEEDS ?= 1,2,3
LAUNCHER ?= local
grid: setup
	@test -n "$(PAPER)" -a -n "$(TABLE)" || (echo "usage: make grid PAPER=opnet|trg TABLE=table1 [SEEDS=1,2,3] [LAUNCHER=local|slurm] [GRID_ARGS=...]" && exit 2)
	$(PY) -m hpe_bench.grid $(PAPER) $(TABLE) --seeds $(SEEDS) --launcher $(LAUNCHER) $(GRID_ARGS)

# A single-node SLURM on this machine (root; installs slurm-wlm + munge where missing): tests/test_slurm.py runs
# against it, `make grid LAUNCHER=slurm` submits to it (scripts/single_node_slurm.sh, docs/cluster.md)
slurm:
	scripts/single_node_slurm.sh start

# A paper table at CPU size (README): runs, then outputs/mini/opnet_table2/tables/opnet_table2.md
mini: setup
	experiments/mini_opnet_table2.sh $(MINI_ARGS)

clean-cache:
	rm -rf .cache/hpe_bench
