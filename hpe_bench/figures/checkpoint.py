"""Figures that re-run a run's checkpoint: OpNet Fig. 1 (worst predictions), Fig. 2 (input noise)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from .. import geometry as G
from .. import viz
from .common import GT_COLOUR, PRED_COLOUR, SIGMAS, _label, plt, read_run, save


# -- from a checkpoint -------------------------------------------------------------------------------------
def checkpoint_of(run_dir: Path) -> Path:
    """The weights a run was tested with (``grid.find_checkpoint``)."""
    from ..grid import find_checkpoint

    ckpt = find_checkpoint(run_dir)
    if ckpt is None:
        raise FileNotFoundError(f"no checkpoint under {run_dir / 'checkpoints'}")
    return ckpt


def load_model_and_test_set(run_dir: str | Path):
    """The run's module (weights from its checkpoint, eval mode) and test dataset, from ``.hydra/config.yaml``."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf, open_dict

    run_dir = Path(run_dir)
    cfg_path = run_dir / ".hydra" / "config.yaml"
    if not cfg_path.is_file():
        raise FileNotFoundError(f"{cfg_path} not found (written by Hydra at the start of a run)")
    cfg = OmegaConf.load(cfg_path)
    with open_dict(cfg):
        if "pretrained" in cfg.model.get("net", {}):
            cfg.model.net.pretrained = False  # the checkpoint holds the weights: no download
    datamodule = instantiate(cfg.data)
    datamodule.prepare_data()
    module = instantiate(cfg.model, loss=instantiate(cfg.loss) if cfg.get("loss") else None,
                         euler_rule=cfg.get("euler_rule") or datamodule.euler_rule)
    state = torch.load(checkpoint_of(run_dir), map_location="cpu", weights_only=False)["state_dict"]
    missing = [k for k in module.load_state_dict(state, strict=False).missing_keys if k.startswith("net.")]
    if missing:
        raise ValueError(f"{checkpoint_of(run_dir)} lacks network weights, e.g. {missing[:3]}")
    return module.eval(), datamodule.datasets["test"]


def _samples(dataset, ids: Sequence[str] | None, limit: int) -> list[dict[str, Any]]:
    """The samples with these ids (scanning the dataset in order), or its first ``limit`` with a rotation label."""
    want, found = (set(ids) if ids is not None else None), []
    for i in range(len(dataset)):
        s = dataset[i]
        if (want is None and "R" in s) or (want is not None and s["sample_id"] in want):
            found.append(s)
        if len(found) >= (len(want) if want is not None else limit):
            break
    if ids is not None:
        order = {sid: k for k, sid in enumerate(ids)}
        found.sort(key=lambda s: order[s["sample_id"]])
    return found


def _view(img: np.ndarray, box: np.ndarray, size: int = 256, scale: float = 1.6):
    """The square region ``scale`` x the box around it, resized to ``size`` px (white where it leaves the
    image), and its affine ``A (3, 3)`` from full-image to view pixels (``geometry.crop_transform``)."""
    import cv2

    sq = G.square_box(torch.as_tensor(box, dtype=torch.float64), scale)
    A = G.crop_transform(sq, size)
    view = cv2.warpAffine(img, A[:2].numpy(), (size, size), flags=cv2.INTER_LINEAR, borderValue=(255, 255, 255))
    return view, A


def _draw_sample(img: np.ndarray, K: np.ndarray, box: np.ndarray, poses, landmarks) -> np.ndarray:
    """Crop-and-zoom first, then draw in view pixels (intrinsics ``A K``, points through ``A``), so lines
    stay thin on small images. poses: ``(R, t or None, thickness)``; landmarks: ``(points, colour)``."""
    view, A = _view(img, box)
    Kv = (A @ torch.as_tensor(K, dtype=torch.float64)).numpy()
    bv = G.transform_boxes(A[None], torch.as_tensor(box, dtype=torch.float64)[None])[0].numpy()
    for R, t, thick in poses:
        if t is not None:
            view = viz.draw_axes(view, R, t, Kv, thickness=thick)
        else:  # no translation: orthographic axes at the box centre
            view = viz.draw_axes_ortho(view, R, (bv[:2] + bv[2:]) / 2, (bv[2] - bv[0]) / 2, thick)
    for pts, colour in landmarks:
        pv = G.apply_transform_2d(A, torch.as_tensor(np.asarray(pts)[:, :2], dtype=torch.float64)).numpy()
        view = viz.draw_landmarks(view, pv, colour, radius=1.5)
    return viz.draw_box(view, bv, color=(255, 200, 0), thickness=1)


@torch.no_grad()
def worst(run_dir: str | Path, out: Path, n: int = 8, ncols: int = 4, name: str | None = None) -> list[Path]:
    """OpNet Fig. 1: the ``n`` test samples with the largest geodesic error of the run."""
    from ..schema import collate

    run_dir = Path(run_dir)
    df, record = read_run(run_dir)
    picked = df.dropna(subset=["geodesic_deg"]).nlargest(n, "geodesic_deg")
    module, dataset = load_model_and_test_set(run_dir)
    batch = collate(_samples(dataset, list(picked["sample_id"]), n))
    pred = module(batch)
    K = module.crop.full_intrinsics(batch).numpy()
    nrows = int(np.ceil(len(picked) / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(3 * ncols, 3.2 * nrows), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i >= len(batch["sample_id"]):
            continue
        img = batch["image"][i].permute(1, 2, 0).numpy().astype(np.uint8)
        poses, marks = [], []
        if bool(batch["has_R"][i]):
            poses.append((batch["R"][i].numpy(), batch["t"][i].numpy() if bool(batch["has_t"][i]) else None, 1))
        poses.append((pred["R"][i].numpy(), pred["t"][i].numpy() if "t" in pred else None, 3))
        if bool(batch["has_landmarks_2d"][i]):
            marks.append((batch["landmarks_2d"][i].numpy(), GT_COLOUR))
        if "landmarks_2d" in pred:
            marks.append((pred["landmarks_2d"][i].numpy(), PRED_COLOUR))
        ax.imshow(_draw_sample(img, K[i], batch["box"][i].numpy(), poses, marks))
        err = picked.set_index("sample_id").loc[batch["sample_id"][i], "geodesic_deg"]
        ax.set_title(f"{batch['sample_id'][i]}\ngeodesic {err:.1f}°", fontsize=7)
    fig.suptitle(f"worst rotation errors: {_label(run_dir, record)}; predicted thick / blue landmarks, "
                 "true thin / green", fontsize=8)
    return save(fig, out, name or f"opnet_fig1_worst_{record.get('experiment', 'run')}")


@torch.no_grad()
def noise(run_dirs: Sequence[str | Path], out: Path, sigmas: Sequence[float] = SIGMAS, draws: int = 16,
          limit: int = 64, seed: int = 0, name: str = "opnet_fig2_noise") -> list[Path]:
    """OpNet Fig. 2: per checkpoint and sigma, ``draws`` noisy copies of each of ``limit`` test images; spread =
    RMS geodesic distance of the draws from their mean rotation, error = geodesic error of that mean vs GT,
    both averaged over the images. The mean rotation is the chordal mean (mean matrix projected to SO(3));
    the paper renormalises the mean quaternion, which agrees to second order for tight distributions."""
    from ..schema import collate

    fig, (ax_s, ax_e) = plt.subplots(1, 2, figsize=(10, 4))
    gen = torch.Generator().manual_seed(seed)
    for run_dir in run_dirs:
        module, dataset = load_model_and_test_set(run_dir)
        batch = collate(_samples(dataset, None, limit))
        clean, R_gt = batch["image"].float(), batch["R"].double()
        spread, error = [], []
        for sigma in sigmas:
            Rs = []
            for _ in range(draws):
                noisy = (clean + sigma * torch.randn(clean.shape, generator=gen)).clamp(0, 255).round() / 255.0
                Rs.append(module({**batch, "image": noisy})["R"].double())
            Rs = torch.stack(Rs)                      # (draws, N, 3, 3)
            R_mean = G.project_to_so3(Rs.mean(0))     # (N, 3, 3)
            d = G.geodesic_angle(R_mean.expand_as(Rs), Rs)
            spread.append(float(torch.rad2deg(d.pow(2).mean(0).sqrt()).mean()))
            error.append(float(torch.rad2deg(G.geodesic_angle(R_mean, R_gt)).mean()))
        _, record = read_run(run_dir)
        label = _label(Path(run_dir), record)
        ax_s.plot(sigmas, spread, "o-", label=label)
        ax_e.plot(sigmas, error, "o-", label=label)
    for ax, title in ((ax_s, "spread (RMS geodesic from the mean, deg)"), (ax_e, "geodesic error of the mean (deg)")):
        ax.set_xlabel("input noise σ (uint8 units)")
        ax.set_title(title, fontsize=9)
        ax.grid(alpha=0.3)
    ax_e.legend(fontsize=7)
    fig.suptitle(f"{len(batch['sample_id'])} test images x {draws} draws per σ", fontsize=9)
    return save(fig, out, name)


