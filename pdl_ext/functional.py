"""Functional forms of the losses (the nn.Module forms only store their arguments)."""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Optional, Sequence, Tuple, Union

import torch

from .losses.pdl import DEFAULT_LAYERS, Backbone, PDLLoss
from .losses.pixel import pixel_loss_per_sample
from .projection import Projection, projected_distance

__all__ = ["pdl_loss", "projected_distance", "pixel_loss_per_sample"]


@lru_cache(maxsize=4)
def _vgg_loss(arch: str, layers: Tuple[str, ...], weights: Optional[str], pretrained: bool, download: bool) -> PDLLoss:
    # One frozen backbone per configuration, so repeated calls do not reload weights.
    return PDLLoss(arch, layers, weights=weights, pretrained=pretrained, download=download)


def pdl_loss(
    x: torch.Tensor,
    y: torch.Tensor,
    backbone: Backbone = "vgg16",
    layers: Sequence[str] = DEFAULT_LAYERS,
    layer_weights: Optional[Sequence[float]] = None,
    p: int = 1,
    projection: Projection = "spatial",
    normalize: bool = False,
    weights: Union[str, Path, None] = None,
    pixel_loss: Optional[str] = None,
    pixel_weight: float = 1.0,
    input_range: Tuple[float, float] = (0.0, 1.0),
    reduction: str = "mean",
    *,
    pretrained: bool = True,
    download: bool = False,
    seed: int = 0,
) -> torch.Tensor:
    """Projected Distribution Loss of ``x`` against ``y``; see :class:`pdl_ext.PDLLoss` for the arguments.

    A VGG backbone named by string is built once per configuration and cached.

    Example:
        >>> import torch
        >>> from pdl_ext.functional import pdl_loss
        >>> v = pdl_loss(torch.rand(1, 3, 32, 32), torch.rand(1, 3, 32, 32), layers=("relu1_2",), pretrained=False)
        >>> v.shape
        torch.Size([])
    """
    if isinstance(backbone, str):
        base = _vgg_loss(backbone, tuple(layers), None if weights is None else str(weights), pretrained, download)
        backbone = base.backbone.to(x.device)
    loss = PDLLoss(backbone, layers, layer_weights, p, projection, normalize, pixel_loss=pixel_loss,
                   pixel_weight=pixel_weight, input_range=input_range, reduction=reduction, seed=seed)
    return loss(x, y)
