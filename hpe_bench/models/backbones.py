"""timm backbones with an offline-safe ``pretrained`` switch."""
from __future__ import annotations

import logging
import os

import timm
from torch import nn

log = logging.getLogger(__name__)


def create_backbone(name: str, pretrained: bool = False, in_chans: int = 3, **kwargs) -> nn.Module:
    """A timm model without classifier (``num_classes=0``): ``forward(x) -> (B, num_features)``.

    With ``pretrained=True`` the weights come from the timm/Hugging Face cache or hub. Where they cannot
    be had (no network, ``HF_HUB_OFFLINE=1``, not cached) this warns once, naming the model, and falls
    back to random initialisation instead of hanging or failing the run.
    """
    if pretrained:
        try:
            return timm.create_model(name, pretrained=True, in_chans=in_chans, num_classes=0, **kwargs)
        except Exception as err:  # noqa: BLE001 - any hub/network/cache failure means "no weights"
            offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false")
            log.warning("pretrained weights for timm model %r unavailable (%s%s: %s); using random init",
                        name, "HF_HUB_OFFLINE set, " if offline else "", type(err).__name__, str(err)[:200])
    return timm.create_model(name, pretrained=False, in_chans=in_chans, num_classes=0, **kwargs)
