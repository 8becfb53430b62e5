"""Every option of every config group composes, and builds where it needs no data on disk."""
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException, MissingConfigException
from hydra.utils import instantiate
from omegaconf import OmegaConf

import hpe_bench  # noqa: F401  (registers ${hpe_bench.experiment:}, which experiment_name reads)

CONF = Path(__file__).resolve().parents[1] / "conf"
GROUPS = ["data", "model", "loss", "augment", "trainer", "logger", "callbacks", "experiment", "paths", "debug"]


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def compose_with(*overrides: str):
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF)):
        return compose("config", overrides=list(overrides), return_hydra_config=True)


def test_every_group_exists_and_has_options():
    for group in GROUPS:
        assert options(group), f"conf/{group} has no options"


@pytest.mark.parametrize("group,option", [(g, o) for g in GROUPS for o in options(g)])
def test_option_composes(group, option):
    cfg = compose_with(f"{group}={option}")
    OmegaConf.to_container(cfg, resolve=False)  # every interpolation parses
    assert cfg.hydra.runtime.choices[group] == option


@pytest.mark.parametrize("option", options("loss"))
def test_loss_builds(option):
    cfg = compose_with(f"loss={option}")
    loss = instantiate(cfg.loss)
    assert callable(loss)


@pytest.mark.parametrize("option", options("model"))
def test_model_builds(option):
    cfg = compose_with(f"model={option}")
    module = instantiate(cfg.model, loss=instantiate(cfg.loss))
    assert sum(p.numel() for p in module.parameters()) > 0


def test_model_picks_its_loss_but_command_line_wins():
    assert compose_with("model=direct_regression").hydra.runtime.choices["loss"] == "direct_regression"


def test_unknown_group_option_names_the_group():
    with pytest.raises((MissingConfigException, ConfigCompositionException)) as err:
        compose_with("model=no_such_model")
    assert "model" in str(err.value) and "no_such_model" in str(err.value)


def test_euler_rule_default_comes_from_data_protocol():
    cfg = compose_with()
    assert cfg.euler_rule is None and cfg.data.euler_rule in ("opnet", "trg")


def test_experiment_preset_overrides_root_values():
    cfg = compose_with("experiment=demo")
    assert cfg.experiment_name == "demo" and cfg.trainer.max_steps == 3000
    # make demo < 10 min on any CPU: the length is fitted to the measured step time (callbacks.TimeBudget), with
    # Lightning's max_time as a hard stop behind it
    assert cfg.callbacks.time_budget._target_ == "hpe_bench.callbacks.TimeBudget"
    assert cfg.callbacks.time_budget.seconds + 30 <= 600 and cfg.trainer.max_time == "00:00:09:00"
    assert cfg.model.net.backbone == "resnet10t" and cfg.model.crop.size == 64 and cfg.loss.rot_norm == "frobenius"
    # trainer=fast: the GPU's mixed precision, or "measure" on a CPU (the run times its own step: hpe_bench/precision.py)
    assert cfg.trainer.precision in ("bf16-mixed", "16-mixed", "measure")
    assert compose_with("experiment=demo", "trainer.max_steps=5").trainer.max_steps == 5  # command line wins


@pytest.mark.parametrize("preset", options("experiment"))
def test_experiment_name_is_the_preset_name(preset):
    """Also for presets that inherit another (opnet_300wlp lists `- opnet`): runs/<preset>/, W&B group <preset>."""
    assert compose_with(f"experiment={preset}").experiment_name == preset


def test_experiment_name_without_preset_is_default():
    assert compose_with().experiment_name == "default"
    assert compose_with("experiment_name=mine").experiment_name == "mine"  # still settable


def test_debug_shrinks_any_preset_and_the_command_line_still_wins():
    cfg = compose_with("experiment=opnet", "debug=default")
    assert cfg.trainer.max_steps == 2 and cfg.trainer.accelerator == "cpu" and cfg.data.num_workers == 0
    assert cfg.model.total_samples == 15_000_000  # the preset's length stays; max_steps=2 ends the run first
    assert cfg.hydra.runtime.choices["logger"] == "csv"
    assert "num_samples" not in cfg.data.train  # synthetic sizes only for data=synthetic
    cfg = compose_with("debug=default")
    assert (cfg.data.train.num_samples, cfg.data.val.num_samples, cfg.data.test.num_samples) == (24, 8, 20)
    cfg = compose_with("debug=default", "data.test.num_samples=6", "logger=none", "trainer=ddp")
    assert cfg.data.test.num_samples == 6 and cfg.hydra.runtime.choices["logger"] == "none"
    assert cfg.trainer.devices == 2  # debug keeps the trainer option's devices


def test_each_preset_states_its_length_once():
    """Samples (OpNet) or epochs (TRG), never a hand-computed step count (issue 9 item 5)."""
    for preset in options("experiment"):
        cfg = compose_with(f"experiment={preset}")
        by_samples = cfg.model.get("total_samples") is not None
        by_epochs = cfg.trainer.max_epochs not in (None, -1)
        if by_samples or by_epochs:
            assert by_samples != by_epochs and cfg.trainer.max_steps == -1, preset
    assert compose_with("experiment=opnet").model.total_samples == 15_000_000
    assert compose_with("experiment=trg").trainer.max_epochs == 30
    assert compose_with("experiment=trg_arkit").trainer.max_epochs == 30
