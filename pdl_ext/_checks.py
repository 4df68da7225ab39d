"""Input validation shared by every public function: messages name the argument, the expected and the
received value (the C++ ops check the same things with the same wording)."""
from __future__ import annotations

import numbers
from typing import Optional, Sequence, Tuple

import torch

_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def is_int(v: object) -> bool:
    """An integer that is not a bool (Python or NumPy)."""
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def is_number(v: object) -> bool:
    """A real number that is not a bool (Python or NumPy)."""
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


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


def check_images(fn: str, x: object, y: object = None, *, names: Tuple[str, str] = ("x", "y"),
                 channels: Optional[int] = None, shape_text: Optional[str] = None, same_shape: bool = False,
                 same_batch_and_channels: bool = False, nonempty: bool = False,
                 min_size: Optional[Tuple[int, str]] = None) -> None:
    """The one image-batch validator: ``x`` (and ``y`` when given) are float ``(B, C, H, W)`` tensors
    (``C == channels`` when given), of one dtype and device, optionally of one shape, or of equal batch
    and channel counts, non-empty, and at least ``min_size = (side, why)`` on each side.

    ``shape_text`` is how the messages describe the expected shape (default ``(B, 3, H, W)`` with
    ``channels=3``, else ``an image batch (B, C, H, W)``).
    """
    if shape_text is None:
        shape_text = f"(B, {channels}, H, W)" if channels else "an image batch (B, C, H, W)"
    pairs = [(names[0], x)] + ([] if y is None else [(names[1], y)])
    for name, t in pairs:
        check_tensor(name, t, fn)
        if t.dim() != 4 or (channels is not None and t.shape[1] != channels):
            raise ValueError(f"{fn}: {name} must be {shape_text}, got shape {tuple(t.shape)}")
    check_float(names[0], x, fn)
    if y is not None:
        check_same_dtype_device(x, y, fn, names)
    if nonempty and x.shape[0] == 0:
        raise ValueError(f"{fn}: {names[0]} must hold at least one image, got shape {tuple(x.shape)}")
    if y is not None and same_shape and x.shape != y.shape:
        raise ValueError(f"{fn}: {names[0]} and {names[1]} must have the same shape, got {tuple(x.shape)} and "
                         f"{tuple(y.shape)}")
    if y is not None and same_batch_and_channels:
        if x.shape[0] != y.shape[0]:
            raise ValueError(f"{fn}: {names[0]} and {names[1]} must have the same batch size, got {x.shape[0]} and "
                             f"{y.shape[0]}")
        if x.shape[1] != y.shape[1]:
            raise ValueError(f"{fn}: {names[0]} and {names[1]} must have the same channel count, got {x.shape[1]} and "
                             f"{y.shape[1]}")
    if min_size is not None:
        side, why = min_size
        if min(x.shape[-2:]) < side:
            raise ValueError(f"{fn}: images must be at least {side}x{side} ({why}), got {x.shape[-2]}x{x.shape[-1]}")


MAX_ROW_LENGTH = 2**31 - 1  # the kernels index a row's items with int32 positions


def check_row_length(n: int, m: int, fn: str) -> None:
    """ValueError when a row is longer than the kernels take (the C++ ops raise the same)."""
    if n > MAX_ROW_LENGTH or m > MAX_ROW_LENGTH:
        raise ValueError(
            f"{fn}: rows must hold at most 2^31 - 1 = {MAX_ROW_LENGTH} items, got x rows of N = {n} and y rows of M = {m}"
        )
