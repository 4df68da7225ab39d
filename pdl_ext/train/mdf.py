"""`pdl-ext train-mdf`: trains an MDF loss (a discriminator series) on one image, the SinGAN way.

Mustafa et al., "Training a Task-Specific Image Reconstruction Loss" (WACV 2022), phase 1: an image
pyramid is learnt coarse to fine as in SinGAN (Shaham et al., ICCV 2019). The coarsest generator
turns noise into samples of the image; the generator at each finer scale takes the upsampled coarser
output with the task's distortion z_k (none for SR, Gaussian noise for denoising, JPEG compression
for JPEG) and adds details to it, and a WGAN-GP critic learns to tell the result from the real image.
The critics, frozen, are the MDF feature extractors.

Recipe (SinGAN's defaults, which the MDF code uses): pyramid factor about 0.75 from a coarsest side
of 25 px to a finest side of at most 250 px; widths 32, doubled every 4 scales (at most 128), a scale
starting from the previous scale's weights when the width is unchanged; per iteration 3 critic steps
(gradient penalty 0.1) and 3 generator steps (adversarial + 10 x reconstruction MSE); Adam, lr 5e-4,
betas (0.5, 0.999), lr x 0.1 after 80 % of the iterations; 2000 iterations per scale.
"""
from __future__ import annotations

import argparse
import math
import os
import time
from collections import OrderedDict
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from .degradations import add_gaussian_noise, jpeg_compress
from .images import load_image
from ..io.weights import save_state_dict
from ..losses.mdf import RECEPTIVE_FIELD, ConvBlock, MDFDiscriminator, default_widths, discriminators_state_dict
from .._checks import is_int, is_number

TRAIN_TASKS = ("sr", "denoise", "jpeg")
_PAD = (RECEPTIVE_FIELD - 1) // 2  # the generator's five unpadded convs lose 5 pixels per side


class MDFGenerator(nn.Module):
    """SinGAN's generator (``GeneratorConcatSkip2CleanAdd``): head, three body blocks and a 3x3 conv +
    tanh tail on the (distorted) input ``z``, added to the clean coarser output ``prev``.

    ``z`` is zero-padded by 5 pixels so the output keeps its size.
    """

    def __init__(self, width: int = 32) -> None:
        super().__init__()
        self.head = ConvBlock(3, width)
        self.body = nn.Sequential(OrderedDict((f"block{i}", ConvBlock(width, width)) for i in (1, 2, 3)))
        self.tail = nn.Sequential(nn.Conv2d(width, 3, kernel_size=3), nn.Tanh())

    def forward(self, z: torch.Tensor, prev: torch.Tensor) -> torch.Tensor:
        return prev + self.tail(self.body(self.head(F.pad(z, (_PAD,) * 4))))


def _init_weights(module: nn.Module, generator: torch.Generator) -> None:
    # SinGAN's weights_init: conv weights N(0, 0.02), norm weights N(1, 0.02), norm biases 0; conv
    # biases keep PyTorch's default U(+-1/sqrt(fan_in)), drawn here from `generator` to be seeded.
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.normal_(m.weight, 0.0, 0.02, generator=generator)
            bound = 1 / math.sqrt(m.weight[0].numel())
            nn.init.uniform_(m.bias, -bound, bound, generator=generator)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.normal_(m.weight, 1.0, 0.02, generator=generator)
            nn.init.zeros_(m.bias)


def pyramid_sizes(
    height: int, width: int, min_size: int = 25, max_size: int = 250, scale_factor: float = 0.75
) -> List[Tuple[int, int]]:
    """Image sizes of the training pyramid, coarse to fine, as SinGAN's ``adjust_scales2image``.

    The image is shrunk so its longer side is at most ``max_size``. SinGAN counts the steps of
    ``scale_factor`` from the original shorter side down to ``min_size``, less those that only
    bring the longer side down to ``max_size``; the factor is then adjusted so that the coarsest
    shorter side is ``min_size``.

    Example:
        >>> from pdl_ext.train.mdf import pyramid_sizes
        >>> sizes = pyramid_sizes(300, 451)          # chelsea
        >>> len(sizes), sizes[0], sizes[-1]
        (8, (25, 38), (166, 250))
    """
    log = lambda v: math.log(v, scale_factor)  # noqa: E731
    s = min(max_size / max(height, width), 1.0)
    h, w = round(height * s), round(width * s)
    if min(h, w) <= min_size:
        return [(h, w)]
    # SinGAN's stop_scale: (num_scales = ceil(log(min_size / short)) + 1) - scale2stop.
    long_side, short_side = max(height, width), min(height, width)
    steps = math.ceil(log(min_size / short_side)) + 1 - math.ceil(log(min(max_size, long_side) / long_side))
    if steps < 1:
        return [(h, w)]
    factor = (min_size / min(h, w)) ** (1 / steps)
    return [(round(h * factor ** (steps - k)), round(w * factor ** (steps - k))) for k in range(steps + 1)]


def _resize(x: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=size, mode="bicubic", antialias=True, align_corners=False).clamp(0, 1)


def gradient_penalty(
    critic: nn.Module, real: torch.Tensor, fake: torch.Tensor, weight: float, generator: torch.Generator
) -> torch.Tensor:
    """WGAN-GP (Gulrajani et al. 2017) as SinGAN computes it: one random mix of real and fake, the
    critic's gradient norm over channels at every pixel pushed to 1."""
    alpha = torch.rand((), generator=generator, device=real.device, dtype=real.dtype)
    mix = (alpha * real + (1 - alpha) * fake).requires_grad_(True)
    out = critic(mix)
    (grad,) = torch.autograd.grad(out, mix, grad_outputs=torch.ones_like(out), create_graph=True)
    return weight * ((grad.norm(2, dim=1) - 1) ** 2).mean()


def _distort(
    prev: torch.Tensor, task: str, scale: Optional[float], sigma: float, quality: int, generator: torch.Generator
) -> torch.Tensor:
    """The task distortion z_k of a finer scale's input (the upsampled coarser output ``prev``)."""
    prev = prev.clamp(0, 1)
    if task == "denoise":
        return add_gaussian_noise(prev, sigma, generator=generator)
    if task == "jpeg":
        return jpeg_compress(prev, quality)
    if scale is not None:  # a harsher SR input than the pyramid step: details above 1/scale removed
        low = (max(1, int(prev.shape[-2] // scale)), max(1, int(prev.shape[-1] // scale)))
        return F.interpolate(_resize(prev, low), size=prev.shape[-2:], mode="bicubic", align_corners=False).clamp(0, 1)
    return prev  # SR as in the published code: z_k = 0


def _check_args(
    task: str, scale: Optional[float], sigma: float, quality: int, iters: int, min_size: int, max_size: int
) -> None:
    fn = "train_mdf"
    if task not in TRAIN_TASKS:
        raise ValueError(f"{fn}: task must be one of {', '.join(repr(t) for t in TRAIN_TASKS)}, got {task!r}")
    if not is_int(iters) or iters < 1:
        raise ValueError(f"{fn}: iters must be a positive int, got {iters!r}")
    if scale is not None and (not is_number(scale) or not scale > 1):
        raise ValueError(f"{fn}: scale must be None or a number > 1, got {scale!r}")
    if not is_number(sigma) or not sigma > 0:
        raise ValueError(f"{fn}: sigma must be a number > 0 (in /255 units), got {sigma!r}")
    if not is_int(quality) or not 1 <= quality <= 100:
        raise ValueError(f"{fn}: quality must be an int in [1, 100], got {quality!r}")
    if not isinstance(min_size, int) or min_size < RECEPTIVE_FIELD:
        raise ValueError(
            f"{fn}: min_size must be an int >= {RECEPTIVE_FIELD} (the critics' receptive field), got {min_size!r}"
        )
    if not isinstance(max_size, int) or max_size < min_size:
        raise ValueError(f"{fn}: max_size must be an int >= min_size ({min_size}), got {max_size!r}")


def _prepare_image(image: Union[str, os.PathLike, torch.Tensor], min_size: int) -> torch.Tensor:
    """The training photograph as a ``(3, H, W)`` float tensor in [0, 1], checked."""
    img = load_image(image) if isinstance(image, (str, os.PathLike)) else image
    if not isinstance(img, torch.Tensor):
        raise TypeError(f"train_mdf: image must be a name, a path or a tensor, got {type(image).__name__}")
    if img.dim() == 4 and img.shape[0] == 1:
        img = img[0]
    if img.dim() != 3 or img.shape[0] != 3 or min(img.shape[-2:]) < min_size:
        raise ValueError(
            f"train_mdf: image must be (3, H, W) with H, W >= min_size ({min_size}), got shape {tuple(img.shape)}"
        )
    if not img.is_floating_point() or img.min() < 0 or img.max() > 1:
        raise ValueError("train_mdf: image must be a float tensor in [0, 1]")
    return img


class _Pyramid:
    """The inputs of SinGAN's generators across scales: the task's distortion of the upsampled coarser
    output, noise at the coarsest scale, and per scale the fixed (z, prev) that reconstructs the image."""

    def __init__(self, sizes: List[Tuple[int, int]], task: str, scale: Optional[float], sigma: float, quality: int,
                 device: torch.device, gen: torch.Generator) -> None:
        self.sizes, self.task, self.scale, self.sigma, self.quality = sizes, task, scale, sigma, quality
        self.device, self.gen = device, gen
        self.generators: List[MDFGenerator] = []  # the trained generators, coarse to fine
        self.rec: List[Tuple[torch.Tensor, torch.Tensor]] = []

    def distort(self, prev: torch.Tensor) -> torch.Tensor:
        return _distort(prev, self.task, self.scale, self.sigma, self.quality, self.gen)

    def coarsest_noise(self) -> torch.Tensor:
        # SinGAN's z at the coarsest scale: one noise channel repeated over RGB, around a zero image.
        h, w = self.sizes[0]
        return torch.randn((1, 1, h, w), generator=self.gen, device=self.device).expand(1, 3, h, w)

    @torch.no_grad()
    def upsampled(self, out: torch.Tensor, k: int) -> torch.Tensor:
        return F.interpolate(out, size=self.sizes[k], mode="bicubic", align_corners=False).clamp(0, 1)

    @torch.no_grad()
    def random_input(self, k: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """SinGAN's 'rand' path to scale ``k``: fresh noise at the coarsest scale, fresh distortions above."""
        z, prev = self.coarsest_noise(), torch.zeros((1, 3, *self.sizes[0]), device=self.device)
        for j in range(k):
            prev = self.upsampled(self.generators[j](z, prev), j + 1)
            z = self.distort(prev)
        return z, prev

    @torch.no_grad()
    def add_reconstruction_input(self, k: int) -> None:
        """Fixes scale ``k``'s reconstruction input: the noise map z* at k = 0, else the distorted
        upsampling of the coarser reconstruction."""
        if k == 0:
            self.rec.append((self.coarsest_noise().clone(), torch.zeros((1, 3, *self.sizes[0]), device=self.device)))
        else:
            prev = self.upsampled(self.generators[-1](*self.rec[-1]), k)
            self.rec.append((self.distort(prev), prev))


def _train_scale(critic: MDFDiscriminator, generator: MDFGenerator, real: torch.Tensor, pyramid: _Pyramid, k: int,
                 iters: int, lr: float, desc: str, progress: bool) -> None:
    """SinGAN's WGAN-GP training of one scale: 3 critic steps, then 3 generator steps (adversarial plus
    10 x the reconstruction MSE), Adam (0.5, 0.999), the learning rate cut by 10 at 80 %."""
    from tqdm.auto import tqdm

    critic.train()
    generator.train()
    opt_d = torch.optim.Adam(critic.parameters(), lr=lr, betas=(0.5, 0.999))
    opt_g = torch.optim.Adam(generator.parameters(), lr=lr, betas=(0.5, 0.999))
    milestone = [int(0.8 * iters)]
    sched_d = torch.optim.lr_scheduler.MultiStepLR(opt_d, milestone, gamma=0.1)
    sched_g = torch.optim.lr_scheduler.MultiStepLR(opt_g, milestone, gamma=0.1)
    bar = tqdm(range(iters), desc=desc, disable=not progress, leave=True)
    for _ in bar:
        critic.requires_grad_(True)
        for _ in range(3):
            z, prev = pyramid.random_input(k)
            with torch.no_grad():
                fake = generator(z, prev)
            opt_d.zero_grad(set_to_none=True)
            err_real = -critic(real).mean()
            err_fake = critic(fake).mean()
            gp = gradient_penalty(critic, real, fake, 0.1, pyramid.gen)
            (err_real + err_fake + gp).backward()
            opt_d.step()
        critic.requires_grad_(False)  # generator steps need gradients through the critic, not of it
        for _ in range(3):
            opt_g.zero_grad(set_to_none=True)
            err_adv = -critic(generator(z, prev)).mean()
            err_rec = 10 * F.mse_loss(generator(*pyramid.rec[k]), real)
            (err_adv + err_rec).backward()
            opt_g.step()
        sched_d.step()
        sched_g.step()
        if progress:
            bar.set_postfix(d=f"{-(err_real + err_fake).item():.3f}", rec=f"{err_rec.item():.4f}", refresh=False)


def train_mdf(
    image: Union[str, os.PathLike, torch.Tensor],
    task: str,
    *,
    scale: Optional[float] = None,
    sigma: float = 25.0,
    quality: int = 10,
    iters: int = 2000,
    out: Optional[Union[str, os.PathLike]] = None,
    min_size: int = 25,
    max_size: int = 250,
    lr: float = 5e-4,
    seed: int = 0,
    device: Optional[Union[str, torch.device]] = None,
    progress: bool = True,
    on_scale_end: Optional[Callable[[int, Dict[str, Any]], None]] = None,
) -> Dict[str, torch.Tensor]:
    """Trains an MDF discriminator series on one image for a restoration task.

    Args:
        image: a bundled photograph name (``"astronaut"``, ``"coffee"``, ...), an image path, or a
            ``(3, H, W)`` / ``(1, 3, H, W)`` tensor in [0, 1].
        task: ``"sr"``, ``"denoise"`` or ``"jpeg"``. The generator of each finer scale gets the
            upsampled coarser output: for SR as is (or, with ``scale``, bicubically down- and
            upsampled by ``scale``), for denoising plus Gaussian noise of ``sigma``, for JPEG
            compressed at ``quality``. The coarsest generator gets noise, as in SinGAN.
        scale: SR factor of a harsher SR input (default: the pyramid step only, as in the published code).
        sigma: noise level in /255 units. quality: JPEG quality.
        iters: iterations per scale (SinGAN: 2000).
        out: a ``.safetensors`` file to write (``MDFLoss.from_file`` loads it), or None.
        min_size, max_size: the pyramid's coarsest shorter side and finest longer side, in pixels.
        lr: Adam learning rate of both networks.
        seed: seeds initialisation, noise and gradient-penalty mixes.
        device: default ``"cuda"`` when available, else ``"cpu"``.
        progress: a tqdm bar per scale.
        on_scale_end: called after scale k as ``on_scale_end(k, info)``, ``info`` holding the wall time
            ``"seconds"``, the scale's ``"height"`` and ``"width"``, and its trained ``"critic"`` and
            ``"generator"`` (in eval mode; the generator maps ``(z, prev)`` to an image).

    Returns:
        The ``"{k}.head.conv.weight"``, ... state dict of the critics, coarse (k=0) to fine.

    Example:
        >>> from pdl_ext.train.mdf import train_mdf
        >>> from pdl_ext.losses.mdf import MDFLoss
        >>> train_mdf("brick", "denoise", iters=20, out="brick_dn.safetensors")   # doctest: +SKIP
        >>> MDFLoss.from_file("brick_dn.safetensors")                            # doctest: +SKIP
    """
    _check_args(task, scale, sigma, quality, iters, min_size, max_size)
    if out is not None:  # before any training: a wrong output path must not cost the run
        from ..io.weights import check_output_path

        check_output_path(out, "train_mdf: out")
    img = _prepare_image(image, min_size)
    device = torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))
    sizes = pyramid_sizes(img.shape[-2], img.shape[-1], min_size, max_size)
    widths = default_widths(len(sizes))
    full = img.to(device=device, dtype=torch.float32).unsqueeze(0)
    reals = [_resize(full, s) for s in sizes]
    init_gen = torch.Generator().manual_seed(seed)
    pyramid = _Pyramid(sizes, task, scale, sigma, quality, device, torch.Generator(device=device).manual_seed(seed))
    critics: List[MDFDiscriminator] = []
    for k, (size, width) in enumerate(zip(sizes, widths)):
        t0 = time.perf_counter()
        pyramid.add_reconstruction_input(k)
        critic, generator = MDFDiscriminator(width), MDFGenerator(width)
        _init_weights(critic, init_gen)
        _init_weights(generator, init_gen)
        if k > 0 and widths[k - 1] == width:  # a scale of the previous width starts from its networks
            critic.load_state_dict(critics[-1].state_dict())
            generator.load_state_dict(pyramid.generators[-1].state_dict())
        desc = f"MDF {task} scale {k + 1}/{len(sizes)} ({size[0]}x{size[1]}, width {width})"
        _train_scale(critic.to(device), generator.to(device), reals[k], pyramid, k, iters, lr, desc, progress)
        critics.append(critic.eval())
        pyramid.generators.append(generator.eval().requires_grad_(False))
        if on_scale_end is not None:
            info = {"seconds": time.perf_counter() - t0, "height": size[0], "width": size[1]}
            on_scale_end(k, {**info, "critic": critic, "generator": generator})

    state = discriminators_state_dict(critics)
    if out is not None:
        meta = {"task": task, "iters": str(iters), "sizes": ";".join(f"{h}x{w}" for h, w in sizes),
                "scale": str(scale), "sigma": str(sigma), "quality": str(quality), "seed": str(seed)}
        save_state_dict(state, out, metadata=meta)
    return state


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from .images import BUNDLED_IMAGES

    parser.add_argument("--image", required=True, help=f"image file or bundled name ({', '.join(BUNDLED_IMAGES)})")
    parser.add_argument("--task", required=True, choices=TRAIN_TASKS)
    parser.add_argument("--scale", type=float, default=None,
                        help="SR: remove details above 1/scale from each input "
                        "(default: only the pyramid step, as in the published code)")
    parser.add_argument("--sigma", type=float, default=25.0, help="noise level in /255 units (default 25)")
    parser.add_argument("--quality", type=int, default=10, help="JPEG quality (default 10)")
    parser.add_argument("--out", required=True, help="output .safetensors (for MDFLoss.from_file)")
    parser.add_argument("--iters", type=int, default=2000, help="iterations per scale (default 2000)")
    parser.add_argument("--min-size", type=int, default=25, help="coarsest shorter side in px (default 25)")
    parser.add_argument("--max-size", type=int, default=250, help="finest longer side in px (default 250)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    if args.device is not None:
        from ..apps.cli import check_device

        check_device(args.device, "--device")  # a ValueError (exit status 2), not torch's RuntimeError

    def report(k: int, info: Dict[str, Any]) -> None:
        if not args.quiet:
            print(f"scale {k}: {info['height']}x{info['width']} in {info['seconds']:.1f} s", flush=True)

    state = train_mdf(
        args.image, args.task, scale=args.scale, sigma=args.sigma, quality=args.quality, iters=args.iters,
        out=args.out, min_size=args.min_size, max_size=args.max_size, seed=args.seed, device=args.device,
        progress=not args.quiet, on_scale_end=report,
    )
    count = sum(1 for key in state if key.endswith(".head.conv.weight"))
    print(f"wrote {count} discriminators to {args.out}")
    return 0
