#!/usr/bin/env bash
# TRG Table 5: Face size error on the ARKitFace test set (mm²).
# Rows run here (experiment presets): trg_arkit, trg; protocols: arkitface.
# Usage: experiments/trg_table5.sh [--seeds 1,2,3] [--dry-run] [--only PRESET ...] [Hydra overrides, e.g. trainer=gpu]
# Re-entrant (finished jobs are skipped, failed ones re-run); then `make table`. See experiments/README.md.
set -euo pipefail
cd "$(dirname "$0")/.."
exec .venv/bin/python -m hpe_bench.grid trg table5 "$@"
