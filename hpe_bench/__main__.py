"""``python -m hpe_bench [overrides]`` / ``hpe-bench``: compose conf/config.yaml, fit, then test."""
import os
from pathlib import Path

import hydra
from omegaconf import DictConfig

# An absolute path, so that the console script and `python -m` find the same conf/ (Hydra would read a
# relative path as a Python package when called through the `hpe-bench` entry point). The suite is meant
# to be installed editable from its checkout; HPE_BENCH_CONF points elsewhere if needed.
CONF_DIR = os.environ.get("HPE_BENCH_CONF", str(Path(__file__).resolve().parents[1] / "conf"))


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="config")
def _main(cfg: DictConfig) -> float | None:
    from hpe_bench.run import run  # imported late so --help and config errors answer fast
    return run(cfg)


def main() -> None:
    _main()


if __name__ == "__main__":
    main()
