"""The config refactor of issue 9 (dataset sources composed through defaults lists, model YAMLs inheriting a
base) changed how configs are written, not what they build: every data option's resolved ``data`` node and every
model option's module/net/optimizer targets and kwargs equal the ones composed before the refactor
(tests/fixtures/configs_before_issue9.json). Keys left to a class default before and written out now (or the
reverse) count as equal: nodes are compared after filling in each ``_target_``'s signature defaults.
"""
import inspect
import json
import os
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra._internal.utils import _locate
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
BEFORE = json.loads((ROOT / "tests" / "fixtures" / "configs_before_issue9.json").read_text())
# The fixture was composed with each of these set to "$NAME", so it records which variable every node reads.
ENV = ["HPE_300WLP_ROOT", "HPE_AFLW2000_ROOT", "HPE_AFLW2KMINI", "HPE_ARKITFACE_ROOT", "HPE_BIWI_ROOT",
       "HPE_FACESYNTHETICS_ROOT", "HPE_LAPALP_H5", "HPE_OPNET_H5", "HPE_RA300WLP_H5", "HPE_WFLWLP_H5",
       "HPE_BENCH_CACHE", "HPE_BENCH_OUTPUTS"]


@pytest.fixture(scope="module", autouse=True)
def marked_env():
    saved = {k: os.environ.get(k) for k in ENV}
    os.environ.update({k: f"${k}" for k in ENV})
    yield
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def resolved(node: str, *overrides: str):
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF)):
        cfg = compose("config", overrides=list(overrides))
    return OmegaConf.to_container(cfg[node], resolve=True)


def with_defaults(node):
    """``node`` with every ``_target_``'s unset keyword defaults filled in (recursively)."""
    if isinstance(node, list):
        return [with_defaults(v) for v in node]
    if not isinstance(node, dict):
        return node
    out = {k: with_defaults(v) for k, v in node.items()}
    if "_target_" in out:
        params = inspect.signature(_locate(out["_target_"])).parameters.values()
        for p in params:
            if p.default is not inspect.Parameter.empty and p.name not in out:
                out[p.name] = list(p.default) if isinstance(p.default, tuple) else p.default
    return out


@pytest.mark.parametrize("option", sorted(BEFORE["data"]))
def test_data_option_builds_what_it_built_before(option):
    assert with_defaults(resolved("data", f"data={option}")) == with_defaults(BEFORE["data"][option])


# Deliberate changes to a preset's data node after the refactor: {preset: {key: new value}}.
CHANGED_SINCE = {
    "demo": {"num_workers": 0},  # issue 12: on 2 cores, loading in the training process is faster (performance.md)
}


@pytest.mark.parametrize("preset", sorted(BEFORE["experiment_data"]))
def test_experiment_data_node_unchanged(preset):
    expected = dict(BEFORE["experiment_data"][preset], **CHANGED_SINCE.get(preset, {}))
    assert with_defaults(resolved("data", f"experiment={preset}")) == with_defaults(expected)


def _shared(before: dict, after: dict) -> tuple[dict, dict]:
    """The keys both have: other issue-9 items add or drop network/crop options independently of this refactor."""
    keys = set(before) & set(after)
    return {k: before[k] for k in keys}, {k: after[k] for k in keys}


@pytest.mark.parametrize("option", sorted(BEFORE["model"]))
def test_model_option_builds_the_same_module(option):
    before, after = BEFORE["model"][option], resolved("model", f"model={option}")
    assert after["_target_"] == before["_target_"]
    for part in ("net", "crop"):
        assert after[part]["_target_"] == before[part]["_target_"], part
        b, a = _shared(with_defaults(before[part]), with_defaults(after[part]))
        assert a == b, part
    assert with_defaults(after["optimizer"]) == with_defaults(before["optimizer"])
    b, a = with_defaults(before.get("scheduler")), with_defaults(after.get("scheduler"))
    if isinstance(b, dict):
        b.pop("total_samples", None)  # moved to model.total_samples (issue 9 item 5: the run length stated once)
    assert a == b
    for key in ("grad_clip_max_norm", "grad_clip_norm_type"):
        assert after.get(key) == CLIP_SINCE_ISSUE19.get(option, {}).get(key, before.get(key)), key


# Deliberate change (issue 19): every OpNet model option clips as the authors' update function does.
CLIP_SINCE_ISSUE19 = {o: {"grad_clip_max_norm": 0.1} for o in BEFORE["model"] if o.startswith("opnet")}
