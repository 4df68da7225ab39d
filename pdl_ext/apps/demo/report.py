"""The demo's evaluation and outputs: image metrics, picture grids, tables, metrics.json/.md."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from .training import INPUT_LABELS, TASK_PARAMS


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


