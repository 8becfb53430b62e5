"""Conventions of the authors' reference code, for running their released weights as they were trained.

OpNet: ``opentrack/neuralnet-tracker-traincode`` branch ``paper``; TRG: ``asw91666/TRG-Release``. Facts from
``shared/reference/checkpoints/README.md``; the switches that use them are ``CropInput(mapping=..., resize=...,
bbox_reference=..., quantize=...)`` and ``TRG(sampler_divisor=..., heatmap_cells=...)`` (docs/conventions.md,
"Reference-code conventions"). hpe_bench's own conventions (``camera.py``) stay the defaults.

Crop mappings (``CROP_MAPPINGS``), each giving the window cropped from the full image, the *frame* map ``A``
(full-image px -> the crop pixel frame the network's coordinates, labels and ``K_crop = A @ K`` live in) and
the *warp* map (full-image px -> crop image px, what the pixels are resampled with). Pixel coordinates are
hpe_bench's (OpenCV: pixel centres on integers):

- ``"corner"`` (hpe_bench): window ``square_box(box, scale)``; warp = frame = ``crop_transform(window, S)``.
- ``"pixel_edge"`` (OpNet code): the square of side ``scale * max(w, h)`` about the box centre, computed in
  pixel-EDGE coordinates (pixel j spans [j, j + 1)), corners rounded half to even to integers: an integer
  slice of the image (zeros outside). Its pixel edges map onto the crop's pixel edges (warp
  ``x' = (x + 0.5 - X0) S / w - 0.5``, y alike with h). The network reads ``x_norm = 2 u / S - 1`` with ``u`` the
  crop's pixel-edge coordinate; the frame map is the one for which ``crop_to_normalized(A x, S)`` is that
  ``x_norm``: ``A = crop_transform(window - 0.5, S - 1)`` for a square window. Rounding can leave the window one
  pixel taller or shorter than wide; the code then maps x with the width's scale and y with the height's (its
  ``Affine2d.range_remap_2d``), so ``A`` is the axis-aligned ``diag((S - 1) / w, (S - 1) / h)`` map, not a
  similarity, and sizes scale by the RMS of the two (``affine_size_scale``, the code's ``Affine2d.scales``).
- ``"trg_code"`` (TRG code): window as ``"corner"``; frame ``crop_transform(window, S)`` (the code's ``K_img``,
  S / b) but the image is warped with ``crop_transform(window, S - 1)`` ((S - 1) / b: box corners on the
  centres of crop pixels 0 and S - 1), a mismatch of up to b / S image px at the far edge.
"""
from __future__ import annotations

import kornia.geometry.transform as KT
import torch
from torch import Tensor

from .camera import crop_transform, square_box

__all__ = [
    "CROP_MAPPINGS", "RESIZE_RULES", "BBOX_REFERENCES", "SAMPLER_DIVISORS", "HEATMAP_CELL_RULES",
    "opnet_code_window", "crop_window_maps", "opnet_code_resize_weights", "opnet_code_crop", "warp_crop",
    "box_features_reference", "reference_point",
    "normalize_sampling_points", "heatmap_cell_positions", "SIXD_FROM_ROW_MAJOR", "sixd_from_row_major",
    "sixd_to_row_major", "grid_order_permutation", "TRG_CODE_OFFSET_SCALE", "TRG_CODE_BBOX_CENTRE_SCALE",
]

CROP_MAPPINGS = ("corner", "pixel_edge", "trg_code")
RESIZE_RULES = ("bilinear", "opnet_code")
BBOX_REFERENCES = ("principal_point", "image_centre")
SAMPLER_DIVISORS = ("size_minus_one", "size")
HEATMAP_CELL_RULES = ("linspace", "trg_code")


def opnet_code_window(box: Tensor, scale: float) -> Tensor:
    """OpNet code's test-time crop window ``(..., 4)``, integer-valued, in pixel-EDGE coordinates.

    ``box (..., 4)`` is in hpe_bench's pixel-centre coordinates (the code's face ROI is ``box + 0.5``); the
    window is the square of side ``scale * max(w, h)`` about its centre, corners rounded half to even
    (``torch.round``, as the code).
    """
    edge = box + 0.5
    centre = (edge[..., :2] + edge[..., 2:]) / 2.0
    half = (edge[..., 2:] - edge[..., :2]).amax(-1, keepdim=True) * (scale / 2.0)
    return torch.round(torch.cat([centre - half, centre + half], -1))


def crop_window_maps(box: Tensor, scale: float, size: int, mapping: str = "corner") -> tuple[Tensor, Tensor, Tensor]:
    """``(window (B, 4) pixel-centre coordinates, A_frame (B, 3, 3), A_warp (B, 3, 3))`` for a crop of side
    ``size`` under ``mapping`` (module docstring). ``window`` is what ``CropInput`` reports as the crop box."""
    if mapping == "pixel_edge":
        edge = opnet_code_window(box, scale)
        window = edge - 0.5
        w, h = edge[..., 2] - edge[..., 0], edge[..., 3] - edge[..., 1]
        # x' = (x + 0.5 - X0) S / w - 0.5: pixel edges onto pixel edges
        sx, sy = size / w, size / h
        z, o = torch.zeros_like(sx), torch.ones_like(sx)
        warp = torch.stack([sx, z, (0.5 - edge[..., 0]) * sx - 0.5, z, sy, (0.5 - edge[..., 1]) * sy - 0.5,
                            z, z, o], -1).reshape(box.shape[:-1] + (3, 3))
        # Frame: the code's x_norm = 2 (x_edge - X0) / w - 1 and y_norm = 2 (y_edge - Y0) / h - 1 (its
        # range_remap_2d, one scale per axis), also when rounding leaves the window one pixel taller or shorter
        # than wide: then A is not a similarity, and the OpNet codec scales sizes by the RMS of the two axis
        # scales as the code does (geometry.affine_size_scale).
        kx, ky = (size - 1) / w, (size - 1) / h
        frame = torch.stack([kx, z, (0.5 - edge[..., 0]) * kx, z, ky, (0.5 - edge[..., 1]) * ky, z, z, o],
                            -1).reshape(box.shape[:-1] + (3, 3))
        return window, frame, warp
    if mapping not in ("corner", "trg_code"):
        raise ValueError(f"crop mapping must be one of {CROP_MAPPINGS}, got {mapping!r}")
    window = square_box(box, scale)
    frame = crop_transform(window, size)
    return window, frame, crop_transform(window, size - 1) if mapping == "trg_code" else frame


def _axis_weights(start: Tensor, length: Tensor, n_src: int, size: int, area: Tensor) -> Tensor:
    """Resize weights ``(B, size, n_src)`` along one axis for integer windows ``[start, start + length)``
    (pixel-edge coordinates, ``(B,)``) of an axis with ``n_src`` pixels; pixels outside ``[0, n_src)`` are the
    code's zero canvas and get no weight. Where ``area (B,)``: OpenCV ``INTER_AREA`` (each output pixel averages
    the source pixels its footprint covers, weighted by overlap), else ``INTER_LINEAR`` (half-pixel centres,
    source pixels clamped to the window)."""
    dtype = torch.float64
    start, length = start.to(dtype)[:, None, None], length.to(dtype)[:, None, None]
    i = torch.arange(size, dtype=dtype, device=start.device)[None, :, None]
    j = torch.arange(n_src, dtype=dtype, device=start.device)[None, None, :]
    scale = length / size
    lo, hi = start + i * scale, start + (i + 1) * scale
    overlap = (torch.minimum(hi, j + 1) - torch.maximum(lo, j)).clamp_min(0.0) / scale
    s = (i + 0.5) * scale - 0.5  # window-relative source pixel centre
    s0 = torch.floor(s)
    frac = s - s0
    i0, i1 = s0.clamp(min=0.0) + torch.zeros_like(length), (s0 + 1).clamp(min=0.0)
    i0, i1 = torch.minimum(i0, length - 1), torch.minimum(i1, length - 1)
    linear = (j == start + i0) * (1 - frac) + (j == start + i1) * frac
    return torch.where(area[:, None, None], overlap, linear)


def opnet_code_resize_weights(window_edge: Tensor, height: int, width: int, size: int) -> tuple[Tensor, Tensor]:
    """``(My (B, size, H), Mx (B, size, W))`` (float64) such that ``My @ image @ Mx^T`` is OpNet code's crop of
    the integer pixel-edge ``window_edge (B, 4)`` (``opnet_code_window``) resized to ``size``: ``INTER_AREA``
    when the window is at least ``size`` px wide, else ``INTER_LINEAR`` (before the code's rounding to uint8)."""
    x0, y0, x1, y1 = window_edge.unbind(-1)
    area = (x1 - x0) >= size
    return _axis_weights(y0, y1 - y0, height, size, area), _axis_weights(x0, x1 - x0, width, size, area)


def _cv2_linear_taps(n: Tensor, size: int, clamp_fraction: bool) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """OpenCV ``resize(INTER_LINEAR)`` taps for windows of ``n (B,)`` px -> ``size``: window-relative indices
    ``i0, i1 (B, size)`` and fixed-point weights ``w0, w1`` (int64, sum ~2048). Horizontally OpenCV zeroes the
    fraction where the tap leaves the window (``clamp_fraction``); vertically it only clamps the rows."""
    scale = n.to(torch.float64)[:, None] / size
    d = torch.arange(size, dtype=torch.float64, device=n.device)[None]
    f = ((d + 0.5) * scale - 0.5).to(torch.float32)
    s = torch.floor(f)
    f = f - s
    last = (n[:, None] - 1).to(s)
    if clamp_fraction:
        f = torch.where((s < 0) | (s >= last), torch.zeros_like(f), f)
        s = torch.minimum(s.clamp_min(0.0), last)
    w0 = torch.round((1.0 - f) * 2048.0).long()
    w1 = torch.round(f * 2048.0).long()
    i0 = torch.minimum(s.clamp_min(0.0), last).long()
    i1 = torch.minimum((s + 1).clamp_min(0.0), last).long()
    return i0, i1, w0, w1


def _take(x: Tensor, index: Tensor, dim: int) -> Tensor:
    """``x (B, C, H, W)`` gathered at ``index (B, n)`` along ``dim`` (-1 or -2); indices outside the axis read 0."""
    n = x.shape[dim]
    valid = (index >= 0) & (index < n)
    idx = index.clamp(0, n - 1)
    if dim == -1:
        out = torch.gather(x, -1, idx[:, None, None, :].expand(*x.shape[:3], -1))
        return out * valid[:, None, None, :]
    out = torch.gather(x, -2, idx[:, None, :, None].expand(x.shape[0], x.shape[1], -1, x.shape[3]))
    return out * valid[:, None, :, None]


def _cv2_linear_uint8(levels: Tensor, window_edge: Tensor, size: int) -> Tensor:
    """OpenCV's uint8 ``INTER_LINEAR`` resize of the integer windows, bit-exact to its fixed-point arithmetic
    (11-bit weights; the vectorised vertical pass ``((b0 (r0 >> 4)) >> 16 + (b1 (r1 >> 4)) >> 16 + 2) >> 2``).
    ``levels (B, C, H, W)`` holds integer values 0..255."""
    x0, y0, x1, y1 = window_edge.long().unbind(-1)
    cx0, cx1, a0, a1 = _cv2_linear_taps(x1 - x0, size, True)
    ry0, ry1, b0, b1 = _cv2_linear_taps(y1 - y0, size, False)
    rows = (_take(levels, x0[:, None] + cx0, -1) * a0[:, None, None, :].to(levels)
            + _take(levels, x0[:, None] + cx1, -1) * a1[:, None, None, :].to(levels))  # exact: < 2^24
    r0 = _take(rows, y0[:, None] + ry0, -2).long()
    r1 = _take(rows, y0[:, None] + ry1, -2).long()
    v = (b0[:, None, :, None] * (r0 >> 4) >> 16) + (b1[:, None, :, None] * (r1 >> 4) >> 16)
    return ((v + 2) >> 2).clamp(0, 255).to(levels)


def opnet_code_crop(images: Tensor, window_edge: Tensor, size: int, quantize: bool = False) -> Tensor:
    """OpNet code's test crop: ``images (B, C, H, W)`` in [0, 1] -> ``(B, C, size, size)`` in [0, 1].

    The integer pixel-edge window ``window_edge (B, 4)`` (zeros outside the image) resized with ``INTER_AREA``
    when it is at least ``size`` px wide, else ``INTER_LINEAR``. ``quantize``: the code's uint8 crop (the images
    are read as uint8 levels; area results rounded, linear ones with OpenCV's fixed-point arithmetic).
    """
    B, C, H, W = images.shape
    My, Mx = opnet_code_resize_weights(window_edge, H, W, size)
    x = (images * 255.0).round() if quantize else images
    out = My.to(x)[:, None] @ x @ Mx.to(x)[:, None].transpose(-1, -2)
    if not quantize:
        return out
    area = ((window_edge[:, 2] - window_edge[:, 0]) >= size)[:, None, None, None]
    return torch.where(area, out.round(), _cv2_linear_uint8(x, window_edge, size)) / 255.0


def warp_crop(images: Tensor, warp: Tensor, size: int) -> Tensor:
    """Bilinear crop ``(B, C, size, size)`` of ``images (B, C, H, W)`` with the affine ``warp (B, 3, 3)`` (full
    image px -> crop px, OpenCV pixel centres; zeros outside), as ``crop_images`` does for its own map."""
    return KT.warp_affine(images, warp[:, :2, :].to(images), (size, size), mode="bilinear", padding_mode="zeros",
                          align_corners=True)


def reference_point(K: Tensor, reference: str = "principal_point", image_size: Tensor | None = None) -> Tensor:
    """The point box centres are measured from, ``(..., 2)`` pixels: K's principal point ``K (..., 3, 3)``
    (hpe_bench) or the image centre ``image_size / 2`` with ``image_size (..., 2) = (W, H)`` (TRG code).
    Used by TRG's I_bbox (``box_features_reference``) and its translation rules (``models/trg_parts.py``)."""
    if reference == "principal_point":
        return K[..., :2, 2]
    if reference == "image_centre":
        if image_size is None:
            raise ValueError("reference 'image_centre' needs image_size (..., 2) = (W, H) of the full images")
        return torch.as_tensor(image_size).to(K) / 2.0
    raise ValueError(f"reference point must be one of {BBOX_REFERENCES}, got {reference!r}")


def box_features_reference(box: Tensor, K: Tensor, reference: str = "principal_point",
                           image_size: Tensor | None = None) -> Tensor:
    """TRG's I_bbox ``(..., 3) = ((cx_box - rx) / f, (cy_box - ry) / f, side / f)`` with the reference point
    ``(rx, ry) = reference_point(K, reference, image_size)``.
    The code also multiplies the first two by 4; the importer folds that into the weights instead."""
    ref = reference_point(K, reference, image_size).to(box)
    f = K[..., 0, 0]
    centre = (box[..., :2] + box[..., 2:]) / 2.0
    return torch.stack([(centre[..., 0] - ref[..., 0]) / f, (centre[..., 1] - ref[..., 1]) / f,
                        (box[..., 2] - box[..., 0]) / f], -1)


def normalize_sampling_points(points: Tensor, size: int, divisor: str = "size_minus_one") -> Tensor:
    """Crop pixels ``(..., 2)`` -> ``[-1, 1]`` for ``grid_sample(align_corners=True)``: ``p / (S - 1) * 2 - 1``
    (hpe_bench, consistent with align_corners) or ``p / S * 2 - 1`` (TRG code, ``divisor="size"``)."""
    if divisor not in SAMPLER_DIVISORS:
        raise ValueError(f"sampler divisor must be one of {SAMPLER_DIVISORS}, got {divisor!r}")
    d = size - 1 if divisor == "size_minus_one" else size
    return points * (2.0 / d) - 1.0


def heatmap_cell_positions(cells: int, size: int, rule: str = "linspace", dtype=torch.float32,
                           device=None) -> Tensor:
    """Positions ``(cells,)`` of the heatmap cells on one axis, in hpe_bench's normalised crop coordinates
    (``crop_to_normalized``) of a crop of side ``size``.

    ``"linspace"`` (hpe_bench): cell centres from -1 to 1. ``"trg_code"``: the code maps cell k to
    ``k / cells * 2 - 1`` in its own normalisation ``p / S * 2 - 1``, i.e. crop pixel ``k S / cells``.
    """
    if rule == "linspace":
        return torch.linspace(-1.0, 1.0, cells, dtype=dtype, device=device)
    if rule != "trg_code":
        raise ValueError(f"heatmap cell rule must be one of {HEATMAP_CELL_RULES}, got {rule!r}")
    px = torch.arange(cells, dtype=torch.float64, device=device) * (size / cells)
    return (px * (2.0 / (size - 1)) - 1.0).to(dtype)


TRG_CODE_OFFSET_SCALE = 2.0
"""The TRG code's box offsets ``(dx, dy)`` are this times the paper's (hpe_bench's ``translation_params``): the code
writes ``Tx = 0.1 s dx + 0.2 s tau_x / b`` where the paper writes ``0.2 s dx``. TRG regresses and feeds back the
code's values (``models/trg.py``), so Adam steps them as the authors' training does."""
TRG_CODE_BBOX_CENTRE_SCALE = 4.0
"""The TRG code's I_bbox centre entries are this times ``box_features``' ``tau / f`` (``b / f`` is unscaled)."""

SIXD_FROM_ROW_MAJOR = (0, 2, 4, 1, 3, 5)
"""hpe_bench 6D index j (columns: R00, R10, R20, R01, R11, R21) = TRG code's index ``SIXD_FROM_ROW_MAJOR[j]``
(its 6D is the same two columns read row by row: R00, R01, R10, R11, R20, R21)."""


def sixd_from_row_major(x: Tensor) -> Tensor:
    """TRG code's 6D ``(..., 6)`` (R00, R01, R10, R11, R20, R21) -> hpe_bench's column-major 6D."""
    return x[..., list(SIXD_FROM_ROW_MAJOR)]


def sixd_to_row_major(x: Tensor) -> Tensor:
    """hpe_bench's 6D ``(..., 6)`` -> TRG code's row-major layout (inverse of ``sixd_from_row_major``)."""
    return x[..., [0, 3, 1, 4, 2, 5]]


def grid_order_permutation(n: int) -> Tensor:
    """``perm (n*n,)``: hpe_bench's sampling-grid point i (y-major: x = lin[i % n], y = lin[i // n]) is TRG
    code's point ``perm[i]`` (x-major: x = lin[k // n], y = lin[k % n])."""
    i = torch.arange(n * n)
    return (i % n) * n + i // n
