"""Mixtures: draw frequencies, determinism per (seed, epoch, index), availability masks, concatenation."""
import numpy as np
import pytest
from torch.utils.data import DataLoader, Dataset

from hpe_bench.data.datamodule import HeadPoseDataModule
from hpe_bench.data.mixture import ConcatSchemaDataset, EpochSampler, MixtureDataset
from hpe_bench.schema import collate


class Tagged(Dataset):
    """``n`` tiny samples named ``<tag>/<i>``; ``with_r`` adds a rotation label."""

    def __init__(self, tag: str, n: int, with_r: bool = False):
        self.tag, self.n, self.with_r = tag, n, with_r

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        if not 0 <= i < self.n:
            raise IndexError(i)
        s = {"image": np.zeros((8, 8, 3), np.uint8), "box": np.array([0.0, 0, 4, 4]), "dataset": self.tag,
             "sample_id": f"{self.tag}/{i}", "topology": ""}
        if self.with_r:
            s["R"] = np.eye(3, dtype=np.float32)
        return s


def three() -> dict:
    return {"a": Tagged("a", 7), "b": Tagged("b", 1000), "c": Tagged("c", 3)}


def test_draw_frequencies_follow_the_probabilities():
    mix = MixtureDataset(three(), {"a": 50, "b": 33, "c": 17}, length=20000, seed=3)  # weights are normalised
    names = [mix.draw(i)[0] for i in range(len(mix))]
    freq = {k: names.count(k) / len(names) for k in "abc"}
    # binomial standard error at n = 20000 is <= 0.0036; 4 sigma
    for k, p in zip("abc", (0.50, 0.33, 0.17)):
        assert abs(freq[k] - p) < 0.015, freq
    # within a dataset the sample index is uniform, with replacement (7 items, ~10000 draws)
    counts = np.bincount([mix.draw(i)[1] for i in range(len(mix)) if names[i] == "a"], minlength=7)
    assert counts.min() > 0.8 * counts.mean() and counts.max() < 1.2 * counts.mean()


def test_draws_are_deterministic_per_seed_epoch_and_index():
    a = MixtureDataset(three(), None, length=100, seed=1)
    b = MixtureDataset(three(), None, length=100, seed=1)
    assert [a.draw(i) for i in range(100)] == [b.draw(i) for i in range(100)]
    assert [a.draw(i) for i in range(100)] != [MixtureDataset(three(), None, 100, seed=2).draw(i) for i in range(100)]
    epoch1 = [a.draw(100 + i) for i in range(100)]  # what EpochSampler yields in epoch 1
    assert epoch1 != [a.draw(i) for i in range(100)]
    b.set_epoch(1)
    assert [b.draw(i) for i in range(100)] == epoch1


def test_epoch_sampler_shards_and_offsets_by_epoch():
    mix = MixtureDataset(three(), None, length=10, seed=0)
    s0, s1 = EpochSampler(mix, 2, 0, seed=0, drop_last=True), EpochSampler(mix, 2, 1, seed=0, drop_last=True)
    assert sorted(list(s0) + list(s1)) == list(range(10))
    s0.set_epoch(3)
    assert all(30 <= i < 40 for i in s0) and len(list(s0)) == 5


def test_bad_names_and_weights_are_named():
    with pytest.raises(ValueError, match="'d'"):
        MixtureDataset(three(), {"a": 1, "b": 1, "c": 1, "d": 1})
    with pytest.raises(ValueError, match="'c'"):
        MixtureDataset(three(), {"a": 1, "b": 1})
    with pytest.raises(ValueError, match=r"probabilities\.b"):
        MixtureDataset(three(), {"a": 1, "b": -0.5, "c": 1})


def test_availability_masks_survive_mixing():
    mix = MixtureDataset({"r": Tagged("r", 5, with_r=True), "nor": Tagged("nor", 5)}, {"r": 0.5, "nor": 0.5},
                         length=200, seed=0)
    i_r = next(i for i in range(200) if mix.draw(i)[0] == "r")
    i_n = next(i for i in range(200) if mix.draw(i)[0] == "nor")
    batch = collate([mix[i_r], mix[i_n]])
    assert batch["has_R"].tolist() == [True, False]
    assert batch["R"][0].tolist() == np.eye(3).tolist() and batch["R"][1].abs().sum() == 0


def test_concatenation_is_proportional_to_size_and_lazy():
    cat = ConcatSchemaDataset({"a": Tagged("a", 3), "b": Tagged("b", 5)})
    assert len(cat) == 8 and [cat[i]["sample_id"] for i in (0, 2, 3, 7)] == ["a/0", "a/2", "b/0", "b/4"]
    assert len(ConcatSchemaDataset([Tagged("a", 2), Tagged("b", 2)])) == 4


def test_datamodule_uses_the_mixture_sampler_across_epochs():
    mix = MixtureDataset(three(), None, length=12, seed=0)
    dm = HeadPoseDataModule(train=mix, batch_size=4, root="/nowhere")
    loader = dm.train_dataloader()
    assert isinstance(loader.sampler, EpochSampler) and dm.root == "/nowhere"
    ids0 = [s for b in loader for s in b["sample_id"]]
    loader.sampler.set_epoch(1)  # what the Lightning fit loop does each epoch
    ids1 = [s for b in loader for s in b["sample_id"]]
    assert len(ids0) == len(ids1) == 12 and ids0 != ids1
    assert sorted(ids1) == sorted(mix[12 + i]["sample_id"] for i in range(12))
    assert all(isinstance(b, dict) for b in DataLoader(mix, batch_size=6, collate_fn=collate))
