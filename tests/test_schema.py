"""Sample validation and collation with availability masks."""
import numpy as np
import pytest
import torch

from hpe_bench.schema import SampleError, collate, validate_sample


def sample(**kw):
    s = {"image": np.zeros((16, 16, 3), np.uint8), "box": np.array([2.0, 2, 10, 12]), "dataset": "toy",
         "sample_id": "toy/0", "topology": ""}
    s.update(kw)
    return s


def test_valid_sample_passes():
    validate_sample(sample(R=np.eye(3), t=np.zeros(3), landmarks_2d=np.zeros((68, 2))))


@pytest.mark.parametrize("field,value,needle", [
    ("R", np.eye(4), "'R'"),
    ("t", np.array([0.0, np.nan, 1.0]), "NaN"),
    ("landmarks_2d", np.zeros((5, 2)), "landmarks_2d"),
    ("box", np.array([5.0, 5, 5, 9]), "empty"),
    ("image", np.zeros((16, 16), np.uint8), "image"),
])
def test_bad_fields_are_named(field, value, needle):
    with pytest.raises(SampleError) as err:
        validate_sample(sample(**{field: value}), where="file.h5")
    assert needle in str(err.value) and "file.h5" in str(err.value) and "toy/0" in str(err.value)


def test_collate_keeps_masks_and_pads_vertices():
    a = sample(R=np.eye(3), vertices=np.ones((5, 3)), topology="t5")
    b = sample(sample_id="toy/1", K=np.eye(3))
    batch = collate([a, b])
    assert batch["image"].shape == (2, 3, 16, 16) and batch["image"].dtype == torch.uint8
    assert batch["has_R"].tolist() == [True, False] and batch["has_K"].tolist() == [False, True]
    assert torch.equal(batch["R"][1], torch.zeros(3, 3))
    assert batch["vertices"].shape == (2, 5, 3) and batch["vertices_mask"].sum(1).tolist() == [5, 0]
    assert batch["sample_id"] == ["toy/0", "toy/1"] and batch["topology"] == ["t5", ""]


def test_collate_rejects_mixed_image_sizes():
    with pytest.raises(SampleError, match="toy/1"):
        collate([sample(), sample(sample_id="toy/1", image=np.zeros((8, 8, 3), np.uint8))])
