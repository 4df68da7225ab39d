"""The demo's evaluation and outputs: image metrics, picture grids, tables, metrics.json/.md."""
from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from .training import ENHANCEMENT_TASKS, INPUT_LABELS, TASK_PARAMS

if TYPE_CHECKING:
    from torch import nn

    from .terms import TermContext


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
    from ...ops import wasserstein_1d

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


def _luma(img: torch.Tensor) -> torch.Tensor:
    return 0.299 * img[0] + 0.587 * img[1] + 0.114 * img[2]


def rms_contrast(img: torch.Tensor) -> float:
    """RMS contrast of ``(3, H, W)`` in [0, 1]: the standard deviation of the luma (Rec. 601 weights)."""
    return float(_luma(img.double()).std(unbiased=False))


def saturation(img: torch.Tensor) -> float:
    """Mean HSV saturation of ``(3, H, W)`` in [0, 1]: ``(max - min) / max`` over RGB per pixel (0 for black)."""
    x = img.double()
    hi, lo = x.amax(0), x.amin(0)
    return float(torch.where(hi > 0, (hi - lo) / hi.clamp_min(1e-12), torch.zeros_like(hi)).mean())


def dark_channel(img: torch.Tensor, patch: int = 15) -> float:
    """Mean dark channel of ``(3, H, W)`` in [0, 1] (He, Sun & Tang, CVPR 2009): the minimum over RGB and a
    ``patch`` x ``patch`` window (edges replicated), averaged over the image. Near 0 for haze-free outdoor
    photographs; haze (airlight added) raises it."""
    m = img.double().amin(0)[None, None]
    r = patch // 2
    m = F.pad(m, (r, r, r, r), mode="replicate")
    return float(-F.max_pool2d(-m, patch, stride=1).mean())


# task -> the statistics that fit it (reported for inputs, outputs and references)
TASK_STATISTICS: Dict[str, Tuple[str, ...]] = {"dehaze": ("dark_channel",), "tonemap": ("rms_contrast", "saturation")}
_STATISTICS: Dict[str, Callable[[torch.Tensor], float]] = {"dark_channel": dark_channel, "rms_contrast": rms_contrast,
                                                             "saturation": saturation}


@torch.no_grad()
def quality_score(model: "nn.Module", img: torch.Tensor) -> float:
    """NIMA's mean score (1..10) of ``(3, H, W)``: the mean over non-overlapping tiles of the model's training
    size (``model.input_size``, set by ``load_nima_checkpoint`` for synthetic-ratings models), else of the
    whole image."""
    from ...losses.nima import mean_score

    param = next(model.parameters())
    x = img.detach().to(param.device, param.dtype).clamp(0, 1)[None]
    tile = getattr(model, "input_size", None)
    if tile and min(x.shape[-2:]) >= tile:
        h, w = (x.shape[-2] // tile) * tile, (x.shape[-1] // tile) * tile
        x = x[..., :h, :w].unfold(2, tile, tile).unfold(3, tile, tile)  # (1, 3, nh, nw, tile, tile)
        x = x.permute(0, 2, 3, 1, 4, 5).reshape(-1, 3, tile, tile)
    return float(mean_score(model.eval()(x).double()).mean())


def enhancement_metrics(img: torch.Tensor, task: str, models: Dict[str, "nn.Module"]) -> Dict[str, float]:
    """The quality scores of ``models`` (key -> NIMA) and the task's statistics (``TASK_STATISTICS``)."""
    m = {key: quality_score(model, img) for key, model in models.items()}
    m.update({k: _STATISTICS[k](img.detach().cpu()) for k in TASK_STATISTICS.get(task, ())})
    return m


def quality_models(ctx: "TermContext", term_fns: Dict[str, Callable], judge_weights: Optional[str]) -> Dict[str, "nn.Module"]:
    """The NIMAs that score the outputs: ``judge_score``, an independent judge (``--judge-weights``, else a
    second synthetic-ratings NIMA trained on other photographs with another seed, cached in ``--out``), for
    the enhancement tasks, any run with a nima term, or a given judge; ``loss_nima_score``, the nima term's
    own model, when it is trained with."""
    from ...train.synthetic_ratings import PHOTOS, ROLE_SEED, cached_synthetic_nima, load_nima_checkpoint

    models: Dict[str, "nn.Module"] = {}
    if ctx.task in ENHANCEMENT_TASKS or "nima" in term_fns or judge_weights is not None:
        if judge_weights is not None:
            path = Path(judge_weights).expanduser()
            if not path.is_file():
                raise FileNotFoundError(f"--judge-weights {judge_weights!r}: no such file (a NIMA checkpoint)")
            ctx.notes.append(f"judge: NIMA {path.name} (--judge-weights) scores the outputs; it trains nothing")
        else:
            path, trained = cached_synthetic_nima(ctx.out, "judge", log=ctx.log, progress=ctx.progress,
                                                  device=str(ctx.device), announce=(
                "judge: training a second synthetic-ratings NIMA on other photographs "
                f"({', '.join(PHOTOS['judge'])}) with another seed, to score the outputs independently of the loss"))
            if not trained:
                ctx.log(f"judge: reusing the synthetic-ratings judge cached in {path}")
            ctx.notes.append(
                f"judge: the 'judge NIMA' column is a second synthetic-ratings NIMA trained on other photographs "
                f"({', '.join(PHOTOS['judge'])}; seed {ROLE_SEED['judge']}) than the loss's; it trains nothing "
                f"(--judge-weights PATH for another NIMA)")
        models["judge_score"] = load_nima_checkpoint(path).to(ctx.device)
    nima = getattr(term_fns.get("nima"), "quality_model", None)
    if nima is not None:
        models["loss_nima_score"] = nima
    return models


def grid_caption(m: Dict[str, float]) -> str:
    """The two lines under a grid column: PSNR, and the judge's score when there is one, else texture W1."""
    second = f"judge NIMA {m['judge_score']:.2f}" if "judge_score" in m else f"texture W1 {m['texture_w1']:.2f}"
    return f"PSNR {m['psnr']:.2f} dB\n{second}"


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


# Shown when measured: the quality scores and the task statistics (enhancement tasks, nima runs).
EXTRA_COLUMNS = (("judge_score", "judge NIMA ↑", "{:.2f}"), ("dark_channel", "dark channel", "{:.3f}"),
                 ("rms_contrast", "RMS contrast", "{:.3f}"), ("saturation", "saturation", "{:.3f}"),
                 ("loss_nima_score", "loss NIMA", "{:.2f}"))


def metric_columns(results: Dict[str, Any]) -> Tuple[Tuple[str, str, str], ...]:
    """``METRIC_COLUMNS`` and the ``EXTRA_COLUMNS`` this run measured."""
    measured = results["input"]["mean"]
    return METRIC_COLUMNS + tuple(c for c in EXTRA_COLUMNS if c[0] in measured)


def metrics_rows(results: Dict[str, Any]) -> Tuple[List[str], List[List[str]]]:
    """The summary table: header and rows (input baseline, then each finished loss, then the reference when
    quality scores or task statistics were measured), means over images."""
    columns = metric_columns(results)
    header = ["loss"] + [c[1] for c in columns] + ["ms/step"]
    rows = []
    entries = [(INPUT_LABELS[results["config"]["task"]], results["input"], None)]
    entries += [(name, r, r["ms_per_step"]) for name, r in results["losses"].items()]
    if "reference" in results:
        entries.append(("reference", results["reference"], None))
    for label, r, ms in entries:
        mean = r["mean"]
        rows.append([label] + [fmt.format(mean[k]) if k in mean else "–" for k, _, fmt in columns]
                    + ["–" if ms is None else f"{ms:.0f}"])
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
    haze, tone = TASK_PARAMS["dehaze"], TASK_PARAMS["tonemap"]
    task = {"denoise": f"denoising (Gaussian noise, sigma {TASK_PARAMS['denoise']['sigma']:g}/255)",
            "sr": "x4 super-resolution (bicubic)", "jpeg": "JPEG artifact removal (quality 10)",
            "deblur": "deblurring (Gaussian blur, sigma 2 px)", "demosaic": "demosaicing (RGGB Bayer)",
            "dehaze": (f"dehazing (scattering model, beta {haze['beta'][0]:g}-{haze['beta'][1]:g}, airlight "
                       f"{haze['airlight'][0]:g}-{haze['airlight'][1]:g}, a vertical depth ramp with smooth noise)"),
            "tonemap": (f"tone restoration (exposure {tone['exposure']:g} stops, highlight compression "
                        f"{tone['compression']:g}, local contrast x{1 - tone['local']:g})")}[c["task"]]
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
    if len(metric_columns(results)) > len(METRIC_COLUMNS):
        lines += ["judge NIMA: mean score (1-10) of a NIMA that trains nothing here, over 48 px tiles for a "
                  "synthetic-ratings one. loss NIMA: the score of the nima term's own model. dark channel: mean of "
                  "the min over RGB and 15x15 windows (haze raises it). RMS contrast: std of the luma. saturation: "
                  "mean HSV saturation. The reference row holds the clean image's values.", ""]
    if results["notes"]:
        lines += ["Notes:", ""] + [f"- {n}" for n in results["notes"]] + [""]
    if results.get("interrupted"):
        lines += [f"Interrupted: {len(results['losses'])} of {len(results['config_losses'])} losses finished.", ""]
    columns = metric_columns(results)
    per = ["| image | loss | " + " | ".join(c[1] for c in columns) + " |",
           "|---|---|" + "---:|" * len(columns)]
    extra = [("reference", results["reference"])] if "reference" in results else []
    for image in results["config"]["test_images"]:
        for name, r in [("input", results["input"])] + list(results["losses"].items()) + extra:
            m = r["images"][image]
            per.append(f"| {image} | {name} | " + " | ".join(fmt.format(m[k]) if k in m else "–"
                                                                for k, _, fmt in columns) + " |")
    lines += ["## Per image", ""] + per + [""]
    (out / "metrics.md").write_text("\n".join(lines))


# ----------------------------------------------------------------------------------------------------
# The run


