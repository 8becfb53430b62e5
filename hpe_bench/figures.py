"""The papers' figures from run outputs (matplotlib, PNG + PDF): ``python -m hpe_bench.figures CMD ...`` / ``make figures``.

- ``worst RUN``: OpNet Fig. 1, the test samples with the largest rotation error, predicted (thick) and true
  (thin) head axes, predicted (blue) and true (green) landmarks, the face box (needs the run's checkpoint and
  test data).
- ``noise RUN...``: OpNet Fig. 2, spread and geodesic error of the mean prediction vs the sigma of Gaussian
  noise added to the input image (uint8 units), one line per checkpoint.
- ``uncertainty RUN...``: OpNet Fig. 3, predicted rotation uncertainty (``sigma_rot_frobenius``) vs geodesic
  error, from ``predictions.parquet``.
- ``translation DATA[:SPLIT]...``: TRG Fig. 3, distributions of ground-truth translation and correction
  parameters (s, dx, dy of paper Eq. 2) per dataset and split.
- ``yaw-bins RUN...``: geodesic and per-axis error vs |ground-truth yaw| bins, any run.
- ``all [ROOT]``: every figure the runs under ROOT allow (``make figures``); one failing figure never stops
  the others.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402

from . import geometry as G  # noqa: E402
from . import viz  # noqa: E402

SIGMAS = (0, 2, 8, 16, 32, 48, 64)  # OpNet Fig. 2 (../shared/reference/opnet.md)
PRED_COLOUR, GT_COLOUR = (40, 80, 255), (25, 200, 25)  # OpNet Fig. 1: predictions blue, ground truth green


def save(fig, out: Path, name: str) -> list[Path]:
    """Write ``<out>/<name>.png`` and ``.pdf``; close the figure."""
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{name}.png", out / f"{name}.pdf"]
    for p in paths:
        fig.savefig(p, dpi=150, bbox_inches="tight")
    plt.close(fig)
    print(f"wrote {paths[0]} (+ .pdf)")
    return paths


def _rotations(df: pd.DataFrame, prefix: str) -> torch.Tensor:
    cols = [f"{prefix}_R_{i}{j}" for i in range(3) for j in range(3)]
    return torch.as_tensor(np.array(df[cols].to_numpy(np.float64))).reshape(-1, 3, 3)


def read_run(run_dir: str | Path) -> tuple[pd.DataFrame, dict[str, Any]]:
    run_dir = Path(run_dir)
    path = run_dir / "predictions.parquet"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found (a run writes it after its test)")
    metrics = run_dir / "metrics.json"
    return pd.read_parquet(path), (json.loads(metrics.read_text()) if metrics.is_file() else {})


def _label(run_dir: Path, record: dict[str, Any]) -> str:
    return f"{record.get('experiment', '?')} seed {record.get('seed', '?')} ({run_dir.name})"


# -- from predictions.parquet ------------------------------------------------------------------------------
def yaw_bin_table(df: pd.DataFrame, rule: str, width: float = 15.0) -> pd.DataFrame:
    """Per |GT yaw| bin (``width`` degrees from 0, yaw of ``gt_R`` under ``rule``): ``lo``, ``hi``, ``count``
    and the mean of every per-sample error column present (``geodesic_deg``, ``mae_r_deg``, ...)."""
    df = df[np.isfinite(df["gt_R_00"])]
    yaw = G.matrix_to_euler(_rotations(df, "gt"), rule)[:, 0].abs().numpy()
    top = max(90.0, float(np.ceil((yaw.max() if len(yaw) else 0.0) / width + 1e-9) * width))
    edges = np.arange(0.0, top + width / 2, width)
    idx = np.clip(np.digitize(yaw, edges) - 1, 0, len(edges) - 2)
    errors = [c for c in ("geodesic_deg", "mae_r_deg", "mae_t_mm", "add_mm") if c in df]
    g = df[errors].assign(bin=idx).groupby("bin")
    table = pd.DataFrame({"lo": edges[:-1], "hi": edges[1:]})
    table["count"] = g.size().reindex(range(len(table)), fill_value=0).to_numpy()
    for c in errors:
        table[c] = g[c].mean().reindex(range(len(table))).to_numpy()
    return table


def yaw_bins(run_dirs: Sequence[str | Path], out: Path, width: float = 15.0, name: str = "yaw_bins") -> list[Path]:
    """Mean errors per |GT yaw| bin (the run's Euler rule), one line per run, sample counts below."""
    fig, (ax, axn) = plt.subplots(2, 1, figsize=(6.4, 5.6), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    for k, run_dir in enumerate(run_dirs):
        df, record = read_run(run_dir)
        rule = record.get("euler_convention", "trg")
        t = yaw_bin_table(df, rule, width)
        centres = ((t["lo"] + t["hi"]) / 2).to_numpy()
        line = ax.plot(centres, t["geodesic_deg"], "o-", label=f"geodesic, {_label(Path(run_dir), record)}")
        if "mae_r_deg" in t:
            ax.plot(centres, t["mae_r_deg"], "s--", color=line[0].get_color(), alpha=0.7, label=f"MAE_r ({rule} rule)")
        w = width / (len(run_dirs) + 1)
        axn.bar(centres + (k - (len(run_dirs) - 1) / 2) * w, t["count"], width=w, color=line[0].get_color())
    ax.set_ylabel("mean error (deg)")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    axn.set_xlabel("|ground-truth yaw| (deg)")
    axn.set_ylabel("samples")
    return save(fig, out, name)


def uncertainty(run_dirs: Sequence[str | Path], out: Path, name: str = "opnet_fig3_uncertainty") -> list[Path]:
    """OpNet Fig. 3: Frobenius norm of the predicted rotation covariance vs geodesic error, all runs pooled."""
    frames = []
    for run_dir in run_dirs:
        df, _ = read_run(run_dir)
        if "sigma_rot_frobenius" not in df:
            raise ValueError(f"{run_dir}/predictions.parquet has no sigma_rot_frobenius (an OpNet run writes it)")
        frames.append(df[["sigma_rot_frobenius", "geodesic_deg"]].dropna())
    df = pd.concat(frames)
    rho = df["sigma_rot_frobenius"].corr(df["geodesic_deg"], method="spearman")
    fig, ax = plt.subplots(figsize=(5.6, 4.2))
    ax.scatter(df["geodesic_deg"], df["sigma_rot_frobenius"], s=6, alpha=0.5)
    ax.set_xlabel("geodesic error (deg)")
    ax.set_ylabel("‖Σ_rot‖_F (rad²)")
    ax.set_yscale("log")
    ax.set_title(f"{len(df)} samples, {len(run_dirs)} run(s); Spearman ρ = {rho:.2f}", fontsize=9)
    ax.grid(alpha=0.3)
    return save(fig, out, name)


# -- from a checkpoint -------------------------------------------------------------------------------------
def checkpoint_of(run_dir: Path) -> Path:
    """The weights a run was tested with (``grid.find_checkpoint``)."""
    from .grid import find_checkpoint

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
    from .schema import collate

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
    from .schema import collate

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


# -- from datasets -----------------------------------------------------------------------------------------
def datasets_from_specs(specs: Sequence[str], overrides: Sequence[str] = ()) -> list[tuple[str, Any]]:
    """``(label, dataset)`` for each ``data[:split]`` (a conf/data option, split default test), composed with
    the extra Hydra ``overrides`` (e.g. ``debug=default`` for the tiny sizes)."""
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    out = []
    for spec in specs:
        data, _, split = spec.partition(":")
        with initialize_config_dir(version_base="1.3", config_dir=str(Path(__file__).resolve().parents[1] / "conf")):
            cfg = compose("config", overrides=[f"data={data}", *overrides])
        out += _splits(instantiate(cfg.data), data, [split or "test"])
    return out


def _splits(datamodule, name: str, splits: Sequence[str]) -> list[tuple[str, Any]]:
    datamodule.prepare_data()
    missing = [s for s in splits if datamodule.datasets.get(s) is None]
    if missing:
        raise ValueError(f"data={name} has no {', '.join(missing)} split (conf/data/{name}.yaml)")
    return [(f"{name}:{s}", datamodule.datasets[s]) for s in splits]


def translation_distributions(sources: Sequence[tuple[str, Any]], out: Path, limit: int = 2000,
                              box_scale: float = 1.2, name: str = "trg_fig3_translation") -> list[Path]:
    """TRG Fig. 3: histograms of GT t (mm) and of the correction c = (s, dx, dy) that gives it from the crop
    box (``square_box(box, box_scale)``, TRG's 1.2) and K (``models.trg_parts.translation_to_correction``),
    per ``(label, dataset)``, over at most ``limit`` samples each."""
    from .models.trg_parts import translation_to_correction

    fig, axes = plt.subplots(2, 3, figsize=(12, 6.4))
    labels = ["t_x (mm)", "t_y (mm)", "t_z (mm)", "s", "dx (box sides)", "dy (box sides)"]
    for label, ds in sources:
        rows = [s for s in (ds[i] for i in range(min(len(ds), limit))) if "t" in s and "K" in s]
        if not rows:
            raise ValueError(f"{label} has no samples with t and K labels")
        t = torch.as_tensor(np.stack([s["t"] for s in rows]), dtype=torch.float64)
        box = G.square_box(torch.as_tensor(np.stack([s["box"] for s in rows]), dtype=torch.float64), box_scale)
        K = torch.as_tensor(np.stack([s["K"] for s in rows]), dtype=torch.float64)
        values = torch.cat([t * 1000.0, translation_to_correction(t, box, K)], -1).numpy()
        for k, ax in enumerate(axes.flat):
            ax.hist(values[:, k], bins=40, alpha=0.5, density=True, label=f"{label} ({len(rows)})")
    for k, ax in enumerate(axes.flat):
        ax.set_xlabel(labels[k])
        ax.grid(alpha=0.3)
    axes[0, 0].legend(fontsize=7)
    fig.suptitle("ground-truth translation (top) and correction parameters of paper Eq. 2 (bottom)", fontsize=9)
    return save(fig, out, name)


# -- command line ------------------------------------------------------------------------------------------
def run_dirs_under(root: str | Path) -> list[Path]:
    """Run directories (with predictions.parquet) under ``root``, in path order."""
    return sorted(p.parent for p in Path(root).rglob("predictions.parquet"))


def _tag(run_dir: Path, root: Path) -> str:
    try:
        rel = run_dir.resolve().relative_to(root.resolve())
    except ValueError:
        rel = Path(run_dir.name)
    return "_".join(rel.parts) or run_dir.name


def make_all(root: str | Path, out: Path, noise_runs: int = 4, noise_limit: int = 32, draws: int = 4,
             sigmas: Sequence[float] = (0, 8, 32, 64), worst_n: int = 8, translation_limit: int = 512) -> dict[str, str]:
    """Every figure the runs under ``root`` allow; returns {figure: "ok" | reason skipped}."""
    root = Path(root)
    runs = run_dirs_under(root)
    status: dict[str, str] = {}

    def attempt(key: str, fn: Callable[[], Any]) -> None:
        try:
            fn()
            status[key] = "ok"
        except Exception as err:  # noqa: BLE001 - one missing input must not stop the other figures
            status[key] = f"skipped: {type(err).__name__}: {err}"
            print(f"{key}: {status[key]}", file=sys.stderr)

    if not runs:
        print(f"no run with predictions.parquet under {root}", file=sys.stderr)
    for run in runs:
        tag = _tag(run, root)
        attempt(f"yaw-bins {tag}", lambda: yaw_bins([run], out / tag, name="yaw_bins"))
        if (run / "checkpoints").is_dir():
            attempt(f"worst {tag}", lambda: worst(run, out / tag, worst_n, name="worst_predictions"))
    with_sigma = [r for r in runs if "sigma_rot_frobenius" in pd.read_parquet(r / "predictions.parquet").columns]
    if with_sigma:
        attempt("uncertainty", lambda: uncertainty(with_sigma, out))
    with_ckpt = [r for r in runs if (r / "checkpoints").is_dir()][-noise_runs:]
    if with_ckpt:
        attempt("noise", lambda: noise(with_ckpt, out, sigmas, draws, noise_limit))
    if runs:  # each data config the runs used (their own sizes), train and test split
        def sources():
            from hydra.utils import instantiate
            from omegaconf import OmegaConf

            configs = {}
            for r in runs:
                if (r / ".hydra" / "config.yaml").is_file():
                    data = OmegaConf.load(r / ".hydra" / "config.yaml").data
                    configs.setdefault(str(data.get("name")), data)
            return [src for name, data in configs.items()
                    for src in _splits(instantiate(data), name, [s for s in ("train", "test") if data.get(s)])]
        attempt("translation", lambda: translation_distributions(sources(), out, translation_limit))
    return status


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hpe_bench.figures", description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="outputs/figures", help="output folder (default outputs/figures)")
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("worst", help="OpNet Fig. 1: worst predictions of a run")
    p.add_argument("run")
    p.add_argument("--n", type=int, default=8)
    p = sub.add_parser("noise", help="OpNet Fig. 2: spread and error vs input noise, per checkpoint")
    p.add_argument("runs", nargs="+")
    p.add_argument("--sigmas", type=float, nargs="+", default=list(SIGMAS))
    p.add_argument("--draws", type=int, default=16)
    p.add_argument("--limit", type=int, default=64, help="test images used")
    p = sub.add_parser("uncertainty", help="OpNet Fig. 3: rotation uncertainty vs error")
    p.add_argument("runs", nargs="+")
    p = sub.add_parser("translation", help="TRG Fig. 3: GT translation and correction parameters per dataset")
    p.add_argument("data", nargs="+", help="conf/data option[:split], e.g. synthetic:train synthetic:test biwi_6dof")
    p.add_argument("--limit", type=int, default=2000, help="samples per dataset")
    p.add_argument("--box-scale", type=float, default=1.2)
    p.add_argument("--override", action="append", default=[], help="Hydra override, e.g. debug=default")
    p = sub.add_parser("yaw-bins", help="error vs |yaw| bins, one line per run")
    p.add_argument("runs", nargs="+")
    p.add_argument("--width", type=float, default=15.0)
    p = sub.add_parser("all", help="every figure the runs under ROOT allow (make figures)")
    p.add_argument("root", nargs="?", default="outputs")
    args = parser.parse_args(argv)
    out = Path(args.out)
    try:
        if args.cmd == "worst":
            worst(args.run, out, args.n)
        elif args.cmd == "noise":
            noise(args.runs, out, args.sigmas, args.draws, args.limit)
        elif args.cmd == "uncertainty":
            uncertainty(args.runs, out)
        elif args.cmd == "translation":
            translation_distributions(datasets_from_specs(args.data, args.override), out, args.limit, args.box_scale)
        elif args.cmd == "yaw-bins":
            yaw_bins(args.runs, out, args.width)
        else:
            status = make_all(args.root, out)
            return 0 if not status or any(v == "ok" for v in status.values()) else 1
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
