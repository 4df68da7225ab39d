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


@lru_cache(maxsize=8)
def _cached_loss(backbone: Backbone, layers: Tuple[str, ...], layer_weights: Optional[Tuple[float, ...]], p: int,
                 projection: Projection, normalize: bool, weights: Optional[str], pixel_loss: Optional[str],
                 pixel_weight: float, input_range: Tuple[float, float], reduction: str, pretrained: bool,
                 download: bool, seed: int) -> PDLLoss:
    # One loss (and one frozen backbone) per configuration: repeated calls neither rebuild the module
    # nor reload weights. Module backbones are keyed by identity.
    return PDLLoss(backbone, layers, layer_weights, p, projection, normalize, weights, pixel_loss, pixel_weight,
                   input_range, reduction, pretrained=pretrained, download=download, seed=seed)


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

    The loss (and its backbone) is built once per configuration and cached (8 configurations;
    a module backbone is keyed by identity), so calling it in a training loop costs what
    ``PDLLoss`` costs.

    Example:
        >>> import torch
        >>> from pdl_ext.functional import pdl_loss
        >>> v = pdl_loss(torch.rand(1, 3, 32, 32), torch.rand(1, 3, 32, 32), layers=("relu1_2",), pretrained=False)
        >>> v.shape
        torch.Size([])
    """
    loss = _cached_loss(backbone, tuple(layers), None if layer_weights is None else tuple(float(w) for w in layer_weights),
                        p, projection, bool(normalize), None if weights is None else str(weights), pixel_loss,
                        float(pixel_weight), tuple(float(v) for v in input_range), reduction, bool(pretrained),
                        bool(download), int(seed))
    return loss.to(x.device)(x, y)
