"""OpNet ``paper``-branch checkpoints (``NetworkWithPointHead``, MobileNetV1 or ResNet18, no BlurPool) ->
``hpe_bench.models.opnet.OpNet``.

The tensors are the same up to names: the backbone maps block by block, each head by name, and the two BFM
buffers (``landmarks.deformablekeypoints.keypts`` / ``keyeigvecs``, persistent in the authors' file) are
dropped because OpNet rebuilds them from its ``bfm68`` asset; they are compared with the asset and the
difference recorded (the authors' BFM pickle may differ from the asset, e.g. in the eye keypoints 36-47).
The outputs are in the authors' normalised crop frame (``x_norm = 2 u / 129 - 1``, ``u`` the crop's pixel-edge
coordinate): evaluate with ``model=opnet_code`` (``CropInput(mapping="pixel_edge", resize="opnet_code")``).
"""
from __future__ import annotations

from typing import Any, Iterable, Mapping

import torch
from torch import Tensor

from ..assets import bfm68
from . import CheckpointImportError, check_layout

BACKBONES = ("mobilenetv1", "resnet18")
BFM_KEYS = ("landmarks.deformablekeypoints.keypts", "landmarks.deformablekeypoints.keyeigvecs")
_MOBILENET_BLOCKS = ("dw2_1", "dw2_2", "dw3_1", "dw3_2", "dw4_1", "dw4_2", "dw5_1", "dw5_2", "dw5_3", "dw5_4",
                     "dw5_5", "dw5_6", "dw6")
_MOBILENET_PARTS = {"dw": "conv_dw", "bn1": "bn_dw", "pw": "conv_sep", "bn2": "bn_sep"}
_HEADS = {  # hpe_bench module -> authors' module
    "quat_head": "quatnet.linear", "xy_head": "posnet.linear_xy", "size_head": "posnet.linear_size",
    "box_head": "boxnet.linear", "rot_unc.linear": "quatnet.uncertainty_net.lin",
    "rot_unc.bn": "quatnet.uncertainty_net.bn", "coord_unc.linear": "posnet.scales.lin",
    "coord_unc.bn": "posnet.scales.bn", "roi_scale.h": "boxnet.scales.hidden_scale",
    "shape_head": "landmarks.shapenet", "points_scale.h": "landmarks.point_distrib_scales.hidden_scale",
    "shape_scale.h": "landmarks.shape_distrib_scales.hidden_scale",
}


def detect(keys: Iterable[str]) -> bool:
    """OpNet's backbone is ``convnet.*``; its heads ``boxnet``, ``posnet``, ``quatnet``, ``landmarks``."""
    return any(k.startswith(("convnet.", "quatnet.", "posnet.", "boxnet.")) for k in keys)


def backbone_of(keys: Iterable[str], source: str) -> str:
    keys = set(keys)
    if any(k.endswith(".kernel") for k in keys):
        raise CheckpointImportError(
            f"{source} is a BlurPool OpNet checkpoint (buffers {sorted(k for k in keys if k.endswith('.kernel'))[:3]}"
            f"...): trained without --no-blurpool, a different network (blur before every stride-2 conv) than the "
            f"paper's; hpe_bench's OpNet cannot run it")
    if "convnet.conv1.weight" in keys or any(k.startswith("convnet.dw") for k in keys):
        return "mobilenetv1"
    if any(k.startswith("convnet.layers.") for k in keys):
        return "resnet18"
    raise CheckpointImportError(f"{source}: OpNet backbone not recognised (neither 'convnet.conv1' / 'convnet.dw*' "
                                f"MobileNetV1 nor 'convnet.layers.*' ResNet18 keys)")


def authors_key(key: str, backbone: str) -> str:
    """The authors' name of hpe_bench OpNet state_dict key ``key``."""
    for ours, theirs in _HEADS.items():
        if key == ours or key.startswith(ours + "."):
            return theirs + key[len(ours):]
    if not key.startswith("backbone."):
        raise KeyError(key)
    rest = key[len("backbone."):]
    if backbone == "mobilenetv1":
        if rest.startswith("stem.0."):
            return "convnet.conv1." + rest[len("stem.0."):]
        if rest.startswith("stem.1."):
            return "convnet.bn1." + rest[len("stem.1."):]
        _, i, part, leaf = rest.split(".", 3)  # blocks.<i>.<part>.<leaf>
        return f"convnet.{_MOBILENET_BLOCKS[int(i)]}.{_MOBILENET_PARTS[part]}.{leaf}"
    first, _, tail = rest.partition(".")
    if first in ("conv1", "bn1"):
        return f"convnet.layers.{0 if first == 'conv1' else 1}.{tail}"
    return f"convnet.layers.{int(first[len('layer'):]) + 3}.{tail}"  # layer1-4 -> layers.4-7


def build_net(variant: Mapping[str, Any]) -> torch.nn.Module:
    from ..models.opnet import OpNet
    return OpNet(backbone=variant["backbone"], landmarks=True)


def convert(state: Mapping[str, Tensor], source: str) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Authors' OpNet state_dict -> (hpe_bench ``OpNet`` state_dict, import report)."""
    backbone = backbone_of(state.keys(), source)
    variant = {"backbone": backbone}
    ours = build_net(variant).state_dict()
    names = {k: authors_key(k, backbone) for k in ours}
    expected = {names[k]: tuple(v.shape) for k, v in ours.items()}
    expected.update({BFM_KEYS[0]: (68, 3), BFM_KEYS[1]: (50, 68, 3)})
    check_layout(state, expected, source, f"OpNet {backbone} (NetworkWithPointHead, paper branch)")
    net_state = {k: state[names[k]].to(v.dtype).clone() for k, v in ours.items()}
    asset = bfm68()
    mean = torch.as_tensor(asset["mean"], dtype=torch.float32)
    basis = torch.as_tensor(asset["basis"], dtype=torch.float32).permute(2, 0, 1)  # (68, 3, 50) -> (50, 68, 3)
    d_mean = (state[BFM_KEYS[0]].float() - mean).abs()
    d_basis = (state[BFM_KEYS[1]].float() - basis).abs()
    report = {
        "variant": variant,
        "model_preset": "opnet_code" if backbone == "mobilenetv1" else "opnet_resnet18_code",
        "dropped_buffers": {
            BFM_KEYS[0]: {"max_abs_diff_to_asset": float(d_mean.max()),
                          "rows_differing": [int(i) for i in torch.nonzero(d_mean.amax(-1) > 1e-6).flatten()]},
            BFM_KEYS[1]: {"max_abs_diff_to_asset": float(d_basis.max())},
        },
    }
    return net_state, report
