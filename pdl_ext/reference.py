"""Pure-PyTorch reference of every pdl_ext op.

These are the oracles of the test-suite and the fallback when the C++ extension is not built. They
favour clarity over speed and differentiate with plain autograd.
"""
from __future__ import annotations

import torch

from ._checks import check_wasserstein_1d_inputs


def _opmath(t: torch.Tensor) -> torch.Tensor:
    # float16/bfloat16 are computed in float32, as the kernels do.
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


def wasserstein_1d(x: torch.Tensor, y: torch.Tensor, p: int = 1) -> torch.Tensor:
    """Exact W_p^p between the rows of x (..., N) and y (..., M), uniform weights; shape (...).

    Equal sizes: mean |sort(x)_i - sort(y)_i|^p. Unequal sizes: the integral over t in (0, 1) of
    |F_x^-1(t) - F_y^-1(t)|^p, evaluated exactly on the merged grid of breakpoints i/N and j/M.
    """
    p = check_wasserstein_1d_inputs(x, y, p, "reference.wasserstein_1d")
    dtype = x.dtype
    xo, yo = _opmath(x), _opmath(y)
    sx = torch.sort(xo, dim=-1, stable=True).values
    sy = torch.sort(yo, dim=-1, stable=True).values
    n, m = sx.shape[-1], sy.shape[-1]
    if n == m:
        d = sx - sy
        return _nan_policy((d.abs() if p == 1 else d * d).mean(-1), xo, yo).to(dtype)
    # Grid in units of 1/(n m): atom i of x spans [i m, (i+1) m), atom j of y spans [j n, (j+1) n).
    dev = x.device
    ends = torch.cat([torch.arange(1, n + 1, device=dev) * m, torch.arange(1, m + 1, device=dev) * n])
    ends = torch.unique(ends, sorted=True)
    starts = torch.cat([ends.new_zeros(1), ends[:-1]])
    d = sx[..., starts // m] - sy[..., starts // n]
    cost = d.abs() if p == 1 else d * d
    weights = (ends - starts).to(cost.dtype) / (n * m)
    return _nan_policy((cost * weights).sum(-1), xo, yo).to(dtype)


def _nan_policy(w: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The ops' NaN policy on gradients: a row pair holding a NaN has NaN gradients in every element.

    Its value is NaN already; the sort-and-match alone would only make the NaN's own pair's gradient
    NaN. Adds 0 (a row without NaN) or NaN times the (finite parts of the) rows, which carries NaN
    into every element's gradient and changes no value.
    """
    bad = torch.isnan(x).any(-1) | torch.isnan(y).any(-1)
    poison = torch.where(bad, torch.full_like(w, float("nan")), torch.zeros_like(w)).detach().unsqueeze(-1)
    return w + (poison * x.nan_to_num(0.0, 0.0, 0.0)).sum(-1) + (poison * y.nan_to_num(0.0, 0.0, 0.0)).sum(-1)


NORM_EPS = 1e-10


def channel_inv_norm(f: torch.Tensor) -> torch.Tensor:
    """1 / (||f||_2 over dim 1 + 1e-10), keeping dim 1; 0 (and no gradient) at all-zero positions.

    NaN where the float64 sum of squares is not finite (an inf or NaN feature): every normalized
    feature of that position is NaN, hence every row of its sample, in value and gradient.
    """
    s = f.double().pow(2).sum(1, keepdim=True)  # float64: float32 squares overflow above ~1.8e19
    finite = torch.isfinite(s)
    nonzero = s != 0
    r = torch.where(nonzero & finite, s, torch.ones_like(s)).sqrt()  # no inf * 0 in the backward at s = 0
    inv = torch.where(nonzero, 1.0 / (r.to(f.dtype) + NORM_EPS), torch.zeros_like(s, dtype=f.dtype))
    return torch.where(finite, inv, torch.full_like(inv, float("nan")))


def normalize_channels(f: torch.Tensor) -> torch.Tensor:
    """f / (||f||_2 over dim 1 + 1e-10), as LPIPS; gradient 0 at all-zero positions (as the kernels)."""
    return f * channel_inv_norm(f)


def normalized_wasserstein_1d(x: torch.Tensor, y: torch.Tensor, p: int = 1) -> torch.Tensor:
    """Per-channel W_p^p over positions of L2-normalized features: x (B, C, N), y (B, C, M) -> (B, C)."""
    if x.dim() != 3 or y.dim() != 3:
        raise ValueError(
            f"normalized_wasserstein_1d: x and y must be (B, C, N) and (B, C, M), got {tuple(x.shape)} and {tuple(y.shape)}"
        )
    xo, yo = _opmath(x), _opmath(y)
    return wasserstein_1d(normalize_channels(xo), normalize_channels(yo), p).to(x.dtype)
