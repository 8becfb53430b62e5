"""TRG: head Translation, Rotation and face Geometry network (Chun & Chang, ECCV 2024).

ResNet18 -> three deconv stages (12, 24, 48 maps) -> per iteration: sample point features (an 18x18 grid
first, then the previous face's 305-vertex subset projected into the crop), reduce them to 5-d per point,
and regress residuals of the dense face (1220x3, head frame), the 6D rotation and the box correction
c = (s, dx, dy). Translation is never regressed directly: it follows from c, the box and the intrinsics
(paper Eq. 2, supplementary Sec. 7), see ``trg_parts.correction_to_translation``.

The paper's ablation baselines are constructor switches (one YAML each in conf/model/trg_*.yaml, mapping in
docs/reproducing.md): ``iterations`` / ``multiscale`` (Table 1 "w/o MS"), ``translation`` (Table 1
T_t-prediction, Table 6 local-to-global and camera-space offset), ``sampling="grid"`` (Table 1 grid-sampled),
``geometry=False, heatmaps=False`` (Table 1 landmark-free), ``bbox_info`` (Table 7). All switches act at
construction; ``forward`` has no data-dependent Python control flow.

Coordinates: the sampler and the heatmap landmarks use crop pixels ``x in [0, S - 1]`` mapped linearly
onto ``[-1, 1]`` (``geometry.crop_to_normalized``), which is exactly how ``grid_sample(align_corners=True)`` reads a
feature map covering the crop (its first/last cell centres at -1/+1). All other geometry comes from
``hpe_bench.geometry``.
"""
from __future__ import annotations

import logging
from typing import Sequence

import torch
from torch import Tensor, nn

from .. import geometry as G
from ..assets import arkit_face
from ..deploy.spec import POSE_OUTPUTS, ExportSpec
from . import register_model
from .backbones import create_backbone
from .mixed_precision import autocast_off, full_precision
from .trg_parts import (FACE_SIZE, TRANSLATION_RULES, FaceRegressor, PointReduction, deconv_block, local_frame,
                        params_to_translation, sample_features, soft_argmax)

log = logging.getLogger(__name__)
SAMPLING = ("projected", "grid")
BBOX_INFO = {"full": 3, "no_size": 2, "none": 0}  # Table 7: I_bbox, I_bbox without b/f, no I_bbox


@register_model("trg")
class TRG(nn.Module):
    """TRG from ``CropInput`` outputs (192x192 RGB crop, ``box``, ``K``, ``K_crop``, ``A``, ``bbox_info``).

    Args:
        iterations: regression iterations (3 in the paper). Iteration i samples map ``min(i, 2)`` of the
            12/24/48 maps (phi_1..phi_3) when ``multiscale``, else always phi_1 (the 12x12 map: the paper's
            "w/o MS" baselines "utilize only phi_1"); the heatmaps always come from the last map.
        pretrained: ImageNet ResNet18 weights when available (offline-safe fallback to random init).
        grid_size: side of the first iteration's sampling grid (18 -> 324 points).
        face_size, principal: translation rule constants, see ``trg_parts.correction_to_translation``.
            ``principal="image_centre"`` needs ``inputs["image_size"] (B, 2) = (W, H)`` of the full images.
        translation: ``"correction"`` (TRG), ``"direct"`` (T_t-prediction), ``"local_to_global"`` (img2pose-style),
            ``"camera_offset"`` (CLIFF-style); see ``trg_parts``.
        init_translation: initial parameters for ``translation="direct"`` (metres; default the asset's
            ``init_translation``). The other rules start from a face filling the box: c0 = (1, 0, 0),
            (1, 0, 0) and (0, 0, 0.4).
        sampling: ``"projected"`` (TRG: the projected 305-vertex subset from iteration 2 on) or ``"grid"``
            (the grid at every iteration: the grid-sampled and landmark-free baselines).
        geometry: regress the dense face (False: the landmark-free baseline, no vertices in or out).
        heatmaps: the 68-heatmap branch (False: no ``landmarks_2d`` / ``heatmap_landmarks`` outputs).
        bbox_info: ``"full"`` I_bbox = (tau_x/f, tau_y/f, b/f), ``"no_size"`` without b/f, ``"none"``.
        dropout, hidden: regressor dropout and width (1024 in the paper; smaller only for fast tests).
        sampler_divisor: ``"size_minus_one"`` (projected points ``p / (S - 1) * 2 - 1``, consistent with
            ``grid_sample(align_corners=True)``) or ``"size"`` (``p / S``: the TRG code, for its released weights).
        heatmap_cells: ``"linspace"`` (heatmap cell centres span the crop) or ``"trg_code"`` (cell k at crop
            pixel ``k S / 48``, as the TRG code's soft-argmax). Both: ``geometry.reference_code``, ``model=trg_code``.

    Parametrisation: the regressors' weights are the authors' entries (``_authors_scales``), so Adam trains them
    at the authors' rates; the state dict carries ``parametrisation`` (``PARAMETRISATION``), and one written
    before it is converted on load.
    """

    def __init__(self, iterations: int = 3, pretrained: bool = False, multiscale: bool = True,
                 grid_size: int = 18, backbone: str = "resnet18", face_size: float = FACE_SIZE,
                 principal: str = "principal_point", n_landmarks: int = 68, channels: int = 256,
                 dropout: float = 0.5, translation: str = "correction",
                 init_translation: Sequence[float] | None = None, sampling: str = "projected",
                 geometry: bool = True, heatmaps: bool = True, bbox_info: str = "full", hidden: int = 1024,
                 sampler_divisor: str = "size_minus_one", heatmap_cells: str = "linspace"):
        super().__init__()
        if translation not in TRANSLATION_RULES:
            raise ValueError(f"model.net.translation must be one of {TRANSLATION_RULES}, got {translation!r}")
        if sampling not in SAMPLING:
            raise ValueError(f"model.net.sampling must be one of {SAMPLING}, got {sampling!r}")
        if bbox_info not in BBOX_INFO:
            raise ValueError(f"model.net.bbox_info must be one of {tuple(BBOX_INFO)}, got {bbox_info!r}")
        if not geometry and sampling == "projected":
            raise ValueError("model.net.sampling='projected' needs geometry=true (projected points are face "
                             "vertices); the landmark-free baseline uses sampling='grid'")
        if int(iterations) < 1:
            raise ValueError(f"model.net.iterations must be >= 1, got {iterations}")
        self.iterations, self.multiscale = int(iterations), bool(multiscale)
        self.face_size, self.principal = float(face_size), principal
        self.translation, self.sampling, self.geometry = translation, sampling, bool(geometry)
        self.bbox_info = bbox_info
        if sampler_divisor not in G.SAMPLER_DIVISORS:
            raise ValueError(f"model.net.sampler_divisor must be one of {G.SAMPLER_DIVISORS}, got {sampler_divisor!r}")
        if heatmap_cells not in G.HEATMAP_CELL_RULES:
            raise ValueError(f"model.net.heatmap_cells must be one of {G.HEATMAP_CELL_RULES}, got {heatmap_cells!r}")
        self.sampler_divisor, self.heatmap_cells = sampler_divisor, heatmap_cells
        # layer4 without pooling: 192x192 -> 512x6x6.
        self.backbone = create_backbone(backbone, pretrained=pretrained, features_only=True, out_indices=(4,))
        c4 = self.backbone.feature_info.channels()[-1]
        self.deconvs = nn.ModuleList([deconv_block(c4, channels), deconv_block(channels, channels),
                                      deconv_block(channels, channels)])
        self.heatmap = nn.Conv2d(channels, n_landmarks, 1) if heatmaps else None

        face = arkit_face()
        mean = torch.as_tensor(face["mean_vertices"], dtype=torch.float32)
        self.register_buffer("init_vertices", mean, persistent=False)
        self.register_buffer("init_sixd", G.matrix_to_sixd(torch.as_tensor(face["init_rotation"], dtype=torch.float32)),
                             persistent=False)
        init_p = {"correction": (1.0, 0.0, 0.0), "camera_offset": (1.0, 0.0, 0.0),
                  # z_n = 0.4 puts the head at Tz = 0.2 f / b, the depth of c0 = (1, 0, 0)
                  "local_to_global": (0.0, 0.0, 0.4),
                  "direct": tuple(init_translation) if init_translation is not None
                  else tuple(float(v) for v in face["init_translation"])}[translation]
        self.register_buffer("init_params", torch.tensor(init_p, dtype=torch.float32), persistent=False)
        self.register_buffer("subsample", torch.as_tensor(face["subsample_305"], dtype=torch.long), persistent=False)
        lin = torch.linspace(-1.0, 1.0, grid_size)
        gy, gx = torch.meshgrid(lin, lin, indexing="ij")
        self.register_buffer("grid", torch.stack([gx, gy], -1).view(-1, 2), persistent=False)

        n_sub = len(face["subsample_305"])
        # previous 305 vertices (if any), 6D rotation, translation parameters, I_bbox
        state = (3 * n_sub if self.geometry else 0) + 6 + 3 + BBOX_INFO[bbox_info]
        n_points = [grid_size ** 2 if (i == 0 or sampling == "grid") else n_sub for i in range(self.iterations)]
        self.reducers = nn.ModuleList([PointReduction(channels) for _ in range(self.iterations)])
        self.regressors = nn.ModuleList([
            FaceRegressor(5 * n + state, mean.shape[0] if self.geometry else 0, hidden, dropout) for n in n_points])
        for reg in self.regressors:
            self._authors_scales(reg)
        # Marks the parametrisation of the state dict (the key is absent from checkpoints written before it).
        self.register_buffer("parametrisation", torch.tensor(self.PARAMETRISATION), persistent=True)

    PARAMETRISATION = 2
    """2: the regressors' weights are the authors' entries (issue 19). 1 (a state dict without ``parametrisation``):
    they acted on and returned the paper's units (dx, dy and I_bbox's tau / f unscaled); ``_load_from_state_dict``
    converts such a state dict to the same function."""

    def _authors_scales(self, reg: nn.Module) -> None:
        """Fixed scales between the authors' regressor and the paper's units (``ScaledLinear``).

        Adam's step is per entry and ignores a rescaling of an input or output, so a weight that acts on half the
        authors' value trains at another rate than theirs even where the function is the same. The authors'
        regressor reads and writes the box offsets as ``TRG_CODE_OFFSET_SCALE`` x the paper's (dx, dy) and reads
        I_bbox's centre terms x ``TRG_CODE_BBOX_CENTRE_SCALE``; scaling the first layer's inputs and the pose head's
        dx, dy outputs by those constants keeps every weight the authors' entry, initialised as theirs (PyTorch's
        default draws), while ``translation_params_iters`` and ``bbox_info`` stay in the paper's units.
        """
        first, n_info = reg.trunk[0], BBOX_INFO[self.bbox_info]
        info0 = first.in_features - n_info  # the regressor input ends with (6D, p, I_bbox)
        if self.translation == "correction":
            first.in_scale[info0 - 2:info0] = G.TRG_CODE_OFFSET_SCALE
            reg.pose_head.out_scale[7:9] = 1.0 / G.TRG_CODE_OFFSET_SCALE
        first.in_scale[info0:info0 + min(n_info, 2)] = G.TRG_CODE_BBOX_CENTRE_SCALE

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        key = prefix + "parametrisation"
        if key not in state_dict and any(k.startswith(prefix + "regressors.") for k in state_dict):
            # Written before issue 19: W_old x = out_scale (W_new (in_scale x)) gives W_new = W_old / (out in).
            # (state_dict is load_state_dict's own copy; the caller's tensors are not modified.)
            log.info("TRG state dict without 'parametrisation' (written before issue 19): converting the "
                     "regressors to the authors' parametrisation (same function)")
            for i, reg in enumerate(self.regressors):
                for name, layer in (("trunk.0", reg.trunk[0]), ("pose_head", reg.pose_head)):
                    w, b = f"{prefix}regressors.{i}.{name}.weight", f"{prefix}regressors.{i}.{name}.bias"
                    if w in state_dict:
                        v = state_dict[w]
                        state_dict[w] = (v / layer.out_scale.to(v)[:, None] / layer.in_scale.to(v)[None, :]).to(v.dtype)
                    if b in state_dict:
                        v = state_dict[b]
                        state_dict[b] = (v / layer.out_scale.to(v)).to(v.dtype)
            state_dict[key] = torch.tensor(self.PARAMETRISATION)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)

    @full_precision
    def sampling_points(self, vertices: Tensor, R: Tensor, t: Tensor, K_crop: Tensor, size: int) -> Tensor:
        """The 305-vertex subset of ``vertices (B, 1220, 3)`` posed by ``R, t`` and projected with ``K_crop``,
        normalised to ``[-1, 1]`` for a crop of side ``size`` -> ``(B, 305, 2)``; keeps the gradient."""
        cam = G.transform_points(vertices[:, self.subsample], R, t)
        return G.normalize_sampling_points(G.project_points(cam, K_crop), size, self.sampler_divisor)

    def export_spec(self) -> ExportSpec:
        """ONNX export (hpe_bench.export): the crop and its geometry in, the 6DoF pose and dense face out."""
        inputs = ["image", "box", "K", "K_crop", "A", "bbox_info"]
        if getattr(self, "principal", None) == "image_centre":
            inputs.append("image_size")
        outputs = dict(POSE_OUTPUTS)
        outputs["vertices"] = ("vertices", "(N, 1220, 3) dense ARKit face in the head frame, metres")
        outputs["landmarks_2d"] = ("landmarks_2d", "(N, 68, 2) landmarks in full-image pixels")
        return ExportSpec(inputs=tuple(inputs), outputs=outputs, in_chans=3)

    def forward(self, inputs: dict[str, Tensor]) -> dict:
        """Returns, for the last iteration, ``R (B, 3, 3)``, ``t (B, 3)`` m, ``vertices (B, 1220, 3)`` head frame m
        (``geometry``), ``landmarks_2d (B, 68, 2)`` full-image px (``heatmaps``); per iteration the lists
        ``R_iters``, ``t_iters``, ``vertices_iters`` (``geometry``), ``translation_params_iters (B, 3)`` (c for
        the paper's rule), ``sampling_points_iters (B, N, 2)`` (the points each iteration sampled, normalised);
        ``heatmap_landmarks (B, 68, 2)`` normalised crop coordinates (``heatmaps``). Predictions only: the loss
        reads the crop (``A``, S) from the inputs it is given alongside."""
        image, box, K, K_crop = inputs["image"], inputs["box"], inputs["K"], inputs["K_crop"]
        B, S = image.shape[0], image.shape[-1]
        dtype = image.dtype
        box, K = box.to(dtype), K.to(dtype)
        feats = [self.backbone(image)[-1]]
        for deconv in self.deconvs:
            feats.append(deconv(feats[-1]))
        maps = feats[1:]  # phi_1..phi_3: 12, 24, 48 for a 192 crop

        V = self.init_vertices.to(dtype).expand(B, -1, -1)
        sixd = self.init_sixd.to(dtype).expand(B, -1)
        p = self.init_params.to(dtype).expand(B, -1)
        # local_to_global: pose regressed in the crop's local camera, rotated into the camera frame by Q.
        Q = local_frame(box, K) if self.translation == "local_to_global" else None
        R, t = self._pose(sixd, p, box, K, Q, inputs)
        info = inputs["bbox_info"].to(dtype)[:, :BBOX_INFO[self.bbox_info]]
        keys = ["R_iters", "t_iters", "translation_params_iters", "sampling_points_iters"]
        out = {k: [] for k in keys + (["vertices_iters"] if self.geometry else [])}
        for i in range(self.iterations):
            if i == 0 or self.sampling == "grid":
                points = self.grid.to(dtype).expand(B, -1, -1)
            else:
                points = self.sampling_points(V, R, t, K_crop.to(dtype), S)
            fmap = maps[min(i, len(maps) - 1)] if self.multiscale else maps[0]
            parts = [self.reducers[i](sample_features(fmap, points))]
            if self.geometry:
                parts.append(V[:, self.subsample].flatten(1))
            dV, dpose = self.regressors[i](torch.cat(parts + [sixd, p, info], -1))
            sixd, p = sixd + dpose[:, :6], p + dpose[:, 6:]
            # Translation from the FULL image box and K: identical to using the crop (see
            # correction_to_translation) for the principal-point rule, and the only right choice for the
            # image-centre rule, whose reference point is the full image's centre.
            R, t = self._pose(sixd, p, box, K, Q, inputs)
            out["R_iters"].append(R)
            out["t_iters"].append(t)
            out["translation_params_iters"].append(p)
            out["sampling_points_iters"].append(points)
            if self.geometry:
                V = V + dV
                out["vertices_iters"].append(V)

        out.update(R=R, t=t)
        if self.geometry:
            out["vertices"] = V
        if self.heatmap is not None:
            with autocast_off(image):  # the heatmap head, soft-argmax and landmark decoding in float32
                cells = G.heatmap_cell_positions(maps[-1].shape[-1], S, self.heatmap_cells, dtype, image.device)
                heatmap_landmarks = soft_argmax(self.heatmap(maps[-1].to(dtype)), cells)
                crop_px = G.normalized_to_crop(heatmap_landmarks, S)
                out["landmarks_2d"] = G.apply_transform_2d(torch.linalg.inv(inputs["A"].to(dtype)), crop_px)
                out["heatmap_landmarks"] = heatmap_landmarks
        return out

    @full_precision  # 6D -> matrix, the local frame and the translation rule: float32 under mixed precision
    def _pose(self, sixd: Tensor, p: Tensor, box: Tensor, K: Tensor, Q: Tensor | None,
              inputs: dict) -> tuple[Tensor, Tensor]:
        R = G.sixd_to_matrix(sixd)
        if Q is not None:
            R = Q @ R
        t = params_to_translation(self.translation, p, box, K, self.face_size, self.principal,
                                  inputs.get("image_size"))
        return R, t
