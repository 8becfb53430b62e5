"""Evaluation sharding never pads or drops samples."""
import pytest
from torch.utils.data import Dataset

from hpe_bench.data.datamodule import HeadPoseDataModule, ShardSampler


@pytest.mark.parametrize("length,world", [(20, 2), (21, 2), (7, 3), (2, 4), (0, 2)])
def test_shards_cover_every_index_exactly_once(length, world):
    seen = [i for rank in range(world) for i in ShardSampler(length, rank, world)]
    assert sorted(seen) == list(range(length))
    assert sum(len(ShardSampler(length, r, world)) for r in range(world)) == length


class Toy(Dataset):
    def __len__(self):
        return 5

    def __getitem__(self, i):
        import numpy as np
        return {"image": np.zeros((4, 4, 3), np.uint8), "box": np.array([0.0, 0, 2, 2]), "dataset": "toy",
                "sample_id": str(i), "topology": ""}


def test_test_loader_keeps_the_last_partial_batch():
    dm = HeadPoseDataModule(test=Toy(), batch_size=2)
    ids = [s for b in dm.test_dataloader() for s in b["sample_id"]]
    assert ids == ["0", "1", "2", "3", "4"]


def test_missing_split_is_named():
    with pytest.raises(ValueError, match="data.test"):
        HeadPoseDataModule(train=Toy()).test_dataloader()


def test_bad_euler_rule_is_rejected():
    with pytest.raises(ValueError, match="xyz"):
        HeadPoseDataModule(euler_rule="xyz")


