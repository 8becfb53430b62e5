"""TRG-Release checkpoints (``state_dict.bin``: 3 iterations, 192 px, ResNet18) -> ``hpe_bench.models.trg.TRG``.

Layout differences undone here (``shared/reference/checkpoints/README.md``), the conventions themselves in
``hpe_bench.geometry.reference_code``:

- names: ``feature_extractor`` -> ``backbone``, ``deconv_layers.{0,1,3,4,6,7}`` -> ``deconvs.{i}.{0,1}``,
  ``laf_extractor.i.conv{0,1,2}`` (Conv1d, kernel 1) -> ``reducers.i.fc{1,2,3}`` (Linear), ``regressor.i.fc1/fc2/
  decshape/decpose`` -> ``regressors.i.trunk.0/trunk.2/vertex_head/pose_head``, ``predict_68_lmk.0`` -> ``heatmap``;
- ``fc1`` input columns: point features channel-major (``c N + n``) -> point-major (``n 5 + c``); the first
  iteration's 18x18 grid x-major -> y-major; 6D row-major -> column-major;
- ``decpose`` rows: 6D permutation;
- nothing is rescaled: hpe_bench's regressors keep the authors' parametrisation (their box offsets, 2 x the
  paper's, and I_bbox with tau / f x 4 are fixed scales of ``ScaledLinear`` layers, ``TRG._authors_scales``), so
  every weight is the authors' entry, permuted, and trains at the authors' rate under Adam;
- ``parametrisation``: hpe_bench's marker buffer, set to the current ``TRG.PARAMETRISATION``;
- constant buffers (``points_grid``, ``regressor.i.init_face`` / ``init_head_pose``) dropped: TRG rebuilds them
  from its assets; they are compared and the difference recorded.

The code's own input conventions (image-centre I_bbox and translation, sampler divisor 192, heatmap cells
``k / 48``, the 191 / b image warp) are switches of ``CropInput`` and ``TRG``: ``model=trg_code``.
"""
from __future__ import annotations

from typing import Any, Iterable, Mapping

import torch
from torch import Tensor

from .. import geometry as G
from ..assets import arkit_face
from . import CheckpointImportError, check_layout

GRID = 18
N_ITER = 3
_DECONV = {"0": "deconvs.0.0", "1": "deconvs.0.1", "3": "deconvs.1.0", "4": "deconvs.1.1", "6": "deconvs.2.0",
           "7": "deconvs.2.1"}
_REGRESSOR = {"fc1": "trunk.0", "fc2": "trunk.2", "decshape": "vertex_head", "decpose": "pose_head"}
MARKER = "parametrisation"  # hpe_bench's own buffer (models/trg.py), not in the authors' file


def detect(keys: Iterable[str]) -> bool:
    keys = set(keys)
    return any(k.startswith("feature_extractor.") for k in keys) and any(k.startswith("regressor.") for k in keys)


def build_net(variant: Mapping[str, Any] | None = None) -> torch.nn.Module:
    from ..models.trg import TRG
    return TRG(pretrained=False, **(variant or {}))


def _fc1_columns(n_points: int, grid: bool, n_in: int) -> Tensor:
    """``cols`` with hpe_bench fc1 column j = the authors' column ``cols[j]`` (a permutation, no scaling)."""
    order = G.grid_order_permutation(GRID) if grid else torch.arange(n_points)
    feat = (torch.arange(5)[None, :] * n_points + order[:, None]).flatten()  # [n_p * 5 + c] -> c N + n_a
    cols = torch.cat([feat, torch.arange(5 * n_points, n_in)])  # then 915 vertex coordinates, 6D, c, I_bbox
    six = n_in - 12
    cols[six:six + 6] = six + torch.tensor(G.SIXD_FROM_ROW_MAJOR)
    return cols


def _pose_rows() -> Tensor:
    """``rows`` with hpe_bench decpose row j = the authors' row ``rows[j]``."""
    return torch.cat([torch.tensor(G.SIXD_FROM_ROW_MAJOR), torch.arange(6, 9)])


def convert(state: Mapping[str, Tensor], source: str) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Authors' TRG state_dict -> (hpe_bench ``TRG`` state_dict, import report)."""
    net = build_net()
    ours = {k: v for k, v in net.state_dict().items() if k != MARKER}
    names = {k: _authors_name(k) for k in ours}
    expected = {names[k]: tuple(v.shape) + ((1,) if _is_conv1d(k) else ()) for k, v in ours.items()}
    expected["points_grid"] = (1, 2, GRID * GRID)
    for i in range(N_ITER):
        expected.update({f"regressor.{i}.init_face": (1, 1220, 3), f"regressor.{i}.init_head_pose": (1, 9)})
    check_layout(state, expected, source, "TRG-Release (3 iterations, 192 px)")

    net_state: dict[str, Tensor] = {MARKER: torch.tensor(net.PARAMETRISATION)}
    rows = _pose_rows()
    for k, v in ours.items():
        x = state[names[k]].float() if v.is_floating_point() else state[names[k]].to(v.dtype)
        if _is_conv1d(k):
            x = x.squeeze(-1)
        elif k.endswith("trunk.0.weight"):
            i = int(k.split(".")[1])
            n_points = GRID * GRID if i == 0 else len(arkit_face()["subsample_305"])
            x = x[:, _fc1_columns(n_points, i == 0, x.shape[1])]
        elif k.endswith("pose_head.weight") or k.endswith("pose_head.bias"):
            x = x[rows]
        net_state[k] = x.to(v.dtype).contiguous()
    return net_state, {"variant": {}, "model_preset": "trg_code", "dropped_buffers": _compare_constants(state)}


def _is_conv1d(key: str) -> bool:
    """The point reductions are Conv1d (kernel 1) in the authors' code, Linear here."""
    return key.startswith("reducers.") and key.endswith(".weight")


def _authors_name(key: str) -> str:
    """The authors' name of hpe_bench key ``key`` (for naming missing keys)."""
    for theirs, ours in _DECONV.items():
        if key.startswith(ours + "."):
            return f"deconv_layers.{theirs}.{key[len(ours) + 1:]}"
    head, _, rest = key.partition(".")
    if head == "backbone":
        return "feature_extractor." + rest
    if head == "heatmap":
        return "predict_68_lmk.0." + rest
    if head == "reducers":
        i, fc, leaf = rest.split(".")
        return f"laf_extractor.{i}.conv{int(fc[-1]) - 1}.{leaf}"
    if head == "regressors":
        i, rest2 = rest.split(".", 1)
        for theirs, ours in _REGRESSOR.items():
            if rest2.startswith(ours + "."):
                return f"regressor.{i}.{theirs}.{rest2[len(ours) + 1:]}"
    raise CheckpointImportError(f"no authors' name for hpe_bench TRG key {key!r}")


def _compare_constants(state: Mapping[str, Tensor]) -> dict[str, Any]:
    """Max |authors' constant buffer - the value hpe_bench rebuilds from its assets| per buffer."""
    face = arkit_face()
    lin = torch.linspace(-1.0, 1.0, GRID)
    xv, yv = torch.meshgrid(lin, lin, indexing="ij")
    grid = torch.stack([xv.reshape(-1), yv.reshape(-1)])[None]
    mean = torch.as_tensor(face["mean_vertices"], dtype=torch.float32)[None]
    sixd = G.matrix_to_sixd(torch.as_tensor(face["init_rotation"], dtype=torch.float32))
    init = torch.cat([G.sixd_to_row_major(sixd), torch.tensor([1.0, 0.0, 0.0])])[None]
    out = {"points_grid": float((state["points_grid"].float() - grid).abs().max())}
    for i in range(N_ITER):
        out[f"regressor.{i}.init_face"] = float((state[f"regressor.{i}.init_face"].float() - mean).abs().max())
        out[f"regressor.{i}.init_head_pose"] = float((state[f"regressor.{i}.init_head_pose"].float() - init).abs().max())
    return {k: {"max_abs_diff_to_asset": v} for k, v in out.items()}
