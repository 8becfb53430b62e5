#!/usr/bin/env bash
# A paper table at CPU size: OpNet Table 2's "OpNet BL" (MobileNet) and "- NLL" rows (+ "ResNet18" by MINI_ROWS) on the embedded
# synthetic dataset (debug=mini: 4,000 / 256 / 512 images, 96 px crops, 250 steps of 32, the paper's recipe
# otherwise), 2 seeds, then the table beside the published AFLW2000-3D column (synthetic stands in for it;
# per-axis errors under the OpNet Euler rule, as the paper scores AFLW2000-3D).
# Usage: experiments/mini_opnet_table2.sh [--seeds 1,2] [--dry-run] [Hydra overrides for every job]
#   MINI_ROOT=<dir> (default outputs/mini/opnet_table2) holds the runs, table.md and tables/opnet_table2.*
#   MINI_ROWS="opnet opnet_no_nll" (default; add opnet_resnet18 for the ResNet18 row, not timed): the rows run
# Re-entrant like every grid (finished jobs are skipped). About 13 minutes on 2 idle CPU cores (README).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
ROOT=${MINI_ROOT:-outputs/mini/opnet_table2}
read -r -a ROWS <<< "${MINI_ROWS:-opnet opnet_no_nll}"
status=0
"$PY" -m hpe_bench.grid opnet table2 --root "$ROOT" --seeds 1,2 --protocol aflw2000=synthetic \
    data=synthetic debug=mini euler_rule=opnet "$@" --only "${ROWS[@]}" || status=$?  # --only last: it takes every word after it
case " $* " in *" --dry-run "*) exit $status ;; esac
if [ -d "$ROOT" ]; then
    "$PY" -m hpe_bench.table "$ROOT" --out "$ROOT/table.md" --paper opnet --table table2 \
        --protocol aflw2000=synthetic --paper-dir "$ROOT/tables" || status=$?
fi
exit $status
