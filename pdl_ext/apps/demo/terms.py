"""The demo's loss terms: pixel terms, PDL (VGG16, or MDF features without VGG weights), MDF and NIMA."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, List, Optional

import torch
from torch import nn

from ..loss_spec import PIXEL_TERMS
from ...losses.pixel import pixel_loss_per_sample

# The bundled published series (MDFLoss.from_pretrained) for each demo task.
MDF_PRETRAINED = {"sr": "sisr", "deblur": "sisr", "denoise": "denoise", "demosaic": "denoise", "jpeg": "jpeg"}
# The distortion a short MDF training (--mdf-weights train) uses for each task (train_mdf knows sr, denoise, jpeg).
MDF_TRAIN_TASK = {"denoise": "denoise", "sr": "sr", "jpeg": "jpeg", "deblur": "sr", "demosaic": "denoise"}
MDF_SCALES = 8  # the published loss uses the first 8 discriminators
# The pdl fallback: the two coarsest discriminators (32 channels each) cost a CPU step little; the next
# ones, weighted like these, leave colour noise in a short training.
PDL_MDF_SCALES = 2
MDF_TRAIN_MAX_SIZE = 64  # finest side of the short MDF training for the mdf term (5 scales)
PDL_TRAIN_MAX_SIZE = 32  # ... and for the pdl fallback (3 scales, of which it uses 2)
NIMA_MARGIN = 8  # px of the output's border the nima term does not score (see build_term)


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
    """The MDF discriminators' file: ``--mdf-weights PATH``; by default the published series bundled
    with the package for the task (``MDF_PRETRAINED``: sr/deblur -> sisr, denoise/demosaic -> denoise,
    jpeg -> jpeg; ``MDFLoss.from_pretrained``); with ``--mdf-weights train`` a short MDF training on a
    training photograph, cached in ``--out``.

    ``max_size`` is the finest pyramid side of a short training: the pdl fallback needs only the two
    coarsest discriminators, so it trains a 3-scale pyramid (<= 32 px) in seconds; the mdf term
    trains up to 64 px. A series already resolved in this run is reused.
    """
    if ctx._mdf_path is not None:
        return ctx._mdf_path
    given = ctx.mdf_weights
    if given is not None and given != "train":
        path = Path(given).expanduser()
        if not path.is_file():
            raise FileNotFoundError(
                f"--mdf-weights {given!r}: no such file. Give a .safetensors discriminator series (the published "
                "ones convert with `pdl-ext convert-mdf`, or train one with `pdl-ext train-mdf`), leave the "
                "option out for the published ones bundled with pdl-ext, or give 'train' to train a short MDF loss here"
            )
        ctx.log(f"mdf: discriminators from {path}")
        ctx.notes.append(f"MDF discriminators: {path.name} (--mdf-weights)")
        ctx._mdf_path = path
        return path
    if given is None:
        from ...losses.mdf import pretrained_path

        # a task without a published series of its own gets the SISR one (the authors' general series)
        series = MDF_PRETRAINED.get(ctx.task, "sisr")
        which = f"series {series!r}" if ctx.task in MDF_PRETRAINED else f"series {series!r} (none published for {ctx.task})"
        path = pretrained_path(series)
        ctx.log(f"mdf: the published MDF discriminators (Mustafa et al. 2022, bundled): "
                f"MDFLoss.from_pretrained({series!r}), {path.name}")
        ctx.notes.append(f"MDF discriminators: the published discriminators (Mustafa et al. 2022, bundled), "
                         f"{which} ({path.name})")
        ctx._mdf_path = path
        return path
    if ctx.task not in MDF_TRAIN_TASK:
        raise ValueError(f"--mdf-weights train: no MDF training distortion for --task {ctx.task} (known: "
                         f"{', '.join(MDF_TRAIN_TASK)}); give --mdf-weights PATH, or leave it out for the published ones")
    mdf_task = MDF_TRAIN_TASK[ctx.task]
    cache = ctx.out / f"mdf_{mdf_task}_{ctx.mdf_image}_{max_size}px_{ctx.mdf_iters}it_seed{ctx.seed}.safetensors"
    if cache.is_file():
        ctx.log(f"mdf: reusing the short MDF training cached in {cache}")
    else:
        ctx.log(
            f"mdf: --mdf-weights train; training a short MDF loss "
            f"first ({mdf_task} on '{ctx.mdf_image}' up to {max_size} px, {ctx.mdf_iters} iterations per scale; "
            f"cached as {cache}). The paper trains 2000 iterations per scale up to 250 px: `pdl-ext train-mdf`."
        )
        if ctx.rank == 0:
            from ...train.mdf import train_mdf

            ctx.out.mkdir(parents=True, exist_ok=True)
            # train_mdf writes its file atomically at the end: a Ctrl-C mid-training leaves no cache
            train_mdf(ctx.mdf_image, mdf_task, iters=ctx.mdf_iters, out=cache, max_size=max_size, seed=ctx.seed,
                      device=ctx.device, progress=ctx.progress)
        _barrier(ctx)
    ctx.notes.append(f"MDF discriminators: a short training here ({mdf_task} on {ctx.mdf_image} up to {max_size} px, "
                     f"{ctx.mdf_iters} iterations per scale), not the published ones")
    ctx._mdf_path = cache
    return cache


def _load_mdf(ctx: TermContext, distance: str, count: Optional[int], max_size: int) -> nn.Module:
    from ...losses.mdf import MDFLoss

    # num_scales=1 loads any series length; the loss below picks its own count
    series = MDFLoss.from_file(resolve_mdf_weights(ctx, max_size), num_scales=1).discriminators
    discriminators = list(series)[: count or MDF_SCALES]
    return MDFLoss(len(discriminators), distance=distance, discriminators=discriminators).to(ctx.device)


def build_term(name: str, ctx: TermContext) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The callable ``(output, clean) -> scalar`` of one spec term (errors name the missing weights)."""
    if name in PIXEL_TERMS:
        return _pixel_term(name)
    if name == "pdl":
        from ...losses.pdl import PDLLoss

        if ctx.vgg_weights is not None and not Path(ctx.vgg_weights).expanduser().is_file():
            raise FileNotFoundError(
                f"--vgg-weights {ctx.vgg_weights!r}: no such file (torchvision's vgg16-397923af.pth, "
                "from https://download.pytorch.org/models/vgg16-397923af.pth)"
            )
        try:
            loss = PDLLoss("vgg16", weights=ctx.vgg_weights, check_range=False).to(ctx.device)
        except FileNotFoundError:
            from ...io.weights import hub_checkpoint_dir

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
        from ...losses.nima import NIMALoss
        from ...train.synthetic_ratings import PHOTOS, cached_synthetic_nima, load_nima_checkpoint

        if ctx.nima_weights is None:
            path, trained = cached_synthetic_nima(ctx.out, "loss", log=ctx.log, progress=ctx.progress,
                                                  device=str(ctx.device), announce=(
                "nima: no --nima-weights (AVA-trained NIMA weights are not bundled), so the nima term is a small "
                "NIMA trained here first on synthetic ratings (crops of the bundled photographs rated by known "
                "haze, tone, noise, blur and JPEG strengths; `pdl-ext train-nima --synthetic`)"))
            if not trained:
                ctx.log(f"nima: reusing the synthetic-ratings NIMA cached in {path}")
            ctx.notes.append(
                f"nima: a small NIMA (SmallIQANet backbone) trained here on synthetic ratings of crops of "
                f"{', '.join(PHOTOS['loss'])} (score 8.5 - 6 x the strength of a known haze/tone/noise/blur/JPEG "
                f"distortion; cached as {path.name}), not on AVA: pass --nima-weights PATH for a real NIMA")
        else:
            path = Path(ctx.nima_weights).expanduser()
            if not path.is_file():
                raise FileNotFoundError(f"--nima-weights {ctx.nima_weights!r}: no such file (a NIMA checkpoint: "
                                        "VGG16/VGG19 .pth or .safetensors, or one of `pdl-ext train-nima`)")
            ctx.log(f"nima: NIMA weights from {path}")
            ctx.notes.append(f"nima: NIMA's mean-score penalty, weights {path.name} (--nima-weights)")
        nima = load_nima_checkpoint(path).to(ctx.device)
        nima_loss = NIMALoss(nima, weight=1.0, pixel_loss=None)

        def nima_term(out: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
            # the critic judges what will be shown, without a NIMA_MARGIN px border: scored with its border, the
            # restorer learns to draw high-contrast stripes along the (zero-padded) top edge that the critic rewards
            m = NIMA_MARGIN if min(out.shape[-2:]) > 4 * NIMA_MARGIN else 0
            return nima_loss(out[..., m:out.shape[-2] - m, m:out.shape[-1] - m].clamp(0, 1))

        nima_term.quality_model = nima  # the runner reports this model's score too
        return nima_term
    raise ValueError(f"demo: no loss term {name!r}")


