"""Pixel (fidelity) losses per sample: L1, L2 (mean squared error) and Charbonnier."""
from __future__ import annotations

import torch

PIXEL_LOSSES = ("l1", "l2", "charbonnier")
CHARBONNIER_EPS = 1e-3


def pixel_loss_per_sample(x: torch.Tensor, y: torch.Tensor, kind: str, eps: float = CHARBONNIER_EPS) -> torch.Tensor:
    """Mean over (C, H, W) of |x - y| ("l1"), (x - y)^2 ("l2") or sqrt((x - y)^2 + eps^2) ("charbonnier").

    Args:
        x, y: ``(B, ...)`` images of equal shape.
        kind: "l1", "l2" or "charbonnier".

    Returns:
        ``(B,)``.

    Example:
        >>> import torch
        >>> pixel_loss_per_sample(torch.zeros(2, 3, 4, 4), torch.ones(2, 3, 4, 4), "l2")
        tensor([1., 1.])
    """
    if kind not in PIXEL_LOSSES:
        raise ValueError(f"pixel loss must be one of {PIXEL_LOSSES}, got {kind!r}")
    if x.shape != y.shape:
        raise ValueError(f"pixel loss {kind!r}: x and y must have equal shapes, got {tuple(x.shape)} and {tuple(y.shape)}")
    d = x - y
    if kind == "l1":
        v = d.abs()
    elif kind == "l2":
        v = d * d
    else:
        v = torch.sqrt(d * d + eps * eps)
    return v.flatten(1).mean(1)
