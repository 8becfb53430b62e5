"""``python -m hpe_bench [overrides]`` / ``hpe-bench``: compose conf/config.yaml, fit, then test."""
import hydra
from omegaconf import DictConfig


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def _main(cfg: DictConfig) -> float | None:
    from hpe_bench.run import run  # imported late so --help and config errors answer fast
    return run(cfg)


def main() -> None:
    _main()


if __name__ == "__main__":
    main()
