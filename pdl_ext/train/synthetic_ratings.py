"""An offline stand-in for AVA: rating histograms made from known degradation strengths, and a small NIMA.

No human ratings (AVA) and no published NIMA weights are reachable offline, so the demo's ``nima``
term and its independent judge use quality models trained here: random crops of the bundled
scikit-image photographs, each given one degradation (haze, tone compression, noise, blur or JPEG) of a
known strength ``s`` in [0, 1], and rated by a discretised Gaussian histogram around the mean score
``8.5 - 6 s`` (:data:`SCORE_BEST`, :data:`SCORE_SLOPE`). A small convolutional NIMA (:class:`SmallIQANet`
backbone) learns them with the EMD loss in a minute on a CPU.

What such a model stands for: a monotone function of how strong a *known* distortion is, learned from
content it has seen; not human aesthetic judgement (composition, colour harmony, subject), and not
distortions outside the five kinds. Any real NIMA checkpoint replaces it (``--nima-weights``).

Command line::

    pdl-ext train-nima --synthetic --out nima_synth.safetensors              # the loss model's recipe
    pdl-ext train-nima --synthetic --synthetic-role judge --seed 1 --out judge.safetensors
"""
from __future__ import annotations

import json
import math
import os
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .._checks import is_int, is_number
from ..losses.nima import NIMA
from ..io.weights import save_state_dict
from .degradations import add_gaussian_noise, add_haze, compress_tones, gaussian_blur, jpeg_compress

PathLike = Union[str, "os.PathLike[str]"]

SYNTHETIC_KINDS: Tuple[str, ...] = ("haze", "tone", "noise", "blur", "jpeg")
SCORE_BEST, SCORE_SLOPE, SCORE_STD = 8.5, 6.0, 1.2  # mean score 8.5 - 6 s, histogram std 1.2
# Two disjoint sets of bundled photographs: the loss model's and the judge's (the demo's test photographs,
# chelsea/cat and gravel, are in neither).
PHOTOS: Dict[str, Tuple[str, ...]] = {
    "loss": ("astronaut", "rocket", "brick", "grass", "camera", "text"),
    "judge": ("coffee", "immunohistochemistry", "coins", "clock", "moon", "retina"),
}
ROLE_SEED = {"loss": 0, "judge": 1}
RECIPE_VERSION = "1"  # bump when the recipe changes: the demo's cache names include it
# What the demo trains when it has no NIMA weights (about a minute per model on 2 CPU cores).
DEMO_RECIPE: Dict[str, int] = {"count": 1000, "val_count": 250, "epochs": 12}


def degrade_by_strength(img: torch.Tensor, kind: str, strength: float,
                        generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """One of the synthetic distortions at a strength ``s`` in [0, 1] (``s = 0`` leaves ``img`` as is).

    ``haze``: :func:`add_haze` with ``beta = 2.5 s`` (airlight and depth drawn from ``generator``);
    ``tone``: :func:`compress_tones` with ``exposure = -1.5 s``, ``compression = 4.5 s``, ``local = 0.75 s``
    (the demo's tonemap input is ``s = 2/3``); ``noise``: Gaussian, ``sigma = 40 s`` (/255); ``blur``:
    Gaussian, ``sigma = 3 s`` px; ``jpeg``: quality ``round(95 (5/95)^s)`` (95 down to 5, geometrically:
    artifacts become visible around quality 30, ``s = 0.4``).

    Args:
        img: ``(3, H, W)`` or ``(B, 3, H, W)`` in [0, 1].
        kind: one of :data:`SYNTHETIC_KINDS`.
        strength: ``s`` in [0, 1].
        generator: draws of haze and noise.

    Returns:
        The degraded image, the shape of ``img``.

    Example:
        >>> import torch
        >>> from pdl_ext.train.synthetic_ratings import degrade_by_strength
        >>> degrade_by_strength(torch.rand(3, 16, 16), "blur", 0.5).shape
        torch.Size([3, 16, 16])
    """
    fn = "degrade_by_strength"
    if kind not in SYNTHETIC_KINDS:
        raise ValueError(f"{fn}: kind must be one of {', '.join(map(repr, SYNTHETIC_KINDS))}, got {kind!r}")
    if not is_number(strength) or not 0 <= strength <= 1:
        raise ValueError(f"{fn}: strength must be a number in [0, 1], got {strength!r}")
    s = float(strength)
    if s == 0:
        return img.clone()
    if kind == "haze":
        return add_haze(img, beta=2.5 * s, generator=generator)
    if kind == "tone":
        return compress_tones(img, exposure=-1.5 * s, compression=4.5 * s, local=0.75 * s)
    if kind == "noise":
        return add_gaussian_noise(img, sigma=40.0 * s, generator=generator)
    if kind == "blur":
        return gaussian_blur(img, sigma=3.0 * s)
    return jpeg_compress(img, quality=int(round(95 * (5 / 95) ** s)))


def rating_histogram(strength: float, num_bins: int = 10, std: float = SCORE_STD) -> torch.Tensor:
    """The rating histogram of an image degraded at strength ``s``: a discretised Gaussian around
    ``8.5 - 6 s`` (:func:`~pdl_ext.train.nima.gaussian_histogram`); its mean falls as ``s`` grows.

    Example:
        >>> from pdl_ext.train.synthetic_ratings import rating_histogram
        >>> h = rating_histogram(0.5); round(float(h.sum()), 6), h.shape
        (1.0, torch.Size([10]))
    """
    from .nima import gaussian_histogram

    if not is_number(strength) or not 0 <= strength <= 1:
        raise ValueError(f"rating_histogram: strength must be a number in [0, 1], got {strength!r}")
    return gaussian_histogram(SCORE_BEST - SCORE_SLOPE * float(strength), std, num_bins)


def _photos(names: Sequence[str]) -> List[torch.Tensor]:
    from .images import load_image

    return [load_image(n) for n in names]


def make_synthetic_ratings(
    root: PathLike,
    photos: Sequence[str] = PHOTOS["loss"],
    count: int = 1200,
    seed: int = 0,
    size: int = 48,
    kinds: Sequence[str] = SYNTHETIC_KINDS,
    min_texture: float = 0.02,
) -> Path:
    """Writes ``count`` degraded crops as PNGs and their rating histograms as ``root/ratings.csv``.

    Each sample: a random photograph of ``photos``, a random ``size`` x ``size`` crop with some texture
    (mean absolute horizontal difference >= ``min_texture``: on flat sky a distortion is invisible and
    its rating meaningless), a random kind of ``kinds`` and a strength ``s ~ U(0, 1)``
    (:func:`degrade_by_strength`), rated by :func:`rating_histogram`. The CSV (``path,c1..c10``, also
    ``strength`` and ``kind`` in a side file ``labels.csv``) is what ``pdl-ext train-nima --ratings``
    reads.

    Args:
        root: output directory (created).
        photos: bundled photograph names or image files.
        count: number of samples (>= 1).
        seed: seeds every draw.
        size: crop side in px (>= 8).
        kinds: distortion kinds to draw from.
        min_texture: the texture threshold above.

    Returns:
        The path of ``ratings.csv``.

    Example:
        >>> # csv = make_synthetic_ratings("synth", count=200); train_nima(csv, resize=None, crop=56, ...)
    """
    fn = "make_synthetic_ratings"
    if not is_int(count) or count < 1:
        raise ValueError(f"{fn}: count must be an int >= 1, got {count!r}")
    if not is_int(size) or size < 8:
        raise ValueError(f"{fn}: size must be an int >= 8, got {size!r}")
    if isinstance(photos, str) or not photos:
        raise ValueError(f"{fn}: photos must be a non-empty list of photograph names or files, got {photos!r}")
    bad = [k for k in kinds if k not in SYNTHETIC_KINDS]
    if bad or not kinds:
        raise ValueError(f"{fn}: kinds must be a non-empty list from {', '.join(SYNTHETIC_KINDS)}, got {list(kinds)!r}")
    from PIL import Image

    images = _photos(photos)
    small = [n for n, im in zip(photos, images) if min(im.shape[-2:]) < size]
    if small:
        raise ValueError(f"{fn}: photographs {small} are smaller than size {size}")
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    g = torch.Generator().manual_seed(int(seed))
    lines = ["path," + ",".join(f"c{k}" for k in range(1, 11))]
    labels = ["path,photo,kind,strength"]
    tries = 0
    while len(lines) - 1 < count:
        tries += 1
        if tries > 50 * count:
            raise ValueError(f"{fn}: the photographs have too few textured {size}x{size} crops "
                             f"(min_texture {min_texture})")
        i = int(rng.integers(len(images)))
        x = images[i]
        top, left = int(rng.integers(0, x.shape[1] - size + 1)), int(rng.integers(0, x.shape[2] - size + 1))
        patch = x[:, top:top + size, left:left + size]
        if float((patch[:, :, 1:] - patch[:, :, :-1]).abs().mean()) < min_texture:
            continue
        kind, s = kinds[int(rng.integers(len(kinds)))], float(rng.uniform())
        y = degrade_by_strength(patch, kind, s, generator=g)
        name = f"img{len(lines) - 1:05d}.png"
        Image.fromarray((y.permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)).save(root / name)
        hist = rating_histogram(s)
        lines.append(name + "," + ",".join(f"{v:.6f}" for v in hist.tolist()))
        labels.append(f"{name},{photos[i]},{kind},{s:.6f}")
    (root / "ratings.csv").write_text("\n".join(lines) + "\n")
    (root / "labels.csv").write_text("\n".join(labels) + "\n")
    return root / "ratings.csv"


class SmallIQANet(nn.Module):
    """A small CNN backbone for a CPU-trained NIMA: ``(B, 3, H, W)`` in [0, 1] -> ``(B, 8 * width)``.

    Input: the image (centred) and its high-pass part (minus a 5x5 local mean, x5), six channels, so both
    global tone (haze, tone compression) and fine structure (noise, blur, JPEG) are visible. Four 3x3
    convolutions (reflected borders), each with batch normalisation and ReLU (strides 2, 2, 2, 1; ``width``, 2, 4 and 4
    ``width`` channels), then the mean and the standard deviation over positions of the last features,
    concatenated (contrast-like statistics come out directly). About 70 k parameters at ``width=16``.

    Example:
        >>> import torch
        >>> from pdl_ext.losses.nima import NIMA
        >>> from pdl_ext.train.synthetic_ratings import SmallIQANet
        >>> NIMA(SmallIQANet(8), dropout=0.0)(torch.rand(2, 3, 48, 48)).shape
        torch.Size([2, 10])
    """

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        if not is_int(width) or width < 1:
            raise ValueError(f"SmallIQANet: width must be an int >= 1, got {width!r}")
        self.width = int(width)
        w = self.width
        layers: List[nn.Module] = []
        for cin, cout, stride in ((6, w, 2), (w, 2 * w, 2), (2 * w, 4 * w, 2), (4 * w, 4 * w, 1)):
            # reflected borders: with zeros there, a restorer trained against this critic learns border stripes
            layers += [nn.Conv2d(cin, cout, 3, stride=stride, padding=1, padding_mode="reflect"), nn.BatchNorm2d(cout),
                       nn.ReLU()]
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        high = 5 * (x - F.avg_pool2d(x, 5, 1, 2, count_include_pad=False))
        f = self.net(torch.cat([x - 0.5, high], 1)).flatten(2)
        return torch.cat([f.mean(-1), f.std(-1, unbiased=False)], 1)


def synthetic_nima(width: int = 16, dropout: float = 0.2) -> NIMA:
    """A NIMA with a :class:`SmallIQANet` backbone (random weights), as trained on synthetic ratings."""
    return NIMA(SmallIQANet(width), dropout=dropout, num_features=8 * width)


def load_nima_checkpoint(path: PathLike) -> NIMA:
    """Any NIMA checkpoint pdl-ext reads: one of :func:`train_synthetic_nima` (a ``SmallIQANet`` backbone,
    recognised by its safetensors metadata), or a VGG16/VGG19 NIMA (``train_nima``'s safetensors, or a
    ``.pth`` state dict with the keys of :class:`~pdl_ext.losses.nima.NIMA`; VGG16 unless the metadata
    says ``vgg19``).

    Returns:
        The model in eval mode, on the CPU; a synthetic-ratings one has ``input_size``, the side of its
        training crops (the demo scores larger images as the mean over such tiles).
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"load_nima_checkpoint: {str(path)!r}: no such file; expected a NIMA checkpoint "
                                "(.safetensors or .pth)")
    meta: Dict[str, str] = {}
    if path.suffix.lower() == ".safetensors":
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                meta = dict(f.metadata() or {})
        except (SafetensorError, OSError) as e:
            raise ValueError(f"load_nima_checkpoint: {path} is not a readable safetensors file: {e}") from None
    backbone = meta.get("backbone", "vgg16")
    if backbone == "SmallIQANet":
        from ..io.weights import load_state_dict

        sd = load_state_dict(path)
        width = int(sd["backbone.net.0.weight"].shape[0]) if "backbone.net.0.weight" in sd else 16
        model = synthetic_nima(width)
        model.load_weights(path)
        model.input_size = int(meta.get("size", 48))  # the crop side it was trained on (scoring tiles)
    else:
        model = NIMA(backbone if backbone in ("vgg16", "vgg19") else "vgg16", weights=path)
    return model.eval()


def train_synthetic_nima(
    out: PathLike,
    role: str = "loss",
    photos: Optional[Sequence[str]] = None,
    count: int = 1200,
    val_count: int = 300,
    seed: Optional[int] = None,
    size: int = 48,
    crop: int = 48,
    width: int = 16,
    epochs: int = 16,
    batch_size: int = 32,
    lr: float = 3e-3,
    workdir: Optional[PathLike] = None,
    device: Optional[str] = None,
    progress: bool = False,
    log: Optional[Callable[[str], None]] = print,
    epoch_log: bool = True,
):
    """Makes synthetic ratings (:func:`make_synthetic_ratings`) and trains a small NIMA on them with the
    EMD loss (``train_nima``), with a held-out set of other crops and draws (seed + 1000).

    Args:
        out: the checkpoint (``.safetensors``; metadata: ``backbone=SmallIQANet``, the recipe, the
            held-out metrics), loadable by :func:`load_nima_checkpoint` and ``--nima-weights``.
        role: ``"loss"`` or ``"judge"``: picks the default photographs (:data:`PHOTOS`) and seed
            (:data:`ROLE_SEED`), so the demo's judge shares neither with its loss model.
        photos: photographs to crop (default: the role's).
        count, val_count: training and held-out samples.
        seed: seeds the data and the training (default: the role's).
        size, crop: sample side, and the training crop (random; centred for the held-out set). The
            default, no crop (48 = 48, flips only), keeps the JPEG blocks on the 8 px grid of the
            backbone's stride: with random offsets this small model does not learn JPEG.
        width: ``SmallIQANet`` width.
        epochs, batch_size, lr: Adam, one learning rate for all layers, divided by 10 for the last quarter
            of the epochs.
        workdir: where the PNGs go (default: a temporary directory, removed after).
        device: as ``train_nima``.
        progress, log: as ``train_nima``; ``epoch_log=False`` keeps only the first and last lines.

    Returns:
        ``train_nima``'s ``NIMATrainResult`` (held-out ``metrics``: emd, lcc, srcc, accuracy).
    """
    from .nima import train_nima

    fn = "train_synthetic_nima"
    if role not in PHOTOS:
        raise ValueError(f"{fn}: role must be 'loss' or 'judge', got {role!r}")
    photos = tuple(photos) if photos is not None else PHOTOS[role]
    seed = ROLE_SEED[role] if seed is None else seed
    if not is_int(seed):
        raise ValueError(f"{fn}: seed must be an int, got {seed!r}")
    if not is_int(crop) or not 8 <= crop <= size:
        raise ValueError(f"{fn}: crop must be an int in [8, size={size}], got {crop!r}")
    if not is_int(val_count) or val_count < 1:
        raise ValueError(f"{fn}: val_count must be an int >= 1, got {val_count!r}")
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="pdl_ext_synth_") as tmp:
        root = Path(workdir) if workdir is not None else Path(tmp)
        train_csv = make_synthetic_ratings(root / "train", photos, count, seed, size)
        val_csv = make_synthetic_ratings(root / "val", photos, val_count, seed + 1000, size)
        made = time.perf_counter() - start
        if log is not None:
            log(f"train-nima --synthetic: {count} + {val_count} held-out {size}px crops of {', '.join(photos)} "
                f"(haze, tone, noise, blur, JPEG; score 8.5 - 6 s) in {made:.1f} s; seed {seed}")
        torch.manual_seed(seed)
        model = synthetic_nima(width)
        # a step decay: the last quarter of the epochs at lr / 10 (a second train_nima call on the same model)
        late = epochs // 4 if epochs >= 4 else 0
        common = dict(val_ratings=val_csv, batch_size=batch_size, backbone_lr_factor=1.0, resize=None, crop=crop,
                      hflip=True, workers=0, device=device, out=None, progress=progress,
                      log=log if epoch_log else None)
        result = train_nima(train_csv, model=model, epochs=epochs - late, lr=lr, seed=seed, **common)
        if late:
            tail = train_nima(train_csv, model=result.model, epochs=late, lr=lr / 10, seed=seed + 1, **common)
            result.history += tail.history
            result.metrics = tail.metrics
    meta = {"format": "pdl_ext.NIMA", "backbone": "SmallIQANet", "num_bins": "10", "width": str(width), "size": str(crop),
            "recipe": f"synthetic-v{RECIPE_VERSION}", "role": role, "photos": ",".join(photos), "seed": str(seed),
            "count": str(count), "epochs": str(epochs), "metrics": json.dumps(result.metrics),
            "history": json.dumps(result.history), "seconds": f"{time.perf_counter() - start:.1f}"}
    save_state_dict(result.model.state_dict(), out, metadata=meta)
    if log is not None:
        m = result.metrics
        log(f"train-nima --synthetic: held-out SRCC {m.get('srcc', math.nan):.3f}, LCC {m.get('lcc', math.nan):.3f}, "
            f"EMD {m.get('emd', math.nan):.4f} ({m.get('n', 0)} crops); {time.perf_counter() - start:.0f} s; wrote {out}")
    return result


def cached_synthetic_nima(out_dir: PathLike, role: str = "loss", seed: Optional[int] = None,
                          log: Callable[[str], None] = print, progress: bool = False,
                          device: Optional[str] = None, announce: Optional[str] = None) -> Tuple[Path, bool]:
    """The checkpoint of :func:`train_synthetic_nima` (with :data:`DEMO_RECIPE`) for ``role`` cached in
    ``out_dir``, trained first when absent (by rank 0 under torch.distributed; the others wait), with ``announce`` logged before.
    Returns ``(path, trained_now)``."""
    role_seed = ROLE_SEED[role] if seed is None else seed
    recipe = DEMO_RECIPE
    path = Path(out_dir) / (f"nima_synthetic_{role}_seed{role_seed}_{recipe['count']}x{recipe['epochs']}"
                            f"_v{RECIPE_VERSION}.safetensors")
    import torch.distributed as dist

    distributed = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
    trained = False
    if not path.is_file():
        trained = True
        if not distributed or dist.get_rank() == 0:
            if announce:
                log(f"{announce}; cached as {path}")
            tmp = path.with_name(path.stem + ".tmp.safetensors")
            train_synthetic_nima(tmp, role=role, seed=role_seed, device=device, progress=progress, log=log,
                                 epoch_log=False, **recipe)
            os.replace(tmp, path)
    if distributed:
        dist.barrier()
    return path, trained
