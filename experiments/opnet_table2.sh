#!/usr/bin/env bash
# OpNet Table 2: Ablations of the method; every line is one change from OpNet BL (not cumulative).
# Rows run here (experiment presets): opnet, opnet_resnet18, opnet_no_landmarks, opnet_resnet18_no_landmarks, opnet_no_intensity, opnet_no_nll, opnet_no_rotation, opnet_rot5; protocols: aflw2000.
# Usage: experiments/opnet_table2.sh [--seeds 1,2,3] [--dry-run] [--only PRESET ...] [Hydra overrides, e.g. trainer=gpu]
# Re-entrant (finished jobs are skipped, failed ones re-run); then `make table`. See experiments/README.md.
set -euo pipefail
cd "$(dirname "$0")/.."
exec .venv/bin/python -m hpe_bench.grid opnet table2 "$@"
