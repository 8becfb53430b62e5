"""hpe_bench: a PyTorch Lightning + Hydra benchmark suite for head pose estimation."""
from omegaconf import OmegaConf

__version__ = "0.1.0"


def experiment_choice(*, _root_=None) -> str:
    """``${hpe_bench.experiment:}`` (conf/config.yaml ``experiment_name``): the name of the chosen
    ``experiment=`` preset, ``"default"`` without one.

    Read from the config's own ``hydra`` node where it has one (``compose(..., return_hydra_config=True)``,
    Hydra resolving its run directory), else from the running job's ``HydraConfig`` (the job's config has no
    ``hydra`` node); Hydra's ``${hydra:...}`` resolver only knows the latter and has no default for "none".
    """
    choice = OmegaConf.select(_root_, "hydra.runtime.choices.experiment") if _root_ is not None else None
    if choice is None:
        from hydra.core.hydra_config import HydraConfig
        if HydraConfig.initialized():
            choice = HydraConfig.get().runtime.choices.get("experiment")
    return "default" if choice is None else str(choice)


def gpu_precision() -> str:
    """``${hpe_bench.gpu_precision:}`` (conf/trainer/gpu.yaml): ``hardware.gpu_precision``."""
    from .hardware import gpu_precision as policy
    return policy()


def fast_precision(accelerator: str = "auto") -> str:
    """``${hpe_bench.fast_precision:<accelerator>}`` (conf/trainer/fast.yaml): ``hardware.fast_precision``
    (on a CPU ``measure``: the run times its own step in each candidate precision, ``hpe_bench/precision.py``)."""
    from .hardware import fast_precision as policy
    return policy(str(accelerator))


def slurm_gpus(accelerator: str = "auto", devices=1):
    """``${hpe_bench.slurm_gpus:${trainer.accelerator},${trainer.devices}}`` (conf/hydra/launcher/slurm.yaml
    ``gpus_per_node``): no GPU request when the trainer runs on the CPU (a CPU partition has no gres to give:
    ``sbatch: error: Invalid generic resource (gres) specification``), else one GPU per device."""
    return 0 if str(accelerator).lower() == "cpu" else devices


def loader_workers(default: int = 2) -> int:
    """``${hpe_bench.loader_workers:2}`` (``data.num_workers`` of the data options): inside a SLURM job the
    CPUs it was given less one for the training process (``SLURM_CPUS_PER_TASK`` - 1, so
    ``hydra.launcher.cpus_per_task`` sets the loader workers), elsewhere ``default``."""
    import os
    try:
        cpus = int(os.environ["SLURM_CPUS_PER_TASK"])
    except (KeyError, ValueError):
        return int(default)
    return max(0, cpus - 1)


# Registered on import of the package, which `python -m hpe_bench`, `hpe-bench` and every module import first.
OmegaConf.register_new_resolver("hpe_bench.experiment", experiment_choice, replace=True)
OmegaConf.register_new_resolver("hpe_bench.gpu_precision", gpu_precision, replace=True)
OmegaConf.register_new_resolver("hpe_bench.fast_precision", fast_precision, replace=True)
OmegaConf.register_new_resolver("hpe_bench.slurm_gpus", slurm_gpus, replace=True)
OmegaConf.register_new_resolver("hpe_bench.loader_workers", loader_workers, replace=True)
