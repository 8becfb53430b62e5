"""Stability benchmark: jitter, lag and accuracy of a model on rendered synthetic videos, with and without smoothing.

    hpe-bench stability --model outputs/runs/<exp>/<time>/checkpoints/last.ckpt [--frames 60] [--out DIR]

Three sequences are rendered by the embedded synthetic generator (one identity, lighting and background; the
camera of synthetic test scene 0; per-frame pixel noise, sigma 3 grey levels, seeded), 30 fps:

- ``static``: a fixed pose (trg rule yaw 20, pitch -10, roll 5 deg);
- ``slow``: yaw 30 sin(2 pi 0.25 t), pitch 8 sin(2 pi 0.25 t) (peak yaw speed 47 deg/s);
- ``fast``: yaw 45 sin(2 pi 1.0 t), pitch 10 sin(2 pi 1.0 t) (peak yaw speed 283 deg/s).

The face box of each frame is the tight box of the projected mesh (as in the synthetic dataset), so the numbers
are the model's, not a detector's. Per sequence, on the predicted rotations ``P_k`` against the truth ``R_k``:

- ``accuracy_deg``: mean geodesic error ``angle(R_k^T P_k)``;
- ``jitter_deg``: mean frame-to-frame error beyond the true motion, ``angle(D_k^T Dhat_k)`` with
  ``D_k = R_{k-1}^T R_k`` and ``Dhat_k = P_{k-1}^T P_k`` (degrees per frame; 0 for any constant bias);
- ``lag_frames``: the delay ``s`` in ``0 .. max_lag`` that minimises the mean ``angle(R_{k-s}^T P_k)`` (moving
  sequences only).

Each is reported raw and after the One Euro filter of ``hpe-bench predict --smooth`` (``hpe_bench.smoothing``).
Writes ``stability.json`` and ``stability.md`` (atomically) into ``--out`` and prints the table.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import sys
from datetime import datetime
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from . import geometry as G
from .detect import InputError
from .outputs import atomic_path, write_json
from .smoothing import OneEuroParams, smooth_rotations

SEQUENCES = {  # name -> (yaw amplitude deg, pitch amplitude deg, frequency Hz); static: constant pose
    "static": None,
    "slow": (30.0, 8.0, 0.25),
    "fast": (45.0, 10.0, 1.0),
}
STATIC_YPR = (20.0, -10.0, 5.0)


def trajectory(name: str, frames: int, fps: float) -> torch.Tensor:
    """True rotations ``(frames, 3, 3)`` float64 of a sequence (trg rule angles, see module docstring)."""
    time = torch.arange(frames, dtype=torch.float64) / fps
    if SEQUENCES[name] is None:
        ypr = torch.tensor(STATIC_YPR, dtype=torch.float64).expand(frames, 3)
    else:
        a_yaw, a_pitch, hz = SEQUENCES[name]
        s = torch.sin(2 * math.pi * hz * time)
        ypr = torch.stack([a_yaw * s, a_pitch * s, torch.zeros_like(s)], -1)
    return G.euler_to_matrix(ypr, "trg")


def render_sequence(R: torch.Tensor, image_size: int = 256, noise: float = 3.0, seed: int = 0):
    """Frames ``[uint8 (S, S, 3)]``, boxes ``(T, 4)``, ``K (3, 3)`` and ``t (3,)`` of rotations ``R (T, 3, 3)``."""
    from .data.synthetic import raster
    from .data.synthetic import scene as S

    template = S.sample_scene(0, "test", 0, image_size)
    t = np.array([0.0, 0.0, 0.55])
    rng = np.random.default_rng(seed)
    frames, boxes = [], []
    for Rk in R.numpy():
        v_cam = G.transform_points(torch.from_numpy(template.vertices), torch.from_numpy(Rk), torch.from_numpy(t))
        uv = G.project_points(v_cam, torch.from_numpy(template.K))
        scene = dataclasses.replace(template, R=Rk, t=t, v_cam=v_cam.numpy(), uv=uv.numpy(),
                                    ypr_deg=G.matrix_to_euler(torch.from_numpy(Rk), "trg").numpy())
        img, _ = raster.render_scene(scene)
        img = np.clip(img + rng.normal(0.0, noise, img.shape), 0, 255).astype(np.uint8)
        frames.append(img)
        boxes.append(G.box_from_points(uv).numpy())
    return frames, np.stack(boxes), template.K, t


def stability_metrics(P: torch.Tensor, R: torch.Tensor, max_lag: int = 10, moving: bool = True) -> dict[str, float]:
    """``accuracy_deg``, ``jitter_deg``, ``lag_frames`` of predictions ``P (T, 3, 3)`` against truth ``R (T, 3, 3)``."""
    deg = lambda a, b: torch.rad2deg(G.geodesic_angle(a, b))  # noqa: E731
    out = {"accuracy_deg": float(deg(R, P).mean())}
    D, D_hat = R[:-1].transpose(-1, -2) @ R[1:], P[:-1].transpose(-1, -2) @ P[1:]
    out["jitter_deg"] = float(deg(D, D_hat).mean()) if len(D) else float("nan")
    lag = float("nan")
    if moving and len(R) > max_lag + 1:
        errors = [float(deg(R[max_lag - s:len(R) - s], P[max_lag:]).mean()) for s in range(max_lag + 1)]
        lag = float(int(np.argmin(errors)))
    out["lag_frames"] = lag
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    from .predictor import load_predictor
    predictor = load_predictor(args.model)
    params = OneEuroParams(args.min_cutoff, args.beta)
    rows = []
    for name in SEQUENCES:
        R = trajectory(name, args.frames, args.fps)
        frames, boxes, K, _ = render_sequence(R, args.size, seed=args.seed)
        P = torch.stack([torch.as_tensor(predictor(f, b[None], K)["R"][0]) for f, b in zip(frames, boxes)]).double()
        for smoothing, Pk in (("off", P), ("one_euro", smooth_rotations(P, 1.0 / args.fps, params))):
            rows.append({"sequence": name, "smoothing": smoothing,
                         **stability_metrics(Pk, R, moving=SEQUENCES[name] is not None)})
    return {"model": str(args.model), "frames": args.frames, "fps": args.fps, "image_size": args.size,
            "one_euro": dataclasses.asdict(params), "rows": rows}


def to_markdown(record: dict[str, Any]) -> str:
    lines = ["| sequence | smoothing | accuracy (deg) | jitter (deg/frame) | lag (frames) |", "|---|---|---|---|---|"]
    for r in record["rows"]:
        lag = "" if math.isnan(r["lag_frames"]) else f"{r['lag_frames']:.0f}"
        lines.append(f"| {r['sequence']} | {r['smoothing']} | {r['accuracy_deg']:.2f} | {r['jitter_deg']:.3f} "
                     f"| {lag} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m hpe_bench.stability", description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="a run's checkpoint (.ckpt) or an exported .onnx")
    p.add_argument("--frames", type=int, default=60)
    p.add_argument("--fps", type=float, default=30.0)
    p.add_argument("--size", type=int, default=256, help="rendered image side (pixels)")
    p.add_argument("--seed", type=int, default=0, help="seed of the per-frame pixel noise")
    p.add_argument("--min-cutoff", type=float, default=1.0)
    p.add_argument("--beta", type=float, default=0.3)
    p.add_argument("--out", help="output folder (default outputs/stability/<time>)")
    args = p.parse_args(argv)
    if args.frames < 2:
        p.error("--frames must be at least 2")
    try:
        record = run(args)
    except InputError as err:
        print(f"stability: error: {err}", file=sys.stderr)
        return 2
    out = Path(args.out or Path("outputs/stability") / datetime.now().strftime("%Y-%m-%d_%H-%M-%S"))
    out.mkdir(parents=True, exist_ok=True)
    table = to_markdown(record)
    write_json(out / "stability.json", record)
    with atomic_path(out / "stability.md") as tmp:
        tmp.write_text(table + "\n")
    print(table)
    print(f"outputs: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
