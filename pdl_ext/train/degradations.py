"""The distortions of the restoration tasks: noise, bicubic downsampling, JPEG, blur, Bayer mosaic.

They make the training pairs of the demo and the task-specific inputs of MDF training. Every function
takes ``(B, 3, H, W)`` or ``(3, H, W)`` float tensors in [0, 1] and returns the same layout, in [0, 1].
"""
from __future__ import annotations

import io
import math
from typing import Any, Callable, Dict, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from .._checks import check_float, check_tensor

TASKS = ("denoise", "sr", "jpeg", "deblur", "demosaic")


def _check_image(img: object, fn: str) -> Tuple[torch.Tensor, bool]:
    """Validates an RGB image or batch in [0, 1]; returns it as (B, 3, H, W) and whether it was 3D."""
    img = check_tensor("img", img, fn)
    if img.dim() not in (3, 4) or img.shape[-3] != 3:
        raise ValueError(f"{fn}: img must be (B, 3, H, W) or (3, H, W), got shape {tuple(img.shape)}")
    check_float("img", img, fn)
    if img.numel() == 0:
        raise ValueError(f"{fn}: img must not be empty, got shape {tuple(img.shape)}")
    lo, hi = img.detach().aminmax()
    if lo < 0 or hi > 1:
        raise ValueError(f"{fn}: img values must lie in [0, 1], got [{lo.item():.4g}, {hi.item():.4g}]")
    return (img.unsqueeze(0), True) if img.dim() == 3 else (img, False)


def _number(name: str, value: object, fn: str, low: float, low_inclusive: bool = True) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise TypeError(f"{fn}: {name} must be a finite number, got {value!r}")
    if value < low or (value == low and not low_inclusive):
        raise ValueError(f"{fn}: {name} must be {'>=' if low_inclusive else '>'} {low:g}, got {value!r}")
    return float(value)


def add_gaussian_noise(
    img: torch.Tensor,
    sigma: float = 25.0,
    seed: int = 0,
    generator: Optional[torch.Generator] = None,
    clip: bool = True,
) -> torch.Tensor:
    """Additive white Gaussian noise of standard deviation ``sigma / 255``.

    Args:
        img: ``(B, 3, H, W)`` or ``(3, H, W)`` in [0, 1].
        sigma: standard deviation in 8-bit units (25 is the usual denoising benchmark level).
        seed: seed of the noise when no ``generator`` is given (same seed, same noise).
        generator: a ``torch.Generator`` on ``img``'s device to draw from instead.
        clip: clamp the result to [0, 1].

    Returns:
        The noisy image, the shape of ``img``.

    Example:
        >>> import torch
        >>> from pdl_ext.train.degradations import add_gaussian_noise
        >>> add_gaussian_noise(torch.full((3, 8, 8), 0.5), sigma=25).shape
        torch.Size([3, 8, 8])
    """
    fn = "add_gaussian_noise"
    _check_image(img, fn)
    sigma = _number("sigma", sigma, fn, 0.0)
    if generator is None:
        generator = torch.Generator(device=img.device).manual_seed(int(seed))
    noise = torch.randn(img.shape, generator=generator, device=img.device, dtype=img.dtype)
    out = img + noise * (sigma / 255.0)
    return out.clamp(0, 1) if clip else out


def _check_scale(scale: object, fn: str) -> float:
    return _number("scale", scale, fn, 1.0)


def downsample(img: torch.Tensor, scale: float = 4) -> torch.Tensor:
    """Bicubic (antialiased) downsampling by ``scale``: the low-resolution input of super-resolution.

    Args:
        img: ``(B, 3, H, W)`` or ``(3, H, W)`` in [0, 1].
        scale: factor >= 1; the output is ``floor(H / scale) x floor(W / scale)``.

    Returns:
        The low-resolution image, clamped to [0, 1].

    Example:
        >>> import torch
        >>> from pdl_ext.train.degradations import downsample, upsample
        >>> lr = downsample(torch.rand(3, 64, 48), 4); lr.shape
        torch.Size([3, 16, 12])
        >>> upsample(lr, size=(64, 48)).shape
        torch.Size([3, 64, 48])
    """
    fn = "downsample"
    x, squeeze = _check_image(img, fn)
    scale = _check_scale(scale, fn)
    h, w = int(x.shape[-2] // scale), int(x.shape[-1] // scale)
    if h < 1 or w < 1:
        raise ValueError(f"{fn}: img of {x.shape[-2]}x{x.shape[-1]} is too small for scale {scale:g}")
    out = F.interpolate(x, size=(h, w), mode="bicubic", antialias=True, align_corners=False).clamp(0, 1)
    return out[0] if squeeze else out


def upsample(img: torch.Tensor, scale: Optional[float] = None, size: Optional[Tuple[int, int]] = None) -> torch.Tensor:
    """Bicubic upsampling back to ``size`` (or by ``scale``), clamped to [0, 1]: the SR baseline.

    Args:
        img: ``(B, 3, h, w)`` or ``(3, h, w)`` in [0, 1].
        scale: factor >= 1 (output ``round(h * scale) x round(w * scale)``); or give ``size``.
        size: ``(H, W)`` of the output, e.g. the size of the high-resolution original.

    Returns:
        The upsampled image.
    """
    fn = "upsample"
    x, squeeze = _check_image(img, fn)
    if (scale is None) == (size is None):
        raise ValueError(f"{fn}: give exactly one of scale and size, got scale={scale!r}, size={size!r}")
    if size is None:
        scale = _check_scale(scale, fn)
        size = (round(x.shape[-2] * scale), round(x.shape[-1] * scale))
    if len(size) != 2 or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in size):
        raise ValueError(f"{fn}: size must be two positive ints (H, W), got {size!r}")
    out = F.interpolate(x, size=tuple(size), mode="bicubic", align_corners=False).clamp(0, 1)
    return out[0] if squeeze else out


def jpeg_compress(img: torch.Tensor, quality: int = 10) -> torch.Tensor:
    """JPEG compression and decompression with Pillow (4:2:0 chroma subsampling, its default).

    Not differentiable (quantisation); the result is a new tensor on ``img``'s device and dtype.

    Args:
        img: ``(B, 3, H, W)`` or ``(3, H, W)`` in [0, 1].
        quality: Pillow's JPEG quality, 1 (worst) to 100.

    Returns:
        The decoded image, the shape of ``img``.

    Example:
        >>> import torch
        >>> from pdl_ext.train.degradations import jpeg_compress
        >>> jpeg_compress(torch.rand(3, 16, 16), quality=10).shape
        torch.Size([3, 16, 16])
    """
    fn = "jpeg_compress"
    x, squeeze = _check_image(img, fn)
    if isinstance(quality, bool) or not isinstance(quality, int) or not 1 <= quality <= 100:
        raise ValueError(f"{fn}: quality must be an int in [1, 100], got {quality!r}")
    from PIL import Image

    pixels = (x.detach().to("cpu", torch.float32) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    out = []
    for a in pixels:
        buf = io.BytesIO()
        Image.fromarray(a, "RGB").save(buf, format="JPEG", quality=quality)
        buf.seek(0)
        with Image.open(buf) as im:
            out.append(np.asarray(im.convert("RGB")))
    y = torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).to(device=img.device, dtype=img.dtype) / 255
    return y[0] if squeeze else y


def gaussian_blur(img: torch.Tensor, sigma: float = 2.0) -> torch.Tensor:
    """Separable Gaussian blur (kernel radius ``ceil(3 sigma)``, mirrored borders): the deblurring input.

    Args:
        img: ``(B, 3, H, W)`` or ``(3, H, W)`` in [0, 1].
        sigma: standard deviation of the kernel in pixels, > 0.

    Returns:
        The blurred image, the shape of ``img``.
    """
    fn = "gaussian_blur"
    x, squeeze = _check_image(img, fn)
    sigma = _number("sigma", sigma, fn, 0.0, low_inclusive=False)
    r = int(math.ceil(3 * sigma))
    t = torch.arange(-r, r + 1, device=x.device, dtype=x.dtype)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = k / k.sum()
    # Reflection needs the pad to be smaller than the image; tiny images repeat the edge instead.
    mode = "reflect" if r < min(x.shape[-2:]) else "replicate"
    y = F.pad(x, (r, r, r, r), mode=mode)
    y = F.conv2d(y, k.view(1, 1, 1, -1).expand(3, 1, 1, -1), groups=3)
    y = F.conv2d(y, k.view(1, 1, -1, 1).expand(3, 1, -1, 1), groups=3)
    return y[0] if squeeze else y


def bayer_mosaic(img: torch.Tensor) -> torch.Tensor:
    """The raw sensor image of an RGGB Bayer filter: R at (even, even), G at (even, odd) and (odd, even),
    B at (odd, odd).

    Args:
        img: ``(B, 3, H, W)`` or ``(3, H, W)`` in [0, 1].

    Returns:
        ``(B, 1, H, W)`` or ``(1, H, W)``: one colour sample per pixel.
    """
    x, squeeze = _check_image(img, "bayer_mosaic")
    out = (x * _bayer_masks(x)).sum(1, keepdim=True)
    return out[0] if squeeze else out


def _bayer_masks(x: torch.Tensor) -> torch.Tensor:
    h, w = x.shape[-2:]
    rows = torch.arange(h, device=x.device).view(-1, 1) % 2
    cols = torch.arange(w, device=x.device).view(1, -1) % 2
    r = (rows == 0) & (cols == 0)
    b = (rows == 1) & (cols == 1)
    return torch.stack([r, ~(r | b), b]).to(x.dtype).unsqueeze(0)


def demosaic_bilinear(raw: torch.Tensor) -> torch.Tensor:
    """Bilinear demosaicking of an RGGB mosaic: each missing colour is the mean of its nearest samples.

    Args:
        raw: ``(B, 1, H, W)`` or ``(1, H, W)`` mosaic in [0, 1] (as made by ``bayer_mosaic``), H, W >= 2.

    Returns:
        ``(B, 3, H, W)`` or ``(3, H, W)`` RGB image.
    """
    fn = "demosaic_bilinear"
    raw = check_tensor("raw", raw, fn)
    if raw.dim() not in (3, 4) or raw.shape[-3] != 1 or min(raw.shape[-2:]) < 2:
        raise ValueError(f"{fn}: raw must be (B, 1, H, W) or (1, H, W) with H, W >= 2, got shape {tuple(raw.shape)}")
    check_float("raw", raw, fn)
    squeeze = raw.dim() == 3
    x = raw.unsqueeze(0) if squeeze else raw
    sparse = x * _bayer_masks(x)  # (B, 3, H, W), zeros where a colour was not sampled
    k_g = x.new_tensor([[0, 1, 0], [1, 4, 1], [0, 1, 0]]) / 4
    k_rb = x.new_tensor([[1, 2, 1], [2, 4, 2], [1, 2, 1]]) / 4
    weight = torch.stack([k_rb, k_g, k_rb]).unsqueeze(1)
    # A one-pixel reflection keeps the RGGB phase, so border pixels average true neighbours.
    out = F.conv2d(F.pad(sparse, (1, 1, 1, 1), mode="reflect"), weight, groups=3).clamp(0, 1)
    return out[0] if squeeze else out


def demosaic_baseline(img: torch.Tensor) -> torch.Tensor:
    """Mosaic then bilinear demosaic: the input of a demosaicking network, the shape of ``img``."""
    return demosaic_bilinear(bayer_mosaic(img))


# task -> (function, its defaults); `degrade` forwards only these keyword arguments.
_TASK_FUNCTIONS: Dict[str, Tuple[Callable[..., torch.Tensor], Dict[str, Any]]] = {
    "denoise": (add_gaussian_noise, {"sigma": 25.0, "seed": 0, "generator": None, "clip": True}),
    "sr": (downsample, {"scale": 4}),
    "jpeg": (jpeg_compress, {"quality": 10}),
    "deblur": (gaussian_blur, {"sigma": 2.0}),
    "demosaic": (demosaic_baseline, {}),
}


def degrade(img: torch.Tensor, task: str, **params: Any) -> torch.Tensor:
    """Applies the distortion of a restoration task.

    Args:
        img: ``(B, 3, H, W)`` or ``(3, H, W)`` float in [0, 1].
        task: ``"denoise"`` (``sigma=25`` in /255 units, ``seed=0`` or ``generator``, ``clip=True``),
            ``"sr"`` (bicubic downsampling by ``scale=4``; ``upsample(out, size=...)`` brings it back),
            ``"jpeg"`` (Pillow, ``quality=10``), ``"deblur"`` (Gaussian blur, ``sigma=2``) or
            ``"demosaic"`` (RGGB Bayer mosaic, then bilinear demosaicking).
        **params: the task's parameters above; any other name is an error.

    Returns:
        The distorted image, in the layout of ``img`` (smaller by ``scale`` for ``"sr"``).

    Example:
        >>> import torch
        >>> from pdl_ext.train.degradations import degrade
        >>> degrade(torch.rand(2, 3, 32, 32), "sr", scale=4).shape
        torch.Size([2, 3, 8, 8])
    """
    if task not in _TASK_FUNCTIONS:
        raise ValueError(f"degrade: task must be one of {', '.join(repr(t) for t in TASKS)}, got {task!r}")
    func, defaults = _TASK_FUNCTIONS[task]
    unknown = sorted(set(params) - set(defaults))
    if unknown:
        allowed = ", ".join(defaults) or "no parameters"
        raise TypeError(f"degrade: task {task!r} takes {allowed}, got unexpected {', '.join(unknown)}")
    return func(img, **{**defaults, **params})
