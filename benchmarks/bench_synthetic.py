"""Generation speed of the embedded synthetic dataset (images/s), and an optional sample grid.

    .venv/bin/python benchmarks/bench_synthetic.py                 # 1000 images, 2 workers, 256x256
    .venv/bin/python benchmarks/bench_synthetic.py -n 2000 --workers 2 --size 256
    .venv/bin/python benchmarks/bench_synthetic.py -n 0 --grid docs/img/synthetic_samples.png

Generates a fresh cache in a temporary directory (end to end: sampling, rendering, JPEG encoding,
HDF5 writing through the process pool) and prints images/s. ``--grid`` writes a 4x4 grid of test-split
renders with the 68 landmarks (green) and the box label (yellow).
"""
from __future__ import annotations

import argparse
import pathlib
import sys
import tempfile
import time

import cv2
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
# hpe_bench is imported inside the functions: generation workers re-import this __main__ module and
# should not pay for torch (see hpe_bench.data.synthetic.dataset._pool_context).


def sample_grid(path: pathlib.Path, size: int = 256, rows: int = 4, seed: int = 0) -> None:
    """Write ``rows x rows`` renders of the test split with landmarks and boxes drawn (RGB -> BGR file)."""
    from hpe_bench.data.synthetic.raster import make_sample

    tiles = []
    for i in range(rows * rows):
        image, _mask, lab = make_sample(seed, "test", i, size)
        im = image.copy()
        x0, y0, x1, y1 = (int(round(v * 4)) for v in lab["box"])
        cv2.rectangle(im, (x0, y0), (x1, y1), (255, 220, 0), 1, cv2.LINE_AA, 2)
        for x, y in lab["landmarks_2d"]:
            cv2.circle(im, (int(round(x * 4)), int(round(y * 4))), 4, (0, 255, 0), -1, cv2.LINE_AA, 2)
        tiles.append(im)
    grid = np.vstack([np.hstack(tiles[r * rows:(r + 1) * rows]) for r in range(rows)])
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), cv2.cvtColor(grid, cv2.COLOR_RGB2BGR))
    print(f"wrote {path}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", "--num-samples", type=int, default=1000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--grid", type=pathlib.Path, default=None, help="also write a sample grid PNG here")
    args = ap.parse_args()
    from hpe_bench.data.synthetic import SyntheticDataset
    from hpe_bench.data.synthetic.dataset import sample_chunk
    from hpe_bench.data.synthetic.raster import render_jpeg_chunk

    if args.num_samples > 0:
        with tempfile.TemporaryDirectory() as tmp:
            ds = SyntheticDataset("train", args.num_samples, seed=0, image_size=args.size, cache_dir=tmp,
                                  workers=args.workers)
            t0 = time.perf_counter()
            path = ds.prepare()
            dt = time.perf_counter() - t0
            mb = path.stat().st_size / 2**20
        n = args.num_samples
        print(f"synthetic: {n} images {args.size}x{args.size}, {args.workers} workers: {dt:.2f} s wall "
              f"(pool start included), {n / dt:.1f} images/s, cache {mb:.1f} MiB")
        # single-core CPU cost of each half, in this process (robust to other load on a shared machine)
        import torch

        torch.set_num_threads(1)  # as during generation
        cv2.setNumThreads(1)
        m = min(n, 200)
        c0 = time.process_time()
        scenes, _ = sample_chunk(0, "train", 0, m, args.size)
        c1 = time.process_time()
        render_jpeg_chunk(scenes, 95)
        c2 = time.process_time()
        ms_s, ms_r = 1e3 * (c1 - c0) / m, 1e3 * (c2 - c1) / m
        print(f"  cpu per image: sample+labels {ms_s:.2f} ms, render+jpeg {ms_r:.2f} ms -> at most "
              f"{1e3 * args.workers / (ms_s + ms_r):.0f} images/s on {args.workers} idle cores")
    if args.grid is not None:
        sample_grid(args.grid, args.size)


if __name__ == "__main__":
    main()
