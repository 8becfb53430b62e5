"""Every option of every config group composes, and builds where it needs no data on disk."""
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException, MissingConfigException
from hydra.utils import instantiate
from omegaconf import OmegaConf

CONF = Path(__file__).resolve().parents[1] / "conf"
GROUPS = ["data", "model", "loss", "augment", "trainer", "logger", "callbacks", "experiment", "paths"]


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
    assert cfg.experiment_name == "demo" and cfg.trainer.max_steps == 700
    assert cfg.model.net.backbone == "resnet10t"
    assert compose_with("experiment=demo", "trainer.max_steps=5").trainer.max_steps == 5  # command line wins
