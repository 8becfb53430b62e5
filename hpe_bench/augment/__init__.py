"""On-device, batch-wise training augmentation with exact label transforms (docs/augmentation.md).

``HeadPoseModule`` calls ``batch = augment(batch)`` in ``training_step`` before ``CropInput``; configs in
``conf/augment/`` compose these modules with ``Compose``.
"""
from .base import BatchAugment, Compose
from .geometric import OpNetRoiAffine, TRGCropAugment, roi_similarity, warp_batch
from .photometric import ColorJitter, MaskPatch, OpNetIntensity

__all__ = ["BatchAugment", "Compose", "OpNetRoiAffine", "TRGCropAugment", "roi_similarity", "warp_batch",
           "ColorJitter", "MaskPatch", "OpNetIntensity"]
