"""``python -m hpe_bench [overrides]`` / ``hpe-bench``: compose conf/config.yaml, fit, then test.

``hpe-bench predict|score|show|stability|import-checkpoint|retest ...`` run the tools of those modules (their ``--help``)."""
import os
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

# An absolute path, so that the console script and `python -m` find the same conf/ (Hydra would read a
# relative path as a Python package when called through the `hpe-bench` entry point). The suite is meant
# to be installed editable from its checkout; HPE_BENCH_CONF points elsewhere if needed.
CONF_DIR = os.environ.get("HPE_BENCH_CONF", str(Path(__file__).resolve().parents[1] / "conf"))


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="config")
def _main(cfg: DictConfig) -> float | None:
    from hpe_bench.jobs import run_task  # imported late so --help and config errors answer fast
    return run_task(cfg)


# `hpe-bench <command> ...` runs a tool instead of training; anything else is Hydra overrides for a run.
COMMANDS = {"predict": "hpe_bench.predict", "score": "hpe_bench.score", "show": "hpe_bench.show",
            "import-checkpoint": "hpe_bench.import_checkpoint", "stability": "hpe_bench.stability",
            "retest": "hpe_bench.retest"}


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] in COMMANDS:
        import importlib
        raise SystemExit(importlib.import_module(COMMANDS[sys.argv[1]]).main(sys.argv[2:]))
    _main()


if __name__ == "__main__":
    main()
