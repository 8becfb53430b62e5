"""Figures from predictions.parquet alone: error vs |yaw| bins (any run), OpNet Fig. 3 (uncertainty vs error)."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from .. import geometry as G
from .common import _label, _rotations, plt, read_run, save


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
    constant = df["sigma_rot_frobenius"].nunique() < 2 or df["geodesic_deg"].nunique() < 2
    rho = float("nan") if constant else df["sigma_rot_frobenius"].corr(df["geodesic_deg"], method="spearman")
    fig, ax = plt.subplots(figsize=(5.6, 4.2))
    ax.scatter(df["geodesic_deg"], df["sigma_rot_frobenius"], s=6, alpha=0.5)
    ax.set_xlabel("geodesic error (deg)")
    ax.set_ylabel("‖Σ_rot‖_F (rad²)")
    ax.set_yscale("log")
    ax.set_title(f"{len(df)} samples, {len(run_dirs)} run(s); Spearman ρ = {rho:.2f}", fontsize=9)
    ax.grid(alpha=0.3)
    return save(fig, out, name)


