#!/usr/bin/env bash
# TRG Table 4: 6DoF head pose on BIWI (test only, never trained on).
# Rows run here (experiment presets): trg_arkit, trg; protocols: biwi_6dof.
# Usage: experiments/trg_table4.sh [--seeds 1,2,3] [--dry-run] [--only PRESET ...] [Hydra overrides, e.g. trainer=gpu]
# Re-entrant (finished jobs are skipped, failed ones re-run); then `make table`. See experiments/README.md.
set -euo pipefail
cd "$(dirname "$0")/.."
exec .venv/bin/python -m hpe_bench.grid trg table4 "$@"
