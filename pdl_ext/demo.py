"""`pdl-ext demo`: trains a small restoration network with a pixel loss and with distribution losses
on real photographs, then compares them on held-out images (PSNR, SSIM, a texture statistic, speed).

Every loss spec (``--losses "l1,l1+0.1*pdl,mdf"``, see ``pdl_ext.loss_spec``) trains the same residual
CNN from the same initial weights on the same seeded batches of random crops of the training
photographs, for the same number of steps. The held-out photographs are then restored by each network
and written as one PNG grid per image (degraded input | one column per loss | reference, with a zoomed
crop), with ``metrics.json`` and ``metrics.md``.

Losses: Delbracio, Talebi & Milanfar, "Projected Distribution Loss for Image Enhancement", ICCP 2021
(``pdl``); Mustafa et al., "Training a Task-Specific Image Reconstruction Loss", WACV 2022 (``mdf``);
Talebi & Milanfar, "Learned Perceptual Image Enhancement", ICCP 2018 (``nima``).

Example:
    $ pdl-ext demo                                   # denoising, "l1" vs "l1+0.05*pdl", a few minutes on 2 cores
    $ pdl-ext demo --task sr --losses "l1,l1+0.1*pdl,mdf" --steps 1000
    $ torchrun --nproc_per_node 2 -m pdl_ext demo    # the same training with DDP (gloo on the CPU)
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .degradations import TASKS, degrade, upsample
from .loss_spec import PIXEL_TERMS, LossSpec, WeightedSumLoss, parse_loss_specs
from .pixel import pixel_loss_per_sample

# Named split of the bundled scikit-image photographs ("cat" is "chelsea": never train on it).
TRAIN_IMAGES: Tuple[str, ...] = ("astronaut", "rocket", "immunohistochemistry", "coffee", "brick", "grass", "camera", "coins")
TEST_IMAGES: Tuple[str, ...] = ("chelsea", "gravel")
DEFAULT_LOSSES = "l1,l1+0.05*pdl"
# The task parameters of the PDL paper's experiments (noise sigma in /255 units).
TASK_PARAMS: Dict[str, Dict[str, Any]] = {
    "denoise": {"sigma": 25.0},
    "sr": {"scale": 4},
    "jpeg": {"quality": 10},
    "deblur": {"sigma": 2.0},
    "demosaic": {},
}
# The distortion a short MDF training uses for each demo task (train_mdf knows sr, denoise, jpeg).
MDF_TRAIN_TASK = {"denoise": "denoise", "sr": "sr", "jpeg": "jpeg", "deblur": "sr", "demosaic": "denoise"}
INPUT_LABELS = {"denoise": "input (noisy)", "sr": "input (bicubic x4)", "jpeg": "input (JPEG q10)",
                "deblur": "input (blurred)", "demosaic": "input (bilinear demosaic)"}
MDF_SCALES = 8  # the published loss uses the first 8 discriminators
# The pdl fallback: the two coarsest discriminators (32 channels each) cost a CPU step little; the next
# ones, weighted like these, leave colour noise in a short training.
PDL_MDF_SCALES = 2
MDF_TRAIN_MAX_SIZE = 64  # finest side of the short MDF training for the mdf term (5 scales)
PDL_TRAIN_MAX_SIZE = 32  # ... and for the pdl fallback (3 scales, of which it uses 2)
SHARED_MDF = Path(__file__).resolve().parents[2] / "shared" / "weights" / "mdf"  # a source checkout's ../shared


@dataclass
class DemoConfig:
    """Everything a demo run depends on (written to ``metrics.json``)."""

    task: str = "denoise"
    losses: str = DEFAULT_LOSSES
    steps: int = 300
    crop: int = 48
    batch: int = 8
    lr: float = 2e-3
    width: int = 32
    blocks: int = 3
    eval_size: int = 256
    seed: int = 0
    device: str = "auto"
    vgg_weights: Optional[str] = None
    mdf_weights: Optional[str] = None
    nima_weights: Optional[str] = None
    mdf_iters: int = 100
    threads: int = 0  # 0: torch's default, or 1 when the machine is already busy
    out: str = "demo_out"
    train_images: Tuple[str, ...] = TRAIN_IMAGES
    test_images: Tuple[str, ...] = TEST_IMAGES


class ResidualRestorer(nn.Module):
    """A small residual CNN: 3x3 conv to ``width`` channels, ``blocks`` residual blocks, 3x3 conv back to
    RGB, added to the input (the network predicts a correction of the degraded image).

    Args:
        width: channels of the hidden layers.
        blocks: residual blocks (conv, ReLU, conv, plus the block's input).

    Shapes: ``(B, 3, H, W)`` in, ``(B, 3, H, W)`` out (inputs are upsampled first for SR).

    Example:
        >>> import torch
        >>> ResidualRestorer(16, 2)(torch.rand(1, 3, 24, 24)).shape
        torch.Size([1, 3, 24, 24])
    """

    def __init__(self, width: int = 32, blocks: int = 3) -> None:
        super().__init__()
        self.head = nn.Conv2d(3, width, 3, padding=1)
        self.body = nn.ModuleList(
            nn.Sequential(nn.Conv2d(width, width, 3, padding=1), nn.ReLU(), nn.Conv2d(width, width, 3, padding=1))
            for _ in range(blocks)
        )
        self.tail = nn.Conv2d(width, 3, 3, padding=1)
        # Zero last layer: training starts from the identity, the degraded image itself.
        nn.init.zeros_(self.tail.weight)
        nn.init.zeros_(self.tail.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.head(x)
        for block in self.body:
            h = h + block(h)
        return x + self.tail(h)


def degrade_for_network(clean: torch.Tensor, task: str, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """The network's input for ``clean`` ``(B, 3, H, W)``: the task's distortion, brought back to (H, W).

    Super-resolution inputs are the bicubic upsampling of the x4 bicubic downsampling; denoising draws
    its noise from ``generator``.
    """
    params = dict(TASK_PARAMS[task])
    if task == "denoise":
        params["generator"] = generator
    out = degrade(clean, task, **params)
    if task == "sr":
        out = upsample(out, size=tuple(clean.shape[-2:]))
    return out


def training_batch(
    images: Sequence[torch.Tensor], step: int, batch: int, crop: int, task: str, seed: int
) -> Tuple[torch.Tensor, torch.Tensor]:
    """The seeded (degraded, clean) batch of ``step``: random ``crop`` x ``crop`` crops of random images.

    The same (seed, step) gives the same batch whatever the loss, the process or the world size.
    """
    g = torch.Generator().manual_seed(seed * 1_000_003 + step)
    which = torch.randint(len(images), (batch,), generator=g).tolist()
    crops = []
    for i in which:
        img = images[i]
        top = int(torch.randint(img.shape[-2] - crop + 1, (), generator=g))
        left = int(torch.randint(img.shape[-1] - crop + 1, (), generator=g))
        crops.append(img[:, top:top + crop, left:left + crop])
    clean = torch.stack(crops)
    return degrade_for_network(clean, task, g), clean


@dataclass
class TrainResult:
    """What training one loss produced (the trained weights stay in the model)."""

    step_seconds: List[float] = field(default_factory=list)
    last_loss: float = float("nan")

    @property
    def ms_per_step(self) -> float:
        # median over the steps after the first (warm-up): robust to a shared machine's hiccups
        times = self.step_seconds[1:] or self.step_seconds
        return 1000 * statistics.median(times) if times else float("nan")


def train_restorer(
    model: nn.Module,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    images: Sequence[torch.Tensor],
    *,
    task: str,
    steps: int,
    batch: int,
    crop: int,
    lr: float = 2e-3,
    seed: int = 0,
    device: Union[str, torch.device] = "cpu",
    rank: int = 0,
    world: int = 1,
    progress: bool = False,
    desc: str = "train",
) -> TrainResult:
    """Trains ``model`` in place with ``loss_fn`` on the seeded batches of ``training_batch``.

    Adam with a cosine decay of the learning rate to a tenth. With ``world > 1`` (an initialised
    torch.distributed process group) the model is wrapped in DistributedDataParallel and each rank
    takes its ``batch / world`` share of every global batch, so the run matches a single process.

    Args:
        model: the network, on ``device``.
        loss_fn: ``(output, clean) -> scalar``, a mean over the (local) batch.
        images: training photographs ``(3, H, W)`` in [0, 1], each at least ``crop`` on a side.
        task, steps, batch, crop, lr, seed: the run (``batch`` is global).
        device, rank, world: where to train; ``rank``/``world`` of the process group.
        progress: a tqdm bar (rank 0 only).

    Returns:
        A ``TrainResult`` with the wall time of every step (forward, backward, optimiser).
    """
    if batch % world:
        raise ValueError(f"demo: --batch ({batch}) must be divisible by the number of processes ({world})")
    device = torch.device(device)
    net: nn.Module = model
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        net = DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(steps, 1), eta_min=lr / 10)
    share = batch // world
    mine = slice(rank * share, (rank + 1) * share)
    result = TrainResult()
    from tqdm.auto import tqdm

    bar = tqdm(range(steps), desc=desc, disable=not progress or rank != 0, leave=True, dynamic_ncols=True)
    model.train()
    loss = None
    for step in bar:
        degraded, clean = training_batch(images, step, batch, crop, task, seed)
        degraded, clean = degraded[mine].to(device), clean[mine].to(device)
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(net(degraded), clean)
        loss.backward()
        opt.step()
        sched.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        result.step_seconds.append(time.perf_counter() - t0)
        if progress and rank == 0 and (step % 10 == 0 or step == steps - 1):
            bar.set_postfix(loss=f"{loss.item():.4f}", ms_step=f"{1000 * result.step_seconds[-1]:.0f}", refresh=False)
    bar.close()
    if loss is not None:
        result.last_loss = float(loss.detach())
    model.eval()
    return result


# ----------------------------------------------------------------------------------------------------
# Loss terms


@dataclass
class TermContext:
    """What building the terms needs, and the notes it leaves for the output."""

    task: str
    device: torch.device
    out: Path
    seed: int
    vgg_weights: Optional[str]
    mdf_weights: Optional[str]
    nima_weights: Optional[str]
    mdf_iters: int
    mdf_image: str
    rank: int = 0
    world: int = 1
    progress: bool = True
    notes: List[str] = field(default_factory=list)
    log: Callable[[str], None] = print
    _mdf_path: Optional[Path] = None


def _pixel_term(kind: str) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    def term(out: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
        return pixel_loss_per_sample(out, ref, kind).mean()

    term.__name__ = kind
    return term


def _barrier(ctx: TermContext) -> None:
    if ctx.world > 1:
        import torch.distributed as dist

        dist.barrier()


def resolve_mdf_weights(ctx: TermContext, max_size: int = MDF_TRAIN_MAX_SIZE) -> Path:
    """The MDF discriminators' file: ``--mdf-weights``; else the published ones in ``../shared`` of a
    source checkout; else a short MDF training on a training photograph, cached in ``--out``.

    ``max_size`` is the finest pyramid side of a short training: the pdl fallback needs only the two
    coarsest discriminators, so it trains a 3-scale pyramid (<= 32 px) in seconds; the mdf term
    trains up to 64 px. A series already resolved in this run is reused. ``--mdf-weights train``
    skips the given and published files and trains (or reuses the cached training).
    """
    if ctx._mdf_path is not None:
        return ctx._mdf_path
    given = ctx.mdf_weights
    if given is not None and given != "train":
        path = Path(given).expanduser()
        if not path.is_file():
            raise FileNotFoundError(
                f"--mdf-weights {given!r}: no such file. Give a .safetensors discriminator series (the published "
                "ones convert with `pdl-ext convert-mdf`, or train one with `pdl-ext train-mdf`), or leave the "
                "option out to train a short MDF loss here"
            )
        ctx.log(f"mdf: discriminators from {path}")
        ctx.notes.append(f"MDF discriminators: {path.name} (--mdf-weights)")
        ctx._mdf_path = path
        return path
    shared = SHARED_MDF / ("Ds_JPEG.safetensors" if ctx.task == "jpeg" else "Ds_SISR.safetensors")
    if given is None and shared.is_file():
        ctx.log(f"mdf: using the published MDF discriminators found beside this checkout: {shared}")
        ctx.notes.append(f"MDF discriminators: the published {shared.name} (Mustafa et al. 2022)")
        ctx._mdf_path = shared
        return shared
    mdf_task = MDF_TRAIN_TASK[ctx.task]
    cache = ctx.out / f"mdf_{mdf_task}_{ctx.mdf_image}_{max_size}px_{ctx.mdf_iters}it_seed{ctx.seed}.safetensors"
    if cache.is_file():
        ctx.log(f"mdf: reusing the short MDF training cached in {cache}")
    else:
        why = "--mdf-weights train" if given == "train" else "no MDF weights given (--mdf-weights) or found beside the checkout"
        ctx.log(
            f"mdf: {why}; training a short MDF loss "
            f"first ({mdf_task} on '{ctx.mdf_image}' up to {max_size} px, {ctx.mdf_iters} iterations per scale; "
            f"cached as {cache}). The paper trains 2000 iterations per scale up to 250 px: `pdl-ext train-mdf`."
        )
        if ctx.rank == 0:
            from .mdf_train import train_mdf

            ctx.out.mkdir(parents=True, exist_ok=True)
            tmp = cache.with_suffix(".tmp")
            train_mdf(ctx.mdf_image, mdf_task, iters=ctx.mdf_iters, out=tmp, max_size=max_size, seed=ctx.seed,
                      device=ctx.device, progress=ctx.progress)
            os.replace(tmp, cache)  # a Ctrl-C mid-training leaves no half-written cache
        _barrier(ctx)
    ctx.notes.append(f"MDF discriminators: a short training here ({mdf_task} on {ctx.mdf_image} up to {max_size} px, "
                     f"{ctx.mdf_iters} iterations per scale), not the published ones")
    ctx._mdf_path = cache
    return cache


def _load_mdf(ctx: TermContext, distance: str, count: Optional[int], max_size: int) -> nn.Module:
    from .mdf import MDFLoss

    # num_scales=1 loads any series length; the loss below picks its own count
    series = MDFLoss.from_file(resolve_mdf_weights(ctx, max_size), num_scales=1).discriminators
    discriminators = list(series)[: count or MDF_SCALES]
    return MDFLoss(len(discriminators), distance=distance, discriminators=discriminators).to(ctx.device)


def build_term(name: str, ctx: TermContext) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The callable ``(output, clean) -> scalar`` of one spec term (errors name the missing weights)."""
    if name in PIXEL_TERMS:
        return _pixel_term(name)
    if name == "pdl":
        from .pdl import PDLLoss

        if ctx.vgg_weights is not None and not Path(ctx.vgg_weights).expanduser().is_file():
            raise FileNotFoundError(
                f"--vgg-weights {ctx.vgg_weights!r}: no such file (torchvision's vgg16-397923af.pth, "
                "from https://download.pytorch.org/models/vgg16-397923af.pth)"
            )
        try:
            loss = PDLLoss("vgg16", weights=ctx.vgg_weights, check_range=False).to(ctx.device)
        except FileNotFoundError:
            from .weights import hub_checkpoint_dir

            ctx.log(
                f"pdl: VGG16 weights NOT found (no --vgg-weights, no vgg16-397923af.pth in {hub_checkpoint_dir()}), "
                f"so 'pdl' here is the PDL distance on the features of the first {PDL_MDF_SCALES} MDF discriminators, "
                "not on VGG16 features as in the paper"
            )
            ctx.notes.append(
                f"pdl: PDL distance (per-channel W1 of spatial distributions) on the head, body and tail features "
                f"of the first {PDL_MDF_SCALES} MDF discriminators, because no VGG16 weights were found "
                "(pass --vgg-weights PATH for the paper's VGG16 PDL)"
            )
            return _load_mdf(ctx, "pdl", PDL_MDF_SCALES, PDL_TRAIN_MAX_SIZE)
        ctx.log("pdl: VGG16 features (relu1_2 ... relu5_3), as in the paper")
        ctx.notes.append("pdl: VGG16 relu1_2 ... relu5_3, W1 of spatial distributions (the paper's PDL)")
        return loss
    if name == "mdf":
        loss = _load_mdf(ctx, "mse", None, MDF_TRAIN_MAX_SIZE)
        ctx.notes.append(f"mdf: the published MSE loss over {loss.num_scales} discriminators")
        return loss
    if name == "nima":
        if ctx.nima_weights is None:
            raise FileNotFoundError(
                "the 'nima' term needs --nima-weights PATH: a NIMA checkpoint (VGG16 backbone) such as one "
                "written by `pdl-ext train-nima`; none is bundled"
            )
        from .nima import NIMA, NIMALoss

        path = Path(ctx.nima_weights).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"--nima-weights {ctx.nima_weights!r}: no such file")
        nima_loss = NIMALoss(NIMA("vgg16", weights=path), weight=1.0, fidelity=None).to(ctx.device)
        ctx.notes.append(f"nima: NIMA's mean-score penalty, weights {path.name}")
        return lambda out, ref: nima_loss(out)
    raise ValueError(f"demo: no loss term {name!r}")


# ----------------------------------------------------------------------------------------------------
# Evaluation


def gradient_magnitude(img: torch.Tensor) -> torch.Tensor:
    """Forward-difference gradient magnitude of the luma of ``(3, H, W)`` images: ``(H - 1, W - 1)``."""
    y = 0.299 * img[0] + 0.587 * img[1] + 0.114 * img[2]
    gx = y[:-1, 1:] - y[:-1, :-1]
    gy = y[1:, :-1] - y[:-1, :-1]
    return torch.sqrt(gx * gx + gy * gy)


def texture_w1(out: torch.Tensor, ref: torch.Tensor) -> float:
    """W1 between the distributions of the gradient magnitudes of ``out`` and ``ref`` (3, H, W), in
    8-bit units: 0 when the output has the reference's distribution of edge and texture strengths,
    whatever their positions; it grows both with over-smoothing and with leftover noise."""
    from .ops import wasserstein_1d

    a = gradient_magnitude(out.double()).flatten()[None]
    b = gradient_magnitude(ref.double()).flatten()[None]
    return 255.0 * float(wasserstein_1d(a, b, p=1)[0])


def image_metrics(out: torch.Tensor, ref: torch.Tensor) -> Dict[str, float]:
    """PSNR (dB) and SSIM (scikit-image, data range 1), texture W1, and the mean gradient magnitude
    of ``out`` over that of ``ref`` (below 1: smoother than the reference)."""
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    o = out.detach().double().cpu().clamp(0, 1)
    r = ref.detach().double().cpu()
    o_np, r_np = o.permute(1, 2, 0).numpy(), r.permute(1, 2, 0).numpy()
    return {
        "psnr": float(peak_signal_noise_ratio(r_np, o_np, data_range=1.0)),
        "ssim": float(structural_similarity(r_np, o_np, channel_axis=2, data_range=1.0)),
        "texture_w1": texture_w1(o, r),
        "gradient_ratio": float(gradient_magnitude(o).mean() / gradient_magnitude(r).mean()),
    }


def center_crop(img: torch.Tensor, size: int, multiple: int = 1) -> torch.Tensor:
    """The central ``size`` x ``size`` part of ``(3, H, W)`` (each side capped by the image, then floored
    to a ``multiple``, e.g. the SR factor); ``size <= 0`` keeps the whole image (floored likewise)."""
    h, w = img.shape[-2:]
    th, tw = (h, w) if size <= 0 else (min(size, h), min(size, w))
    th, tw = th - th % multiple, tw - tw % multiple
    top, left = (h - th) // 2, (w - tw) // 2
    return img[:, top:top + th, left:left + tw]


def zoom_box(ref: torch.Tensor) -> Tuple[int, int, int]:
    """(top, left, side) of the square, a quarter of the shorter side, with the most texture (highest
    mean gradient magnitude) of the reference: the part of the grid shown enlarged."""
    mag = gradient_magnitude(ref.double())
    side = max(8, min(ref.shape[-2:]) // 4)
    side = min(side, *mag.shape)
    pooled = F.avg_pool2d(mag[None, None], side, stride=max(1, side // 4))[0, 0]
    idx = int(pooled.flatten().argmax())
    row, col = divmod(idx, pooled.shape[1])
    stride = max(1, side // 4)
    return row * stride, col * stride, side


def _to_uint8(img: torch.Tensor) -> np.ndarray:
    return (img.detach().cpu().float().clamp(0, 1).permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)


def save_grid(path: Path, columns: Sequence[Tuple[str, str, torch.Tensor]], box: Tuple[int, int, int]) -> None:
    """A PNG: one column per (title, subtitle, image ``(3, H, W)``); top row the images with the zoom box
    outlined, bottom row the box enlarged (nearest neighbour, so pixels stay pixels)."""
    from PIL import Image, ImageDraw, ImageFont

    top, left, side = box
    h, w = columns[0][2].shape[-2:]
    factor = max(1, min(h, w) // side)
    zoom = side * factor
    pad, header = 6, 48
    cell_w = max(w, zoom)
    width = pad + len(columns) * (cell_w + pad)
    height = header + h + pad + zoom + pad
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    try:
        font = ImageFont.load_default(size=13)
    except TypeError:  # Pillow < 10.1: the fixed bitmap font
        font = ImageFont.load_default()
    for i, (title, subtitle, img) in enumerate(columns):
        x0 = pad + i * (cell_w + pad)
        draw.text((x0, 2), title, fill=(0, 0, 0), font=font)
        for j, line in enumerate(subtitle.split("\n")):
            draw.text((x0, 16 + 15 * j), line, fill=(70, 70, 70), font=font)
        canvas.paste(Image.fromarray(_to_uint8(img)), (x0, header))
        draw.rectangle((x0 + left - 1, header + top - 1, x0 + left + side, header + top + side), outline=(255, 40, 40))
        crop = _to_uint8(img[:, top:top + side, left:left + side])
        canvas.paste(Image.fromarray(crop).resize((zoom, zoom), Image.NEAREST), (x0, header + h + pad))
    canvas.save(path, optimize=True)


# ----------------------------------------------------------------------------------------------------
# Output


METRIC_COLUMNS = (("psnr", "PSNR dB ↑", "{:.2f}"), ("ssim", "SSIM ↑", "{:.3f}"),
                  ("texture_w1", "texture W1 ↓", "{:.2f}"), ("gradient_ratio", "grad ratio", "{:.2f}"))


def _mean_metrics(per_image: Dict[str, Dict[str, float]]) -> Dict[str, float]:
    keys = next(iter(per_image.values())).keys()
    return {k: float(np.mean([m[k] for m in per_image.values()])) for k in keys}


def metrics_rows(results: Dict[str, Any]) -> Tuple[List[str], List[List[str]]]:
    """The summary table: header and rows (input baseline, then each finished loss), means over images."""
    header = ["loss"] + [c[1] for c in METRIC_COLUMNS] + ["ms/step"]
    rows = []
    entries = [(INPUT_LABELS[results["config"]["task"]], results["input"], None)]
    entries += [(name, r, r["ms_per_step"]) for name, r in results["losses"].items()]
    for label, r, ms in entries:
        mean = r["mean"]
        rows.append([label] + [fmt.format(mean[k]) for k, _, fmt in METRIC_COLUMNS] + ["–" if ms is None else f"{ms:.0f}"])
    return header, rows


def format_table(header: Sequence[str], rows: Sequence[Sequence[str]], markdown: bool) -> str:
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
        return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    fmt = lambda r: "  ".join(str(x).ljust(w) if i == 0 else str(x).rjust(w) for i, (x, w) in enumerate(zip(r, widths)))
    return "\n".join([fmt(header), fmt(["-" * w for w in widths])] + [fmt(r) for r in rows])


def _describe_run(results: Dict[str, Any]) -> str:
    c = results["config"]
    task = {"denoise": f"denoising (Gaussian noise, sigma {TASK_PARAMS['denoise']['sigma']:g}/255)",
            "sr": "x4 super-resolution (bicubic)", "jpeg": "JPEG artifact removal (quality 10)",
            "deblur": "deblurring (Gaussian blur, sigma 2 px)", "demosaic": "demosaicing (RGGB Bayer)"}[c["task"]]
    size = "full" if c["eval_size"] <= 0 else f"{c['eval_size']}x{c['eval_size']} centre crops"
    return (f"{task}; a residual CNN ({c['blocks']} blocks, {c['width']} channels) per loss, {c['steps']} Adam steps "
            f"on batches of {c['batch']} random {c['crop']}x{c['crop']} crops of {', '.join(c['train_images'])}; "
            f"evaluated on the held-out {', '.join(c['test_images'])} ({size}); seed {c['seed']}, "
            f"{results['processes']} process(es) on {results['device']}"
            + (f" ({results['threads']} thread(s) each)" if results["device"] == "cpu" else ""))


def write_outputs(out: Path, results: Dict[str, Any]) -> None:
    """``metrics.json`` and ``metrics.md`` for what is finished so far (rewritten after every loss)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(results, indent=2) + "\n")
    header, rows = metrics_rows(results)
    lines = [f"# pdl-ext demo: {results['config']['task']}", "", _describe_run(results) + ".", "",
             format_table(header, rows, markdown=True), "",
             "Means over the held-out images. texture W1: W1 distance between the distributions of gradient "
             "magnitudes (luma, 8-bit units) of output and reference, 0 = the reference's texture statistics. "
             "grad ratio: mean gradient magnitude over the reference's (< 1 smoother, > 1 noisier). ms/step: "
             "median time of a training step (forward, backward, Adam).", ""]
    if results["notes"]:
        lines += ["Notes:", ""] + [f"- {n}" for n in results["notes"]] + [""]
    if results.get("interrupted"):
        lines += [f"Interrupted: {len(results['losses'])} of {len(results['config_losses'])} losses finished.", ""]
    per = ["| image | loss | " + " | ".join(c[1] for c in METRIC_COLUMNS) + " |",
           "|---|---|" + "---:|" * len(METRIC_COLUMNS)]
    for image in results["config"]["test_images"]:
        for name, r in [("input", results["input"])] + list(results["losses"].items()):
            m = r["images"][image]
            per.append(f"| {image} | {name} | " + " | ".join(fmt.format(m[k]) for k, _, fmt in METRIC_COLUMNS) + " |")
    lines += ["## Per image", ""] + per + [""]
    (out / "metrics.md").write_text("\n".join(lines))


# ----------------------------------------------------------------------------------------------------
# The run


def _resolve_device(device: str, local_rank: int) -> torch.device:
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("demo: --device cuda was asked for but CUDA is not available")
        if dev.index is None:
            dev = torch.device("cuda", local_rank)
    return dev


def _check_config(cfg: DemoConfig, multiple: int) -> None:
    if cfg.task not in TASKS:
        raise ValueError(f"demo: --task must be one of {', '.join(TASKS)}, got {cfg.task!r}")
    if isinstance(cfg.threads, bool) or not isinstance(cfg.threads, int) or cfg.threads < 0:
        raise ValueError(f"demo: --threads must be 0 (automatic) or a positive integer, got {cfg.threads!r}")
    for name in ("steps", "batch", "width", "blocks", "mdf_iters"):
        v = getattr(cfg, name)
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"demo: --{name.replace('_', '-')} must be a positive integer, got {v!r}")
    if cfg.crop < 16 or cfg.crop % multiple:
        raise ValueError(f"demo: --crop must be >= 16 (and a multiple of {multiple} for this task), got {cfg.crop}")
    if not cfg.lr > 0:
        raise ValueError(f"demo: --lr must be > 0, got {cfg.lr}")
    if not cfg.train_images or not cfg.test_images:
        raise ValueError("demo: give at least one training and one test image")
    overlap = set(cfg.train_images) & set(cfg.test_images)
    if overlap or ({"cat", "chelsea"} <= set(cfg.train_images) | set(cfg.test_images)):
        raise ValueError(f"demo: training and test images must differ ('cat' is 'chelsea'), got {sorted(overlap) or ['cat/chelsea']} in both")


def run_demo(config: Optional[DemoConfig] = None, *, progress: bool = True, log: Callable[[str], None] = print,
             **overrides: Any) -> Dict[str, Any]:
    """Runs the demo: trains one network per loss spec, evaluates them and writes the outputs.

    Args:
        config: a ``DemoConfig`` (default: the defaults); keyword ``overrides`` replace its fields,
            e.g. ``run_demo(task="sr", losses="l1,l1+0.05*pdl", steps=500)``.
        progress: tqdm progress bars.
        log: where messages go (rank 0 only).

    Returns:
        The content of ``metrics.json``: ``config``, ``input`` and ``losses`` (per spec: ``images``
        name -> metrics, ``mean``, ``ms_per_step``), ``notes``, ``interrupted``, ``grids``.

    Under torchrun (``WORLD_SIZE`` > 1 in the environment) the training uses DistributedDataParallel
    (gloo on the CPU, NCCL on GPUs); rank 0 evaluates and writes. Ctrl-C stops the current loss and keeps
    what was finished (``interrupted`` is then true).

    Example:
        >>> from pdl_ext.demo import run_demo
        >>> r = run_demo(steps=5, crop=32, batch=2, test_images=("chelsea",), eval_size=64, out="demo_tiny")  # doctest: +SKIP
        >>> sorted(r["losses"])                                                                              # doctest: +SKIP
        ['l1', 'l1+0.05*pdl']
    """
    cfg = DemoConfig(**{**asdict(config or DemoConfig()), **overrides})
    cfg.train_images, cfg.test_images = tuple(cfg.train_images), tuple(cfg.test_images)
    multiple = TASK_PARAMS["sr"]["scale"] if cfg.task == "sr" else (2 if cfg.task == "demosaic" else 1)
    _check_config(cfg, multiple)
    specs: List[LossSpec] = parse_loss_specs(cfg.losses)
    if any("nima" in s.names for s in specs) and cfg.nima_weights is None:
        raise FileNotFoundError("the 'nima' term needs --nima-weights PATH: a NIMA checkpoint (VGG16 backbone), e.g. "
                                "from `pdl-ext train-nima`; none is bundled")

    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = _resolve_device(cfg.device, local_rank)
    created_group = False
    if world > 1:
        import torch.distributed as dist

        if not dist.is_initialized():
            if device.type == "cuda":
                torch.cuda.set_device(device)
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
            created_group = True
        rank = dist.get_rank()
    else:
        rank = 0
    say = log if rank == 0 else (lambda msg: None)
    threads_before = torch.get_num_threads()
    try:
        if device.type == "cpu":
            torch.set_num_threads(_choose_threads(cfg.threads, say))
        return _run(cfg, specs, device, rank, world, progress, say)
    finally:
        torch.set_num_threads(threads_before)
        if created_group:
            import torch.distributed as dist

            dist.destroy_process_group()


def _choose_threads(requested: int, say: Callable[[str], None]) -> int:
    """``requested`` if > 0; else torch's default, or 1 when other work already fills the cores: on a
    busy machine several threads of one process wait for each other and run several times slower."""
    default = torch.get_num_threads()
    if requested > 0:
        return requested
    cores = os.cpu_count() or 1
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    if default > 1 and load >= cores - 0.5:
        say(f"threads: the machine is busy (load average {load:.1f} on {cores} cores), so training uses 1 thread "
            f"instead of {default} (--threads N to choose)")
        return 1
    return default


def _run(cfg: DemoConfig, specs: List[LossSpec], device: torch.device, rank: int, world: int, progress: bool,
         say: Callable[[str], None]) -> Dict[str, Any]:
    from .images import load_image

    t_start = time.perf_counter()
    out = Path(cfg.out)
    multiple = TASK_PARAMS["sr"]["scale"] if cfg.task == "sr" else (2 if cfg.task == "demosaic" else 1)
    train_images = [load_image(n) for n in cfg.train_images]
    small = [n for n, im in zip(cfg.train_images, train_images) if min(im.shape[-2:]) < cfg.crop]
    if small:
        raise ValueError(f"demo: --crop {cfg.crop} is larger than the training image(s) {small}")
    refs = {n: center_crop(load_image(n), cfg.eval_size, multiple) for n in cfg.test_images}
    degraded = {}
    for i, (n, ref) in enumerate(refs.items()):
        g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + 999_983 + i)  # apart from every training batch
        degraded[n] = degrade_for_network(ref[None], cfg.task, g)[0]

    ctx = TermContext(task=cfg.task, device=device, out=out, seed=cfg.seed, vgg_weights=cfg.vgg_weights,
                      mdf_weights=cfg.mdf_weights, nima_weights=cfg.nima_weights, mdf_iters=cfg.mdf_iters,
                      mdf_image=cfg.train_images[0], rank=rank, world=world, progress=progress, log=say)
    term_fns: Dict[str, Callable] = {}
    names = dict.fromkeys(n for s in specs for n in s.names)
    for name in sorted(names, key=lambda n: n != "mdf"):  # mdf first: a pdl fallback reuses its series
        term_fns[name] = build_term(name, ctx)

    torch.manual_seed(cfg.seed)
    initial = {k: v.clone() for k, v in ResidualRestorer(cfg.width, cfg.blocks).state_dict().items()}
    results: Dict[str, Any] = {
        "config": asdict(cfg), "config_losses": [str(s) for s in specs], "device": str(device),
        "processes": world, "torch": torch.__version__, "threads": torch.get_num_threads(),
        "notes": ctx.notes, "input": {"images": {}}, "losses": {}, "grids": {}, "interrupted": False,
    }
    results["input"]["images"] = {n: image_metrics(degraded[n], refs[n]) for n in refs}
    results["input"]["mean"] = _mean_metrics(results["input"]["images"])
    outputs: Dict[str, Dict[str, torch.Tensor]] = {}
    say(f"demo: {_describe_run(results)}")
    for i, spec in enumerate(specs):
        name = str(spec)
        model = ResidualRestorer(cfg.width, cfg.blocks)
        model.load_state_dict(initial)
        model.to(device)
        loss_fn = WeightedSumLoss(spec, term_fns)
        try:
            tr = train_restorer(model, loss_fn, train_images, task=cfg.task, steps=cfg.steps, batch=cfg.batch,
                                crop=cfg.crop, lr=cfg.lr, seed=cfg.seed, device=device, rank=rank, world=world,
                                progress=progress, desc=f"[{i + 1}/{len(specs)}] {name}")
        except KeyboardInterrupt:
            results["interrupted"] = True
            say(f"\ninterrupted while training {name!r}: keeping the {len(results['losses'])} finished loss(es)")
            break
        if rank != 0:
            continue
        with torch.no_grad():
            outputs[name] = {n: model(degraded[n][None].to(device))[0].clamp(0, 1).cpu() for n in refs}
        per_image = {n: image_metrics(outputs[name][n], refs[n]) for n in refs}
        results["losses"][name] = {"images": per_image, "mean": _mean_metrics(per_image), "ms_per_step": tr.ms_per_step,
                                   "steps": cfg.steps, "last_loss": tr.last_loss}
        say(f"{name}: {tr.ms_per_step:.0f} ms/step, PSNR {results['losses'][name]['mean']['psnr']:.2f} dB")
        _write_all(out, results, refs, degraded, outputs)
    if rank == 0:
        results["wall_seconds"] = time.perf_counter() - t_start
        _write_all(out, results, refs, degraded, outputs)
        header, rows = metrics_rows(results)
        say("")
        say(format_table(header, rows, markdown=False))
        for n in results["notes"]:
            say(f"note: {n}")
        say(f"wrote {out / 'metrics.json'}, {out / 'metrics.md'} and {', '.join(results['grids'].values())} "
            f"in {results['wall_seconds']:.0f} s")
    return results


def _write_all(out: Path, results: Dict[str, Any], refs: Dict[str, torch.Tensor], degraded: Dict[str, torch.Tensor],
               outputs: Dict[str, Dict[str, torch.Tensor]]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for n, ref in refs.items():
        m = results["input"]["images"][n]
        cols = [("input", f"PSNR {m['psnr']:.2f} dB\ntexture W1 {m['texture_w1']:.2f}", degraded[n])]
        for name, imgs in outputs.items():
            m = results["losses"][name]["images"][n]
            cols.append((name, f"PSNR {m['psnr']:.2f} dB\ntexture W1 {m['texture_w1']:.2f}", imgs[n]))
        cols.append(("reference", f"{n}\n{tuple(ref.shape[-2:])[0]}x{tuple(ref.shape[-2:])[1]}", ref))
        path = out / f"grid_{n}.png"
        save_grid(path, cols, zoom_box(ref))
        results["grids"][n] = str(path)
    write_outputs(out, results)


# ----------------------------------------------------------------------------------------------------
# CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = DemoConfig()
    parser.add_argument("--task", choices=TASKS, default=d.task, help=f"restoration task (default {d.task})")
    parser.add_argument("--losses", default=d.losses,
                        help=f"comma-separated loss specs, sums of WEIGHT*TERM with terms l1, l2, charbonnier, pdl, mdf, "
                             f"nima (default {d.losses!r})")
    parser.add_argument("--steps", type=int, default=d.steps, help=f"training steps per loss (default {d.steps})")
    parser.add_argument("--crop", type=int, default=d.crop, help=f"training crop side in px (default {d.crop})")
    parser.add_argument("--batch", type=int, default=d.batch, help=f"global batch size (default {d.batch})")
    parser.add_argument("--lr", type=float, default=d.lr, help=f"Adam learning rate (default {d.lr:g})")
    parser.add_argument("--width", type=int, default=d.width, help=f"channels of the network (default {d.width})")
    parser.add_argument("--blocks", type=int, default=d.blocks, help=f"residual blocks of the network (default {d.blocks})")
    parser.add_argument("--eval-size", type=int, default=d.eval_size,
                        help=f"side of the centre crop of each test image, 0 for the whole image (default {d.eval_size})")
    parser.add_argument("--train-images", default=",".join(d.train_images), help="comma-separated bundled names or files")
    parser.add_argument("--test-images", default=",".join(d.test_images), help="comma-separated bundled names or files")
    parser.add_argument("--device", default=d.device, help="auto, cpu, cuda or cuda:N (default auto)")
    parser.add_argument("--vgg-weights", default=None, help="torchvision's vgg16-397923af.pth for pdl (default: the torch hub cache)")
    parser.add_argument("--mdf-weights", default=None,
                        help="MDF discriminators (.safetensors) for mdf (and pdl without VGG); 'train' forces a short "
                             "training (default: the published ones beside a source checkout, else a short training)")
    parser.add_argument("--mdf-iters", type=int, default=d.mdf_iters, help=f"iterations per scale of the short MDF training (default {d.mdf_iters})")
    parser.add_argument("--nima-weights", default=None, help="NIMA checkpoint, needed by the nima term")
    parser.add_argument("--threads", type=int, default=d.threads,
                        help="CPU threads; 0 (default): torch's default, or 1 when the machine is already busy")
    parser.add_argument("--seed", type=int, default=d.seed)
    parser.add_argument("--out", default=d.out, help=f"output directory (default {d.out})")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    split = lambda s: tuple(x.strip() for x in s.split(",") if x.strip())
    cfg = DemoConfig(task=args.task, losses=args.losses, steps=args.steps, crop=args.crop, batch=args.batch, lr=args.lr,
                     width=args.width, blocks=args.blocks, eval_size=args.eval_size, seed=args.seed, device=args.device,
                     vgg_weights=args.vgg_weights, mdf_weights=args.mdf_weights, nima_weights=args.nima_weights,
                     mdf_iters=args.mdf_iters, threads=args.threads, out=args.out, train_images=split(args.train_images),
                     test_images=split(args.test_images))
    try:
        results = run_demo(cfg, progress=not args.quiet, log=lambda m: print(m, flush=True))
    except (ValueError, FileNotFoundError) as e:
        print(f"pdl-ext demo: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # before any loss finished (e.g. during a short MDF training)
        print("\npdl-ext demo: interrupted before any loss finished", file=sys.stderr)
        return 130
    return 130 if results["interrupted"] else 0
