"""Input validation shared by every public function: messages name the argument, the expected and the
received value (the C++ ops check the same things with the same wording)."""
from __future__ import annotations

from typing import Sequence

import torch

_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def check_tensor(name: str, t: object, fn: str) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{fn}: {name} must be a torch.Tensor, got {type(t).__name__}")
    return t


def check_float(name: str, t: torch.Tensor, fn: str) -> None:
    if t.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"{fn}: {name} must be float16, bfloat16, float32 or float64, got {t.dtype}")


def check_same_dtype_device(x: torch.Tensor, y: torch.Tensor, fn: str, names: Sequence[str] = ("x", "y")) -> None:
    a, b = names
    if y.dtype != x.dtype:
        raise TypeError(f"{fn}: {b} must have the dtype of {a} ({x.dtype}), got {y.dtype}")
    if y.device != x.device:
        raise ValueError(f"{fn}: {b} must be on the device of {a} ({x.device}), got {y.device}")


def check_p(p: object, fn: str) -> int:
    if isinstance(p, bool) or p not in (1, 2):
        raise ValueError(f"{fn}: p must be 1 or 2, got {p!r}")
    return int(p)


def check_reduction(reduction: str, fn: str) -> str:
    if reduction not in ("none", "mean", "sum"):
        raise ValueError(f"{fn}: reduction must be 'none', 'mean' or 'sum', got {reduction!r}")
    return reduction


def reduce(values: torch.Tensor, reduction: str) -> torch.Tensor:
    """Applies a torch.nn-style reduction ("none" | "mean" | "sum") over all elements."""
    if reduction == "mean":
        return values.mean()
    if reduction == "sum":
        return values.sum()
    return values


def check_wasserstein_1d_inputs(x: object, y: object, p: object, fn: str = "wasserstein_1d") -> int:
    x = check_tensor("x", x, fn)
    y = check_tensor("y", y, fn)
    p = check_p(p, fn)
    if x.dim() < 1:
        raise ValueError(f"{fn}: x must have at least 1 dimension (..., N), got shape {tuple(x.shape)}")
    if y.dim() < 1:
        raise ValueError(f"{fn}: y must have at least 1 dimension (..., M), got shape {tuple(y.shape)}")
    check_float("x", x, fn)
    check_same_dtype_device(x, y, fn)
    if x.shape[:-1] != y.shape[:-1]:
        raise ValueError(
            f"{fn}: x (..., N) and y (..., M) must have the same leading shape, "
            f"got x {tuple(x.shape)} and y {tuple(y.shape)}"
        )
    if x.shape[-1] == 0:
        raise ValueError(f"{fn}: x rows must not be empty (N > 0), got shape {tuple(x.shape)}")
    if y.shape[-1] == 0:
        raise ValueError(f"{fn}: y rows must not be empty (M > 0), got shape {tuple(y.shape)}")
    check_row_length(x.shape[-1], y.shape[-1], fn)
    return p


MAX_ROW_LENGTH = 2**31 - 1  # the kernels index a row's items with int32 positions


def check_row_length(n: int, m: int, fn: str) -> None:
    """ValueError when a row is longer than the kernels take (the C++ ops raise the same)."""
    if n > MAX_ROW_LENGTH or m > MAX_ROW_LENGTH:
        raise ValueError(
            f"{fn}: rows must hold at most 2^31 - 1 = {MAX_ROW_LENGTH} items, got x rows of N = {n} and y rows of M = {m}"
        )
