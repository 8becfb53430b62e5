#!/usr/bin/env bash
# TRG Table 7: Ablation of the bounding box information I_bbox given to the face regressor.
# Rows run here (experiment presets): trg_no_bbox_info, trg_no_box_size, trg; protocols: arkitface, biwi_6dof.
# Usage: experiments/trg_table7.sh [--seeds 1,2,3] [--dry-run] [--only PRESET ...] [Hydra overrides, e.g. trainer=gpu]
# Re-entrant (finished jobs are skipped, failed ones re-run); then `make table`. See experiments/README.md.
set -euo pipefail
cd "$(dirname "$0")/.."
exec .venv/bin/python -m hpe_bench.grid trg table7 "$@"
