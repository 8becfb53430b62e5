#!/usr/bin/env bash
# OpNet Table 3: Ablation of the training distribution.
# Rows run here (experiment presets): opnet_300wlp, opnet, opnet_blfs; protocols: aflw2000.
# Usage: experiments/opnet_table3.sh [--seeds 1,2,3] [--dry-run] [--only PRESET ...] [Hydra overrides, e.g. trainer=gpu]
# Re-entrant (finished jobs are skipped, failed ones re-run); then `make table`. See experiments/README.md.
set -euo pipefail
cd "$(dirname "$0")/.."
exec .venv/bin/python -m hpe_bench.grid opnet table3 "$@"
