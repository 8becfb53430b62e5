#!/usr/bin/env bash
# TRG Table 6: Translation estimation strategies (img2pose's local-to-global, CLIFF's camera space offset) vs TRG's correction parameters.
# Rows run here (experiment presets): trg_local_to_global, trg_camera_offset, trg; protocols: arkitface, biwi_6dof.
# Usage: experiments/trg_table6.sh [--seeds 1,2,3] [--dry-run] [--only PRESET ...] [Hydra overrides, e.g. trainer=gpu]
# Re-entrant (finished jobs are skipped, failed ones re-run); then `make table`. See experiments/README.md.
set -euo pipefail
cd "$(dirname "$0")/.."
exec .venv/bin/python -m hpe_bench.grid trg table6 "$@"
