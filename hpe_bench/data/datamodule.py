"""A generic Lightning datamodule over schema datasets (any dataset returning hpe_bench.schema samples).

Datasets come in already built (Hydra instantiates them from ``_target_``), so adding a dataset needs
no change here. Evaluation loaders never pad or drop samples, also under DDP (see ``ShardSampler``).
"""
from __future__ import annotations

import logging
from typing import Iterator, Sequence

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from ..geometry import check_rule
from ..schema import collate

log = logging.getLogger(__name__)


class ShardSampler(Sampler[int]):
    """Indices ``rank, rank + world, ...`` in order: every sample exactly once across ranks, no padding.

    torch's ``DistributedSampler`` pads the last shard by repeating samples, which silently changes
    test counts and averages; evaluation uses this instead.
    """

    def __init__(self, length: int, rank: int, world_size: int):
        self.length, self.rank, self.world_size = length, rank, world_size

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.length, self.world_size))

    def __len__(self) -> int:
        return len(range(self.rank, self.length, self.world_size))


class HeadPoseDataModule(L.LightningDataModule):
    """Train/val/test datasets + loaders. ``euler_rule`` names the protocol's per-axis reporting rule.

    ``root`` is documentary: data configs hold the dataset root there and their sources read ``${data.root}``.
    A training dataset with a ``train_sampler(num_replicas, rank)`` method (``MixtureDataset``) supplies its
    own epoch-aware sampler (a ``DistributedSampler``, so the trainer calls its ``set_epoch``).
    """

    def __init__(self, train: Dataset | None = None, val: Dataset | None = None, test: Dataset | None = None,
                 batch_size: int = 32, eval_batch_size: int | None = None, num_workers: int = 0,
                 pin_memory: bool | None = None, euler_rule: str = "trg", name: str = "dataset", root: str | None = None):
        super().__init__()
        self.root = root
        self.datasets = {"train": train, "val": val, "test": test}
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        # None: pinned host memory whenever CUDA is available (faster, asynchronous copies to the GPU)
        self.pin_memory = torch.cuda.is_available() if pin_memory is None else bool(pin_memory)
        self.euler_rule = check_rule(euler_rule)
        self.name = name

    def prepare_data(self) -> None:
        # Runs on one process per node: build caches (synthetic generation, dataset conversion) here.
        for split, ds in self.datasets.items():
            if ds is not None and hasattr(ds, "prepare"):
                log.info("preparing %s split of %s", split, self.name)
                ds.prepare()

    def _require(self, split: str) -> Dataset:
        ds = self.datasets[split]
        if ds is None:
            raise ValueError(f"data.{split} is not configured for {self.name!r}; set it in the data config")
        return ds

    def _dist(self) -> tuple[int, int]:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            return torch.distributed.get_rank(), torch.distributed.get_world_size()
        return 0, 1

    def _loader(self, ds: Dataset, batch_size: int, sampler: Sampler | None, shuffle: bool,
                drop_last: bool) -> DataLoader:
        return DataLoader(ds, batch_size=batch_size, sampler=sampler, shuffle=shuffle and sampler is None,
                          num_workers=self.num_workers, pin_memory=self.pin_memory, collate_fn=collate,
                          drop_last=drop_last, persistent_workers=self.num_workers > 0)

    def train_dataloader(self) -> DataLoader:
        ds = self._require("train")
        rank, world = self._dist()
        if callable(getattr(ds, "train_sampler", None)):
            sampler = ds.train_sampler(world, rank)
        else:
            sampler = DistributedSampler(ds, world, rank, shuffle=True, drop_last=True) if world > 1 else None
        # The trainer sets the sampler epoch through ``set_epoch`` when it finds a DistributedSampler.
        return self._loader(ds, self.batch_size, sampler, shuffle=True, drop_last=len(ds) > self.batch_size)

    def _eval_loader(self, split: str) -> DataLoader:
        ds = self._require(split)
        rank, world = self._dist()
        sampler = ShardSampler(len(ds), rank, world) if world > 1 else None
        return self._loader(ds, self.eval_batch_size, sampler, shuffle=False, drop_last=False)

    def val_dataloader(self) -> DataLoader | Sequence:
        return self._eval_loader("val") if self.datasets["val"] is not None else []

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader("test")
