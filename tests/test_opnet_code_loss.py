"""``loss=opnet_code`` against the authors' own loss values (``shared/reference/losses/opnet_loss_cases.*``).

The predictions and targets of each case are already in OpNet's crop space under hpe_bench's names, so they go
straight to ``OpNetLoss.weighted_terms``; every criterion's contribution (sum over the samples having it of
value x weight / B, as the authors' ``default_update_fun`` reduces it) and the total must match to 1e-6.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from hpe_bench.losses.opnet_terms import coord_squared_error
from reference_cases import OPNET_AUTHORS as AUTHORS, load_opnet_case as load_case, read_cases

CONF = Path(__file__).resolve().parents[1] / "conf"


@pytest.fixture(scope="module")
def cases(shared_reference):
    return read_cases(shared_reference, "opnet_loss_cases")


@pytest.fixture(scope="module")
def opnet_code():
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF)):
        cfg = compose("config", overrides=["model=opnet", "loss=opnet_code"])
    return instantiate(cfg.loss).double()


@pytest.mark.parametrize("case", ["A", "B", "C"])
def test_every_term_matches_the_authors(cases, opnet_code, case):
    pred, targets, ref = load_case(cases, case)
    out = opnet_code.weighted_terms(pred, targets)
    for term, criteria in AUTHORS.items():
        expected = sum(float(ref[f"contribution/{c}"]) for c in criteria)
        assert out[term].item() == pytest.approx(expected, rel=1e-6), term
    assert out["loss"].item() == pytest.approx(float(ref["total"]), rel=1e-6)


@pytest.mark.parametrize("case", ["A", "B", "C"])
def test_coord_is_the_authors_xy_plus_size_per_sample(cases, case):
    pred, targets, ref = load_case(cases, case)
    has = targets["has_coord"].numpy()
    expected = (ref["per_sample/xy"] + ref["per_sample/sz"])[has]
    for reduction, xy_factor in (("mean", 1.0), ("sum", 2.0)):  # paper Eq. 3: dx^2 + dy^2 + ds^2
        got = coord_squared_error(pred["coord"], targets["coord"], reduction).numpy()[has]
        np.testing.assert_allclose(got, ref["per_sample/xy"][has] * xy_factor + ref["per_sample/sz"][has],
                                   rtol=1e-9)
    np.testing.assert_allclose(coord_squared_error(pred["coord"], targets["coord"], "mean").numpy()[has],
                               expected, rtol=1e-9)
