"""Dataset mixtures: draw a dataset by probability (with replacement), or concatenate datasets.

Samples keep their own label keys, so a batch mixing datasets carries per-sample availability
(``has_R`` True for one sample, False for another) and losses mask correctly.
"""
from __future__ import annotations

import bisect
import math
import operator
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
from torch.utils.data import ConcatDataset, Dataset, DistributedSampler

__all__ = ["MixtureDataset", "ConcatSchemaDataset", "EpochSampler", "normalized_probabilities"]


def normalized_probabilities(names: Sequence[str], probabilities: Mapping[str, float] | None) -> np.ndarray:
    """Probabilities ``(D,)`` in the order of ``names``, normalised to sum 1 (``None``: uniform).

    ``ValueError`` naming the key for unknown or missing names, negative or non-finite weights.
    """
    if probabilities is None:
        return np.full(len(names), 1.0 / len(names))
    unknown = sorted(set(probabilities) - set(names))
    missing = [n for n in names if n not in probabilities]
    if unknown or missing:
        raise ValueError(f"mixture probabilities: unknown datasets {unknown}, no probability for {missing} "
                         f"(datasets: {list(names)})")
    w = np.array([float(probabilities[n]) for n in names])
    for n, v in zip(names, w):
        if not math.isfinite(v) or v < 0:
            raise ValueError(f"mixture probabilities.{n} = {v}: must be a finite number >= 0")
    if w.sum() <= 0:
        raise ValueError(f"mixture probabilities {dict(probabilities)} sum to 0")
    return w / w.sum()


_M64 = (1 << 64) - 1


def _splitmix64(x: int) -> int:
    """SplitMix64 finaliser (Steele et al. 2014): a fast, well-mixed 64-bit hash of an integer."""
    z = (x + 0x9E3779B97F4A7C15) & _M64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _M64
    return z ^ (z >> 31)


def _key(*parts: int) -> int:
    k = 0
    for p in parts:
        k = _splitmix64(k ^ (p & _M64))
    return k


class EpochSampler(DistributedSampler):
    """Shuffled indices ``0..n-1`` offset by ``epoch * n``, so the dataset can tell epochs apart.

    A ``DistributedSampler`` (this rank's share of a per-epoch permutation): Lightning calls its ``set_epoch``
    every epoch, in the main process, which reaches the dataset through the index even with persistent workers.
    """

    def __iter__(self) -> Iterator[int]:
        offset = self.epoch * len(self.dataset)
        return (offset + i for i in super().__iter__())


class MixtureDataset(Dataset):
    """``length`` samples per epoch; each draws a dataset with ``probabilities``, then a uniform sample from it.

    Args:
        datasets: name -> dataset (schema samples).
        probabilities: name -> weight (normalised; ``None`` = uniform over datasets).
        length: samples per epoch.
        seed: the draw of index ``i`` in epoch ``e`` depends only on ``(seed, e, i)``.

    Index ``i`` in ``[0, length)`` is epoch ``epoch`` (``set_epoch``, default 0); larger indices encode the epoch
    as ``epoch * length + i`` (what ``EpochSampler`` yields). Draws are with replacement.
    """

    def __init__(self, datasets: Mapping[str, Dataset], probabilities: Mapping[str, float] | None = None,
                 length: int = 10240, seed: int = 0):
        if not datasets:
            raise ValueError("mixture: datasets is empty")
        if int(length) < 1:
            raise ValueError(f"mixture: length must be >= 1, got {length}")
        self.names = [str(n) for n in datasets]
        self.datasets = dict(datasets)
        self.probabilities = normalized_probabilities(self.names, probabilities)
        self._cdf = np.cumsum(self.probabilities).tolist()
        self.length, self.seed, self.epoch = int(length), int(seed), 0
        self._sizes: list[int] | None = None  # lazily: a dataset may build its cache on first len()

    def prepare(self) -> None:
        for ds in self.datasets.values():
            if hasattr(ds, "prepare"):
                ds.prepare()

    def sizes(self) -> list[int]:
        if self._sizes is None:
            self._sizes = [len(self.datasets[n]) for n in self.names]
            empty = [n for n, s in zip(self.names, self._sizes) if s == 0 and self.probabilities[self.names.index(n)] > 0]
            if empty:
                raise ValueError(f"mixture: datasets {empty} are empty but have a probability > 0")
        return self._sizes

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def draw(self, index: int) -> tuple[str, int]:
        """``(dataset name, sample index)`` of mixture index ``index``."""
        epoch, i = divmod(operator.index(index), self.length)
        # a counter-based draw (hash of seed, epoch, index): ~100x cheaper than seeding a numpy Generator
        key = _key(self.seed, self.epoch + epoch, i)
        u = (_splitmix64(key ^ 1) >> 11) * 2.0 ** -53  # uniform in [0, 1), 53 bits
        d = min(bisect.bisect_right(self._cdf, u), len(self.names) - 1)
        while self.probabilities[d] == 0:  # u at a boundary shared with a zero-weight neighbour
            d -= 1
        return self.names[d], _splitmix64(key ^ 2) % self.sizes()[d]  # modulo bias < size / 2^64

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, Any]:
        if index < 0:
            raise IndexError(f"mixture: negative index {index}")
        name, j = self.draw(index)
        return self.datasets[name][j]

    def train_sampler(self, num_replicas: int = 1, rank: int = 0) -> EpochSampler:
        return EpochSampler(self, num_replicas, rank, shuffle=True, seed=self.seed, drop_last=True)

    def report(self) -> dict[str, Any]:
        return {"mixture": {n: float(p) for n, p in zip(self.names, self.probabilities)}, "length": self.length}


class ConcatSchemaDataset(ConcatDataset):
    """Datasets concatenated (each sampled in proportion to its size); ``datasets`` is a name -> dataset mapping
    or a list. Sizes are taken lazily, so members can build their caches in ``prepare``."""

    def __init__(self, datasets: Mapping[str, Dataset] | Sequence[Dataset]):
        self.named = dict(datasets) if isinstance(datasets, Mapping) else {str(i): d for i, d in enumerate(datasets)}
        if not self.named:
            raise ValueError("concat: datasets is empty")
        self.datasets = list(self.named.values())
        self._cumulative: list[int] | None = None

    def prepare(self) -> None:
        for ds in self.datasets:
            if hasattr(ds, "prepare"):
                ds.prepare()

    @property
    def cumulative_sizes(self) -> list[int]:  # ConcatDataset computes this eagerly in __init__; we defer it
        if self._cumulative is None:
            self._cumulative = self.cumsum(self.datasets)
        return self._cumulative

    @cumulative_sizes.setter
    def cumulative_sizes(self, value: list[int]) -> None:
        self._cumulative = value
