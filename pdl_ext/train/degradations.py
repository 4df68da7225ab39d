"""The distortions of the restoration tasks (noise, bicubic downsampling, JPEG, blur, Bayer mosaic) and
of the enhancement tasks (haze by the scattering model, tone compression).

They make the training pairs of the demo and the task-specific inputs of MDF training. Every function
takes ``(B, 3, H, W)`` or ``(3, H, W)`` float tensors in [0, 1] and returns the same layout, in [0, 1].
"""
from __future__ import annotations

import io
import math
from typing import Any, Callable, Dict, Optional, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F

from .._checks import check_float, check_tensor, is_int, is_number

TASKS = ("denoise", "sr", "jpeg", "deblur", "demosaic", "dehaze", "tonemap")


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
    if not is_number(value) or not math.isfinite(value):
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
    if len(size) != 2 or any(not is_int(s) or s < 1 for s in size):
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
    if not is_int(quality) or not 1 <= quality <= 100:
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


# ---------------------------------------------------------------- enhancement: haze and tone compression


def _range(name: str, value: object, fn: str, low: float, high: float = math.inf) -> Tuple[float, float]:
    """A number or a ``(low, high)`` pair within [low, high]; returns the pair (a number gives (v, v))."""
    pair = tuple(value) if isinstance(value, (tuple, list)) else (value, value)
    if len(pair) != 2 or not all(is_number(v) and math.isfinite(v) for v in pair):
        raise TypeError(f"{fn}: {name} must be a finite number or a (low, high) pair of them, got {value!r}")
    lo, hi = float(pair[0]), float(pair[1])
    if not low <= lo <= hi <= high:
        bound = f"in [{low:g}, {high:g}]" if math.isfinite(high) else f">= {low:g}"
        raise ValueError(f"{fn}: {name} must be {bound}, or a (low, high) pair of such numbers with low <= high, "
                         f"got {value!r}")
    return lo, hi


def _unit(name: str, value: object, fn: str) -> float:
    """A finite number in [0, 1]."""
    v = _number(name, value, fn, 0.0)
    if v > 1:
        raise ValueError(f"{fn}: {name} must be in [0, 1], got {value!r}")
    return v


def _draw(bounds: Tuple[float, float], n: int, generator: torch.Generator, device, dtype) -> torch.Tensor:
    """``n`` uniform draws in [lo, hi] (always consumes ``n`` numbers of the generator)."""
    u = torch.rand(n, generator=generator, device=device, dtype=dtype)
    return bounds[0] + (bounds[1] - bounds[0]) * u


def synthetic_depth(
    batch: int,
    height: int,
    width: int,
    noise: float = 0.35,
    cells: int = 3,
    generator: Optional[torch.Generator] = None,
    seed: int = 0,
    device: Union[str, torch.device, None] = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """A smooth scene depth for the haze model: a vertical ramp plus low-frequency noise, in [0, 1].

    ``d = (1 - noise) * ramp + noise * field``: ``ramp`` falls linearly from 1 on the top row (far:
    sky, horizon) to 0 on the bottom row (near), ``field`` is a ``(cells + 1) x (cells + 1)`` grid of
    uniform draws upsampled bicubically to ``H x W`` (clamped to [0, 1]).

    Args:
        batch, height, width: B, H, W of the output (H, W >= 1).
        noise: weight of the low-frequency field, in [0, 1].
        cells: grid cells of the field per side (>= 1; more: bumpier depth).
        generator: a ``torch.Generator`` on ``device`` to draw from; else one seeded with ``seed``.
        device, dtype: of the output (default: the CPU, float32).

    Returns:
        ``(B, 1, H, W)`` depth in [0, 1].

    Example:
        >>> from pdl_ext.train.degradations import synthetic_depth
        >>> d = synthetic_depth(2, 32, 48, seed=1); d.shape, bool(d[:, :, 0].mean() > d[:, :, -1].mean())
        (torch.Size([2, 1, 32, 48]), True)
    """
    fn = "synthetic_depth"
    for name, v, lo in (("batch", batch, 1), ("height", height, 1), ("width", width, 1), ("cells", cells, 1)):
        if not is_int(v) or v < lo:
            raise ValueError(f"{fn}: {name} must be an int >= {lo}, got {v!r}")
    noise = _unit("noise", noise, fn)
    device = torch.device(device) if device is not None else (generator.device if generator is not None
                                                               else torch.device("cpu"))
    if generator is None:
        generator = torch.Generator(device=device).manual_seed(int(seed))
    grid = torch.rand(batch, 1, cells + 1, cells + 1, generator=generator, device=device, dtype=torch.float32)
    field = F.interpolate(grid, size=(height, width), mode="bicubic", align_corners=True).clamp(0, 1)
    ramp = torch.linspace(1, 0, height, device=device, dtype=torch.float32).view(1, 1, height, 1)
    return ((1 - noise) * ramp + noise * field).to(dtype)


def add_haze(
    img: torch.Tensor,
    beta: Union[float, Tuple[float, float]] = (0.8, 1.8),
    airlight: Union[float, Tuple[float, float]] = (0.85, 1.0),
    depth: Optional[torch.Tensor] = None,
    depth_noise: float = 0.35,
    seed: int = 0,
    generator: Optional[torch.Generator] = None,
) -> torch.Tensor:
    r"""Haze by the atmospheric scattering model: :math:`I = J\,t + A\,(1 - t)`, :math:`t = e^{-\beta d}`.

    ``J`` is ``img`` (the clean scene), ``d`` a smooth depth in [0, 1] (:func:`synthetic_depth`: far
    at the top, near at the bottom), ``A`` a grey airlight near white, ``beta`` the scattering
    coefficient. Per image of the batch, ``beta`` and ``A`` are drawn uniformly from their ranges,
    in this order, then the depth (unless given); the same seed gives the same haze.

    Args:
        img: ``(B, 3, H, W)`` or ``(3, H, W)`` in [0, 1].
        beta: scattering coefficient >= 0, a number or a ``(low, high)`` range (default (0.8, 1.8):
            transmission about 0.2 to 0.45 at the far top, 1 at the near bottom).
        airlight: grey airlight ``A`` in [0, 1], a number or a range (default (0.85, 1.0)).
        depth: ``(B, 1, H, W)``, ``(1, H, W)`` or ``(H, W)`` depth >= 0 to use instead of a random one.
        depth_noise: ``noise`` of :func:`synthetic_depth`, in [0, 1].
        seed: seed of the draws when no ``generator`` is given.
        generator: a ``torch.Generator`` on ``img``'s device to draw from instead.

    Returns:
        The hazy image, the shape of ``img``, in [0, 1] (a convex combination of ``J`` and ``A``).

    Example:
        >>> import torch
        >>> from pdl_ext.train.degradations import add_haze
        >>> clean = torch.zeros(3, 16, 16)                    # a black scene shows the haze alone
        >>> hazy = add_haze(clean, beta=1.0, airlight=1.0, depth=torch.ones(16, 16))
        >>> round(hazy.mean().item(), 4)                       # 1 - exp(-1)
        0.6321

    Paper: the scattering model as used by He, Sun & Tang, "Single Image Haze Removal Using Dark
    Channel Prior", CVPR 2009; the dehazing experiment of Talebi & Milanfar, ICCP 2018.
    """
    fn = "add_haze"
    x, squeeze = _check_image(img, fn)
    beta_r = _range("beta", beta, fn, 0.0)
    air_r = _range("airlight", airlight, fn, 0.0, 1.0)
    b, _, h, w = x.shape
    if generator is None:
        generator = torch.Generator(device=x.device).manual_seed(int(seed))
    # drawn in float64 whatever the image's dtype: the same seed gives the same haze in any precision
    betas = _draw(beta_r, b, generator, x.device, torch.float64).to(x.dtype).view(b, 1, 1, 1)
    air = _draw(air_r, b, generator, x.device, torch.float64).to(x.dtype).view(b, 1, 1, 1)
    if depth is None:
        d = synthetic_depth(b, h, w, noise=depth_noise, generator=generator, device=x.device, dtype=x.dtype)
    else:
        d = check_tensor("depth", depth, fn)
        check_float("depth", d, fn)
        d = d.view(1, 1, *d.shape) if d.dim() == 2 else (d.unsqueeze(0) if d.dim() == 3 else d)
        if d.dim() != 4 or d.shape[1] != 1 or tuple(d.shape[-2:]) != (h, w) or d.shape[0] not in (1, b):
            raise ValueError(f"{fn}: depth must be (B, 1, H, W), (1, H, W) or (H, W) matching img {tuple(img.shape)}, "
                             f"got shape {tuple(depth.shape)}")
        if d.numel() and d.detach().min() < 0:
            raise ValueError(f"{fn}: depth must be >= 0, got a minimum of {d.detach().min().item():.4g}")
        d = d.to(device=x.device, dtype=x.dtype)
    t = torch.exp(-betas * d)
    out = x * t + air * (1 - t)
    return out[0] if squeeze else out


def compress_tones(
    img: torch.Tensor,
    exposure: float = -1.0,
    compression: float = 3.0,
    local: float = 0.5,
    sigma: float = 4.0,
) -> torch.Tensor:
    r"""A photograph with compressed tones, the input of the tone-mapping (enhancement) task.

    Three steps, per channel:

    1. exposure: :math:`x \leftarrow \min(1, 2^{e} x)` (``exposure`` e in stops; negative darkens);
    2. a flattening global curve :math:`c(x) = x\,(1 + k) / (1 + k x)` (``compression`` k >= 0; a
       Reinhard-type curve fixing 0 and 1, slope :math:`1 + k` at black and :math:`1/(1 + k)` at
       white: the highlights are squeezed together);
    3. local contrast reduced: with :math:`b` the Gaussian blur of the result (``sigma`` px, as
       :func:`gaussian_blur`), :math:`y = b + (1 - \ell)(x - b)` (``local`` :math:`\ell` in [0, 1]:
       the detail layer is scaled by :math:`1 - \ell`).

    Args:
        img: ``(B, 3, H, W)`` or ``(3, H, W)`` in [0, 1].
        exposure: stops, <= 0 to stay in range (positive values are clipped at 1).
        compression: k >= 0 (0: no curve).
        local: :math:`\ell` in [0, 1] (0: detail kept, 1: only the blurred base left).
        sigma: standard deviation of the base layer's blur in pixels, > 0.

    Returns:
        The compressed image, the shape of ``img``, in [0, 1]; differentiable.

    Example:
        >>> import torch
        >>> from pdl_ext.train.degradations import compress_tones
        >>> y = compress_tones(torch.rand(3, 32, 32), exposure=-1.0, compression=3.0, local=0.5)
        >>> y.shape, bool(y.max() <= 0.8)                       # white lands on c(0.5) = 0.8
        (torch.Size([3, 32, 32]), True)
    """
    fn = "compress_tones"
    x, squeeze = _check_image(img, fn)
    e = _number("exposure", exposure, fn, -math.inf)
    k = _number("compression", compression, fn, 0.0)
    ell = _unit("local", local, fn)
    sigma = _number("sigma", sigma, fn, 0.0, low_inclusive=False)
    y = (x * 2.0 ** e).clamp(max=1.0)
    y = y * (1 + k) / (1 + k * y)
    if ell > 0:
        base = gaussian_blur(y, sigma)
        y = base + (1 - ell) * (y - base)
    return y[0] if squeeze else y


# task -> (function, its defaults); `degrade` forwards only these keyword arguments.
_TASK_FUNCTIONS: Dict[str, Tuple[Callable[..., torch.Tensor], Dict[str, Any]]] = {
    "denoise": (add_gaussian_noise, {"sigma": 25.0, "seed": 0, "generator": None, "clip": True}),
    "sr": (downsample, {"scale": 4}),
    "jpeg": (jpeg_compress, {"quality": 10}),
    "deblur": (gaussian_blur, {"sigma": 2.0}),
    "demosaic": (demosaic_baseline, {}),
    "dehaze": (add_haze, {"beta": (0.8, 1.8), "airlight": (0.85, 1.0), "depth": None, "depth_noise": 0.35,
                          "seed": 0, "generator": None}),
    "tonemap": (compress_tones, {"exposure": -1.0, "compression": 3.0, "local": 0.5, "sigma": 4.0}),
}


def degrade(img: torch.Tensor, task: str, **params: Any) -> torch.Tensor:
    """Applies the distortion of a restoration task.

    Args:
        img: ``(B, 3, H, W)`` or ``(3, H, W)`` float in [0, 1].
        task: ``"denoise"`` (``sigma=25`` in /255 units, ``seed=0`` or ``generator``, ``clip=True``),
            ``"sr"`` (bicubic downsampling by ``scale=4``; ``upsample(out, size=...)`` brings it back),
            ``"jpeg"`` (Pillow, ``quality=10``), ``"deblur"`` (Gaussian blur, ``sigma=2``) or
            ``"demosaic"`` (RGGB Bayer mosaic, then bilinear demosaicking); the enhancement tasks
            ``"dehaze"`` (:func:`add_haze`: ``beta=(0.8, 1.8)``, ``airlight=(0.85, 1.0)``, ``depth=None``,
            ``depth_noise=0.35``, ``seed=0`` or ``generator``) and ``"tonemap"`` (:func:`compress_tones`:
            ``exposure=-1``, ``compression=3``, ``local=0.5``, ``sigma=4``).
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
