"""Projected distribution distance between two CNN feature maps (the distance of the PDL paper)."""
from __future__ import annotations

from typing import Optional, Union

import torch

from ._checks import check_float, check_p, check_same_dtype_device, check_tensor, is_int
from .ops import normalized_wasserstein_1d, wasserstein_1d

Projection = Union[str, int]
NORM_EPS = 1e-10  # as LPIPS and the kernels


def channel_inv_norm(f: torch.Tensor) -> torch.Tensor:
    """1 / (||f||_2 over dim 1 + 1e-10), keeping dim 1; 0 (and no gradient) at all-zero positions,
    NaN where the float64 sum of squares is not finite (an inf or NaN feature).

    The normalization of the "channel" and sliced projections, which project before the op and so
    cannot use the op's fused one; its rule for zero and non-finite norms is the kernels'.
    """
    s = f.double().pow(2).sum(1, keepdim=True)  # float64: float32 squares overflow above ~1.8e19
    finite = torch.isfinite(s)
    nonzero = s != 0
    r = torch.where(nonzero & finite, s, torch.ones_like(s)).sqrt()  # no inf * 0 in the backward at s = 0
    inv = torch.where(nonzero, 1.0 / (r.to(f.dtype) + NORM_EPS), torch.zeros_like(s, dtype=f.dtype))
    return torch.where(finite, inv, torch.full_like(inv, float("nan")))


def random_directions(num: int, channels: int, seed: int = 0, device=None, dtype=torch.float32) -> torch.Tensor:
    """`num` unit vectors in R^channels, drawn from a seeded Gaussian: ``(num, channels)``."""
    g = torch.Generator().manual_seed(int(seed))
    d = torch.randn(num, channels, generator=g, dtype=torch.float64)
    d = d / d.norm(dim=1, keepdim=True)
    return d.to(device=device, dtype=dtype)


def _check_features(fx: object, fy: object, fn: str) -> None:
    for name, f in (("fx", fx), ("fy", fy)):
        check_tensor(name, f, fn)
        if f.dim() != 4:
            raise ValueError(f"{fn}: {name} must be a feature map (B, C, H, W), got shape {tuple(f.shape)}")
    check_float("fx", fx, fn)
    check_same_dtype_device(fx, fy, fn, ("fx", "fy"))
    if fx.shape[:2] != fy.shape[:2]:
        raise ValueError(
            f"{fn}: fx and fy must have the same batch and channel sizes (B, C), "
            f"got {tuple(fx.shape[:2])} and {tuple(fy.shape[:2])}"
        )


def projected_distance(
    fx: torch.Tensor,
    fy: torch.Tensor,
    p: int = 1,
    projection: Projection = "spatial",
    normalize: bool = False,
    directions: Optional[torch.Tensor] = None,
    seed: int = 0,
) -> torch.Tensor:
    r"""1D Wasserstein distances (:math:`W_p^p`) between projections of two feature maps.

    Args:
        fx: ``(B, C, H, W)`` features of the output image.
        fy: ``(B, C, H', W')`` features of the reference (spatial sizes may differ, except for
            ``projection="channel"``).
        p: 1 or 2.
        projection: ``"spatial"``: per channel, the distribution of its values over positions ->
            ``(B, C)``. ``"channel"``: per position, the distribution over channels -> ``(B, H*W)``.
            An integer K: K unit directions in channel space (sliced Wasserstein), each position's
            channel vector projected on each -> ``(B, K)``.
        normalize: scale each position's channel vector to unit L2 norm first (as LPIPS does).
        directions: ``(K, C)`` directions to use with an integer ``projection`` (default: drawn
            from ``seed``, so repeated calls use the same ones).
        seed: seed of the default directions.

    Returns:
        ``(B, C)``, ``(B, H*W)`` or ``(B, K)`` distances.

    Example:
        >>> import torch, pdl_ext
        >>> fx, fy = torch.rand(2, 8, 16, 16), torch.rand(2, 8, 12, 12)
        >>> pdl_ext.projected_distance(fx, fy).shape
        torch.Size([2, 8])
    """
    fn = "projected_distance"
    _check_features(fx, fy, fn)
    p = check_p(p, fn)
    b, c = fx.shape[:2]
    x3, y3 = fx.reshape(b, c, -1), fy.reshape(b, c, -1)
    if projection == "spatial":
        # The normalization is fused into the op: no normalized copy of the features is made.
        return normalized_wasserstein_1d(x3, y3, p) if normalize else wasserstein_1d(x3, y3, p)
    if projection == "channel":
        if fx.shape != fy.shape:
            raise ValueError(
                f"{fn}: projection='channel' needs fx and fy of equal shape, got {tuple(fx.shape)} and {tuple(fy.shape)}"
            )
        if normalize:  # per position, a common scale of all channels: apply it to the rows
            x3, y3 = x3 * channel_inv_norm(x3), y3 * channel_inv_norm(y3)
        return wasserstein_1d(x3.transpose(1, 2), y3.transpose(1, 2), p)
    if is_int(projection) and projection > 0:
        if directions is None:
            directions = random_directions(projection, c, seed, fx.device, fx.dtype)
        check_tensor("directions", directions, fn)
        if tuple(directions.shape) != (projection, c):
            raise ValueError(f"{fn}: directions must have shape ({projection}, {c}), got {tuple(directions.shape)}")
        px = torch.einsum("kc,bcn->bkn", directions.to(fx.dtype), x3)
        py = torch.einsum("kc,bcn->bkn", directions.to(fy.dtype), y3)
        if normalize:  # <d, f / |f|> = <d, f> / |f|: scale the projections, not the features
            px, py = px * channel_inv_norm(x3), py * channel_inv_norm(y3)
        return wasserstein_1d(px, py, p)
    raise ValueError(f"{fn}: projection must be 'spatial', 'channel' or a positive int, got {projection!r}")
