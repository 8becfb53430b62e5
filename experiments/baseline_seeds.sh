#!/usr/bin/env bash
# The direct-regression baseline on the synthetic dataset over three seeds; then `make table`.
# Extra arguments are passed to Hydra, e.g. `trainer=gpu trainer.max_steps=20000`.
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/python -m hpe_bench -m experiment=demo seed=1,2,3 "$@"
