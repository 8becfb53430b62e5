"""Figures from datasets: TRG Fig. 3 (distributions of GT translation and correction parameters)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from .. import geometry as G
from .common import plt, save


# -- from datasets -----------------------------------------------------------------------------------------
def datasets_from_specs(specs: Sequence[str], overrides: Sequence[str] = ()) -> list[tuple[str, Any]]:
    """``(label, dataset)`` for each ``data[:split]`` (a conf/data option, split default test), composed with
    the extra Hydra ``overrides`` (e.g. ``debug=default`` for the tiny sizes)."""
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    out = []
    for spec in specs:
        data, _, split = spec.partition(":")
        with initialize_config_dir(version_base="1.3", config_dir=str(Path(__file__).resolve().parents[2] / "conf")):
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
    from ..models.trg_parts import translation_to_correction

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


