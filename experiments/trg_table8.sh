#!/usr/bin/env bash
# TRG Table 8: Ablation of the loss terms, evaluated on BIWI.
# Rows run here (experiment presets): trg_no_rot, trg_no_cam, trg_no_landmarks, trg; protocols: biwi_6dof.
# Usage: experiments/trg_table8.sh [--seeds 1,2,3] [--dry-run] [--only PRESET ...] [Hydra overrides, e.g. trainer=gpu]
# Re-entrant (finished jobs are skipped, failed ones re-run); then `make table`. See experiments/README.md.
set -euo pipefail
cd "$(dirname "$0")/.."
exec .venv/bin/python -m hpe_bench.grid trg table8 "$@"
