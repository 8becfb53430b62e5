"""``hpe-bench show data=<name>`` / ``python -m hpe_bench.show``: a contact sheet of a dataset's samples with
every label it has drawn on them -- the first thing to run on a new dataset (docs/datasets.md).

    hpe-bench show data=synthetic                          # 16 random test samples (seed 0)
    hpe-bench show data=aflw2kmini data.root=aflw2kmini.h5 n=8 seed=3 out=aflw.png
    hpe-bench show data=biwi split=train ids=biwi/01/frame_00003,biwi/01/frame_00010
    hpe-bench show data=synthetic index=0,1,2,3 size=320 cols=2

Tool options (``key=value``): ``split`` (test), ``n`` (16), ``seed`` (0), ``ids`` or ``index`` (comma lists),
``out`` (``outputs/show/<data>_<split>.png``), ``size`` (panel side, 256), ``cols`` (4). Every other
``key=value`` is a Hydra override of conf/ (``data=...``, ``data.root=...``).

Drawn where the sample has it: box (yellow), 2D landmarks (green dots), image-space 3D landmarks
``landmarks_3d[:, :2]`` (cyan rings), dense vertices projected with ``R, t, K`` (light blue), head axes (x red,
y green, z blue: perspective from ``R, t, K``, else orthographic at the OpNet head position or the box centre),
principal point of ``K`` (magenta cross; grey for the assumed ``K_fallback``) and the model's crop
``square_box(box, 1.2)`` (grey). Samples of a prepared cache are its working crops (``data.prepared``), so the
sheet shows exactly what training reads. Each panel is the image mapped by ``geometry.crop_transform`` of the
whole image to the panel size, labels with it: the overlay uses the package's own conventions.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Sequence

import cv2
import numpy as np
import torch

from . import geometry as G
from . import viz
from .detect import InputError
from .outputs import atomic_path

KEYS = ("split", "n", "seed", "ids", "index", "out", "size", "cols")
LEGEND = ("box: yellow | 2D landmarks: green | 3D landmarks (x, y): cyan | vertices: light blue | "
          "axes x/y/z: red/green/blue | principal point: magenta (grey: fallback) | model crop: grey")


def _t(x) -> torch.Tensor:
    return torch.as_tensor(np.asarray(x, dtype=np.float64))


def panel(sample: dict[str, Any], size: int = 256) -> tuple[np.ndarray, list[str]]:
    """The sample's image scaled to fit ``size`` with every available label drawn; and the names drawn."""
    img = sample["image"]
    H, W = img.shape[:2]
    s = size / max(H, W)
    w, h = max(1, round(W * s)), max(1, round(H * s))
    A = G.crop_transform(_t([0.0, 0.0, W, H]), (w, h))  # whole image -> panel (the package's crop convention)
    im = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1)[None].double() / 255.0
    out = (G.crop_images(im, A.new_tensor([[0.0, 0.0, W, H]]), (w, h))[0].permute(1, 2, 0).clamp(0, 1) * 255)
    out = out.round().byte().numpy()
    pts = lambda p: G.apply_transform_2d(A, _t(p)[..., :2]).numpy()  # noqa: E731
    drawn = []
    box = np.asarray(sample["box"], np.float64)
    crop = G.square_box(_t(box), 1.2).numpy()
    out = viz.draw_box(out, pts(crop.reshape(2, 2)).reshape(4), color=(150, 150, 150), thickness=1)
    K = sample.get("K")
    K_used = K if K is not None else sample.get("K_fallback")
    if K_used is not None:
        K_p = (A @ _t(K_used)).numpy()
        colour = (255, 0, 255) if K is not None else (160, 160, 160)
        c = K_p[:2, 2]
        out = viz.draw_landmarks(out, [c + (-5, 0), c + (5, 0), c + (0, -5), c + (0, 5)], color=colour, radius=1)
        out = viz.draw_landmarks(out, [c], color=colour, radius=2.5, thickness=1)
        drawn.append("K" if K is not None else "K_fallback")
    if all(k in sample for k in ("vertices", "R", "t")) and K_used is not None:
        cam = G.transform_points(_t(sample["vertices"]), _t(sample["R"]), _t(sample["t"]))
        uv = G.project_points(cam, _t(K_p)).numpy()
        step = max(1, len(uv) // 800)
        out = viz.draw_landmarks(out, uv[::step], color=(170, 200, 255), radius=0.7)
        drawn.append("vertices")
    if "landmarks_3d" in sample:
        out = viz.draw_landmarks(out, pts(sample["landmarks_3d"]), color=(0, 230, 230), radius=2.2, thickness=1)
        drawn.append("landmarks_3d")
    if "landmarks_2d" in sample:
        out = viz.draw_landmarks(out, pts(sample["landmarks_2d"]), color=(0, 255, 0), radius=1.2)
        drawn.append("landmarks_2d")
    out = viz.draw_box(out, pts(box.reshape(2, 2)).reshape(4), thickness=1)
    drawn.append("box")
    if "R" in sample:
        R = np.asarray(sample["R"], np.float64)
        if "t" in sample and K is not None:
            out = viz.draw_axes(out, R, sample["t"], K_p, length_m=0.08, thickness=2)
        else:  # no metric pose: orthographic axes at the OpNet head position or the box centre
            head = sample.get("head_2d")
            centre = pts(head[:2]) if head is not None else pts(((box[:2] + box[2:]) / 2))
            length = float(head[2]) * s if head is not None else 0.4 * s * float(max(box[2:] - box[:2]))
            out = viz.draw_axes_ortho(out, R, centre.reshape(2), length)
        drawn.append("R")
    title = str(sample.get("sample_id", ""))[-34:]
    out = viz.draw_text(out, title, (4, 14), scale=0.4)
    out = viz.draw_text(out, " ".join(d for d in drawn if d != "box"), (4, h - 6), scale=0.33)
    return out, drawn


def choose(dataset, n: int, seed: int, ids: list[str] | None, index: list[int] | None) -> list[int]:
    """Indices: the given ``index``, the samples named by ``ids`` (scanned in order), or ``n`` at random."""
    if index is not None:
        bad = [i for i in index if not 0 <= i < len(dataset)]
        if bad:
            raise InputError(f"index {bad} out of range [0, {len(dataset)})")
        return index
    if ids is not None:
        found = {}
        for i in range(len(dataset)):
            sid = dataset[i]["sample_id"]
            if sid in ids:
                found[sid] = i
            if len(found) == len(ids):
                break
        missing = [s for s in ids if s not in found]
        if missing:
            raise InputError(f"sample ids not in the split: {missing[:5]}")
        return [found[s] for s in ids]
    rng = np.random.default_rng(seed)
    return sorted(rng.choice(len(dataset), size=min(n, len(dataset)), replace=False).tolist())


def contact_sheet(samples: Sequence[dict[str, Any]], size: int = 256, cols: int = 4, title: str = "") -> np.ndarray:
    panels = [panel(s, size)[0] for s in samples]
    grid = viz.make_grid(panels, ncols=cols, pad=3)
    header = np.full((34, grid.shape[1], 3), 255, np.uint8)
    header = viz.draw_text(header, title, (4, 13), color=(20, 20, 20), scale=0.42, outline=None)
    header = viz.draw_text(header, LEGEND, (4, 28), color=(90, 90, 90), scale=0.32, outline=None)
    return np.concatenate([header, grid], 0)


def split_args(argv: Sequence[str]) -> tuple[dict[str, str], list[str]]:
    opts, overrides = {}, []
    for arg in argv:
        key, sep, value = arg.partition("=")
        if not sep:
            raise InputError(f"arguments are key=value, got {arg!r}\n\n{__doc__.split(chr(10) * 2)[1]}")
        (opts.__setitem__(key, value) if key in KEYS else overrides.append(arg))
    return opts, overrides


def run(argv: Sequence[str]) -> Path:
    from hydra.errors import HydraException
    from hydra.utils import instantiate

    from .export import compose_config
    opts, overrides = split_args(argv)
    data = next((o.split("=", 1)[1] for o in overrides if o.startswith("data=")), None)
    if data is None:
        raise InputError("give data=<name> (a conf/data option)")
    try:
        cfg = compose_config(overrides)
    except HydraException as err:
        raise InputError(f"{err}") from err
    split = opts.get("split", "test")
    try:
        dataset = instantiate(cfg.data).datasets[split]
        if dataset is None:
            raise InputError(f"data={data} has no {split} split")
        if hasattr(dataset, "prepare"):
            dataset.prepare()
    except InputError:
        raise
    except Exception as err:  # missing root, unreadable files: the dataset's message names them
        raise InputError(f"data={data} split={split}: {err}") from err
    ids = opts["ids"].split(",") if "ids" in opts else None
    index = [int(i) for i in opts["index"].split(",")] if "index" in opts else None
    chosen = choose(dataset, int(opts.get("n", 16)), int(opts.get("seed", 0)), ids, index)
    samples = [dataset[i] for i in chosen]
    title = f"data={data} split={split}: {len(samples)} of {len(dataset)} samples ({type(dataset).__name__})"
    sheet = contact_sheet(samples, int(opts.get("size", 256)), int(opts.get("cols", 4)), title)
    out = Path(opts.get("out", Path("outputs/show") / f"{data}_{split}.png"))
    out.parent.mkdir(parents=True, exist_ok=True)
    ok, png = cv2.imencode(".png", cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR))
    if not ok:
        raise OSError(f"could not encode {out}")
    with atomic_path(out) as tmp:
        tmp.write_bytes(png.tobytes())
    return out


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0
    try:
        out = run(argv)
    except InputError as err:
        print(f"hpe-bench show: error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
