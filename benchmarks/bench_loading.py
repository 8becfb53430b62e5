"""Loading speed from a prepared cache: JPEG decoding + labels + collation through a DataLoader, and CropInput.

    .venv/bin/python benchmarks/bench_loading.py                  # 1024 records, 2 workers, batch 32
    .venv/bin/python benchmarks/bench_loading.py -n 2048 --workers 2 --epochs 3

No real dataset is needed: the raw source is the embedded synthetic dataset rendered at ``--raw-size`` px
(wrapped as a ``RawSource``), prepared into a ``PreparedDataset`` cache of 256 px working crops in a temporary
directory. Prints: preparation records/s (one process), loader samples/s (``--workers`` DataLoader workers,
timed after the first batch so worker start-up is excluded), the CPU time per sample of reading + decoding +
collating in one process (independent of other load on the machine), ``CropInput`` samples/s (this process,
CPU), and loader + CropInput together (what a training step waits for).
"""
from __future__ import annotations

import argparse
import functools
import pathlib
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from hpe_bench.data.raw import RawSource  # noqa: E402


class SyntheticSource(RawSource):
    """The synthetic dataset's full-resolution renders as a raw source (``root`` = its cache directory)."""
    name = "synthetic_raw"
    layout = "<root> = a cache directory of hpe_bench.data.synthetic"

    def __init__(self, root, split: str = "train", num_samples: int = 1024, image_size: int = 512):
        from hpe_bench.data.synthetic.dataset import SyntheticDataset
        super().__init__(root, split)
        self.ds = SyntheticDataset(split, num_samples, 0, image_size, str(root), workers=2)

    def __len__(self) -> int:
        return len(self.ds)

    def record_id(self, i: int) -> str:
        return f"{self.split}/{i:06d}"

    def read(self, i: int) -> dict:
        return self.ds[i]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", "--num-samples", type=int, default=1024)
    ap.add_argument("--raw-size", type=int, default=512)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--crop-size", type=int, default=224, help="CropInput output side (TRG 224, OpNet 129)")
    args = ap.parse_args()

    import torch
    from torch.utils.data import DataLoader

    from hpe_bench.data.prepared import PreparedDataset
    from hpe_bench.models.crop import CropInput
    from hpe_bench.schema import collate

    with tempfile.TemporaryDirectory() as tmp:
        src = functools.partial(SyntheticSource, root=tmp, split="train", num_samples=args.num_samples,
                                image_size=args.raw_size)
        src().ds.prepare()  # render the raw renders first (not part of the measurement)
        ds = PreparedDataset(src, tmp, working_size=256, working_scale=2.0)
        t0 = time.perf_counter()
        ds.prepare()
        t_prep = time.perf_counter() - t0
        print(f"prepare: {len(ds)} records {args.raw_size}px -> 256px working crops, one process: "
              f"{len(ds) / t_prep:.0f} records/s; cache {ds.path.stat().st_size / len(ds) / 1024:.1f} KiB/record")

        loader = DataLoader(ds, batch_size=args.batch_size, shuffle=True, num_workers=args.workers,
                            collate_fn=collate, persistent_workers=args.workers > 0, drop_last=True)
        crop = CropInput(size=args.crop_size, box_scale=1.2)

        def run(step: bool) -> float:
            count, t_start = 0, None
            for _ in range(args.epochs):
                for batch in loader:
                    if t_start is None:  # exclude worker start-up and the first batch
                        t_start = time.perf_counter()
                        continue
                    if step:
                        with torch.no_grad():
                            crop(batch)
                    count += len(batch["sample_id"])
            return count / (time.perf_counter() - t_start)

        # CPU time per sample in this process (read + JPEG decode + collate): insensitive to other load
        t0, m = time.process_time(), min(len(ds), 512)
        for a in range(0, m, args.batch_size):
            collate([ds[i] for i in range(a, min(a + args.batch_size, m))])
        cost = (time.process_time() - t0) / m
        print(f"read + decode + collate, one process: {cost * 1e3:.2f} ms CPU/sample "
              f"(= {1 / cost:.0f} samples/s per core)")
        print(f"loader ({args.workers} workers, batch {args.batch_size}): {run(False):.0f} samples/s")
        batch = next(iter(loader))
        with torch.no_grad():
            crop(batch)
            t0, reps = time.perf_counter(), 10
            for _ in range(reps):
                crop(batch)
        print(f"CropInput {args.crop_size}px (main process, {torch.get_num_threads()} threads): "
              f"{reps * len(batch['sample_id']) / (time.perf_counter() - t0):.0f} samples/s")
        print(f"loader + CropInput: {run(True):.0f} samples/s")


if __name__ == "__main__":
    main()
