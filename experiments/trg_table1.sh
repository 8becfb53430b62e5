#!/usr/bin/env bash
# TRG Table 1: Ablation of TRG on ARKitFace and BIWI (bidirectional interaction, correction parameter, face geometry, landmark-to-image alignment; MS = multi-scale features).
# Rows run here (experiment presets): trg_iter1_single, trg_iter2_single, trg_iter3_single, trg_t_prediction, trg_landmark_free, trg_grid_sampled, trg; protocols: arkitface, biwi_6dof.
# Usage: experiments/trg_table1.sh [--seeds 1,2,3] [--dry-run] [--only PRESET ...] [Hydra overrides, e.g. trainer=gpu]
# Re-entrant (finished jobs are skipped, failed ones re-run); then `make table`. See experiments/README.md.
set -euo pipefail
cd "$(dirname "$0")/.."
exec .venv/bin/python -m hpe_bench.grid trg table1 "$@"
