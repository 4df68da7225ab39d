"""Training NIMA on rating histograms: the AVA format or a simple CSV, on one CPU or many GPUs/nodes.

Paper recipe (Talebi & Milanfar, "NIMA: Neural Image Assessment", IEEE TIP 2018): images resized to
256x256, random 224x224 crops and horizontal flips; EMD loss (r=2); the backbone trained with a
learning rate 10x lower than the new head; evaluation on a held-out split by the EMD, the linear (LCC)
and rank (SRCC) correlations of the mean score, and the binary accuracy at score 5.

Command line (``pdl-ext train-nima``)::

    pdl-ext train-nima --ratings AVA.txt --images AVA/images --backbone vgg16 --epochs 10 --out nima.safetensors
    torchrun --nproc_per_node=4 -m pdl_ext train-nima --ratings AVA.txt --images AVA/images --out nima.safetensors
    pdl-ext train-nima --synthetic --out nima_synth.safetensors    # offline: see pdl_ext.train.synthetic_ratings

Under ``torchrun`` each process trains on its shard (``DistributedSampler``) with DDP (NCCL on GPUs,
gloo on CPUs); ``--batch-size`` is the global batch, split across processes, so one process and N
processes take the same optimisation steps.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset

from .distributed import join_process_group, launched_world_size, leave_process_group, local_rank
from ..losses.nima import NIMA, emd_loss, mean_score
from ..io.weights import save_state_dict

PathLike = Union[str, "os.PathLike[str]"]
RatingItem = Tuple[Path, torch.Tensor]  # (image file, (num_bins,) histogram or vote counts)


# ---------------------------------------------------------------- rating files


def gaussian_histogram(mean: float, std: float, num_bins: int = 10) -> torch.Tensor:
    r"""A rating histogram from a mean score and a standard deviation: a discretised Gaussian.

    Bin k (score k = 1..K) receives the mass of :math:`\mathcal N(\mu, \sigma^2)` on
    :math:`[k - \tfrac12, k + \tfrac12)`, the first and last bins also the tails
    (:math:`(-\infty, 1.5)` and :math:`[K - 0.5, \infty)`), so the K masses sum to one. ``std=0`` puts
    all the mass in the bin of the rounded mean. Near the ends the histogram's mean is pulled inwards
    from :math:`\mu` by the folded tails.

    Args:
        mean: :math:`\mu`, on the 1..K scale.
        std: :math:`\sigma >= 0`.
        num_bins: K.

    Returns:
        ``(K,)`` float32 probabilities.

    Example:
        >>> gaussian_histogram(5.0, 0.0).argmax().item() + 1
        5
    """
    if not math.isfinite(mean) or not math.isfinite(std) or std < 0:
        raise ValueError(f"gaussian_histogram: mean must be finite and std >= 0, got mean={mean}, std={std}")
    edges = torch.arange(1, num_bins, dtype=torch.float64) + 0.5  # 1.5, 2.5, ..., K - 0.5
    if std == 0:
        cdf = (edges > mean).to(torch.float64)
    else:
        cdf = 0.5 * (1 + torch.erf((edges - mean) / (std * math.sqrt(2.0))))
    cdf = torch.cat([torch.zeros(1, dtype=torch.float64), cdf, torch.ones(1, dtype=torch.float64)])
    return cdf.diff().clamp_min(0).to(torch.float32)


def read_ava(path: PathLike, images_dir: PathLike, num_bins: int = 10, skip_missing: bool = True) -> List[RatingItem]:
    """Reads AVA.txt: per line ``index image_id c1 .. c10 tag1 tag2 challenge_id``, images ``DIR/<id>.jpg``.

    Args:
        path: the AVA ratings file (whitespace separated).
        images_dir: the directory of the images.
        num_bins: number of vote counts per line (10 for AVA).
        skip_missing: drop lines whose image file is absent (AVA has a few) instead of failing.

    Returns:
        ``[(image path, (num_bins,) vote counts float32), ...]``; lines with no votes are dropped.
    """
    path, images_dir = Path(path), Path(images_dir)
    items: List[RatingItem] = []
    expected = 2 + num_bins + 3
    with open(path, "r", encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) != expected:
                raise ValueError(f"read_ava: {path}:{lineno}: expected {expected} fields (index, image id, "
                                 f"{num_bins} vote counts, 2 tags, challenge), got {len(fields)}")
            try:
                counts = [float(v) for v in fields[2:2 + num_bins]]
            except ValueError:
                raise ValueError(f"read_ava: {path}:{lineno}: vote counts must be numbers, "
                                 f"got {fields[2:2 + num_bins]}") from None
            if any(c < 0 for c in counts):
                raise ValueError(f"read_ava: {path}:{lineno}: vote counts must be >= 0, got {counts}")
            if sum(counts) == 0:
                continue
            image = images_dir / f"{fields[1]}.jpg"
            if not image.is_file():
                if skip_missing:
                    continue
                raise FileNotFoundError(f"read_ava: {path}:{lineno}: image {image} not found")
            items.append((image, torch.tensor(counts, dtype=torch.float32)))
    return items


def read_csv_ratings(path: PathLike, images_dir: Optional[PathLike] = None, num_bins: int = 10) -> List[RatingItem]:
    """Reads a CSV of ``path,c1,..,cK`` (vote counts or probabilities) or ``path,mean,std`` rows.

    ``mean,std`` rows become :func:`gaussian_histogram` histograms. A first row whose numbers do not
    parse is taken as a header. Relative image paths are resolved against ``images_dir`` (default: the
    CSV's directory).

    Returns:
        ``[(image path, (num_bins,) histogram float32), ...]``.
    """
    path = Path(path)
    root = Path(images_dir) if images_dir is not None else path.parent
    items: List[RatingItem] = []
    with open(path, "r", encoding="utf-8", newline="") as f:
        for lineno, row in enumerate(csv.reader(f), 1):
            row = [c.strip() for c in row]
            if not row or not any(row):
                continue
            try:
                values = [float(v) for v in row[1:]]
            except ValueError:
                if lineno == 1:
                    continue  # header
                raise ValueError(f"read_csv_ratings: {path}:{lineno}: expected numbers after the path, got {row[1:]}") from None
            if len(values) == num_bins:
                if any(v < 0 for v in values) or sum(values) <= 0:
                    raise ValueError(f"read_csv_ratings: {path}:{lineno}: counts must be >= 0 with a positive sum, got {values}")
                hist = torch.tensor(values, dtype=torch.float32)
            elif len(values) == 2:
                hist = gaussian_histogram(values[0], values[1], num_bins)
            else:
                raise ValueError(f"read_csv_ratings: {path}:{lineno}: expected path,c1..c{num_bins} or path,mean,std "
                                 f"({num_bins + 1} or 3 columns), got {len(row)} columns")
            image = Path(row[0])
            items.append((image if image.is_absolute() else root / image, hist))
    return items


def read_ratings(path: PathLike, images_dir: Optional[PathLike] = None, num_bins: int = 10,
                 fmt: str = "auto") -> List[RatingItem]:
    """Reads AVA (``fmt="ava"``) or CSV (``"csv"``) ratings; ``"auto"``: CSV if the file has commas."""
    if fmt == "auto":
        with open(path, "r", encoding="utf-8") as f:
            first = next((line for line in f if line.strip()), "")
        fmt = "csv" if "," in first else "ava"
    if fmt == "ava":
        if images_dir is None:
            raise ValueError("read_ratings: the AVA format needs images_dir (the directory of <id>.jpg)")
        return read_ava(path, images_dir, num_bins)
    if fmt == "csv":
        return read_csv_ratings(path, images_dir, num_bins)
    raise ValueError(f"read_ratings: fmt must be 'auto', 'ava' or 'csv', got {fmt!r}")


# ---------------------------------------------------------------- data


class RatingDataset(Dataset):
    """Images and their rating histograms, with NIMA's augmentation.

    Training: resize to ``resize`` x ``resize``, random ``crop`` x ``crop`` crop, random horizontal
    flip; evaluation: the same resize and a centre crop. The random draws depend only on
    (``seed``, ``epoch``, index), so any number of processes or workers sees the same images.

    Args:
        items: ``[(image path, histogram), ...]``.
        resize: side of the square resize (None: keep the size).
        crop: side of the crop (None: no crop).
        train: random crop and flip (else centre crop, no flip).
        hflip: allow the horizontal flip when training.
        seed: seed of the augmentation.

    Returns (per item):
        ``(image (3, crop, crop) float32 in [0, 1], histogram (num_bins,))``.
    """

    def __init__(self, items: Sequence[RatingItem], resize: Optional[int] = 256, crop: Optional[int] = 224,
                 train: bool = True, hflip: bool = True, seed: int = 0) -> None:
        if resize is not None and crop is not None and crop > resize:
            raise ValueError(f"RatingDataset: crop ({crop}) must not exceed resize ({resize})")
        self.items = list(items)
        self.resize, self.crop, self.train, self.hflip, self.seed = resize, crop, train, hflip, seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.items)

    def load(self, path: Path) -> torch.Tensor:
        from PIL import Image

        try:
            with Image.open(path) as img:
                img = img.convert("RGB")
                if self.resize is not None:
                    img = img.resize((self.resize, self.resize), Image.BILINEAR)
                array = np.asarray(img, dtype=np.uint8)
        except (OSError, SyntaxError) as e:
            raise ValueError(f"RatingDataset: cannot read image {path}: {e}") from None
        return torch.from_numpy(array.copy()).permute(2, 0, 1)

    def __getitem__(self, index: int) -> Tuple[torch.Tensor, torch.Tensor]:
        path, hist = self.items[index]
        x = self.load(path)
        h, w = x.shape[1:]
        if self.crop is not None:
            if self.crop > min(h, w):
                raise ValueError(f"RatingDataset: image {path} ({h}x{w}) is smaller than the crop {self.crop}")
            if self.train:
                rng = np.random.default_rng([self.seed, self.epoch, index])
                top, left = int(rng.integers(0, h - self.crop + 1)), int(rng.integers(0, w - self.crop + 1))
                flip = self.hflip and bool(rng.integers(0, 2))
            else:
                top, left, flip = (h - self.crop) // 2, (w - self.crop) // 2, False
            x = x[:, top:top + self.crop, left:left + self.crop]
        elif self.train and self.hflip:
            flip = bool(np.random.default_rng([self.seed, self.epoch, index]).integers(0, 2))
        else:
            flip = False
        if flip:
            x = x.flip(-1)
        return x.float().div_(255.0), hist


# ---------------------------------------------------------------- metrics


def lcc(x: Sequence[float], y: Sequence[float]) -> float:
    """Pearson's linear correlation coefficient (nan when either input is constant)."""
    a, b = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    a, b = a - a.mean(), b - b.mean()
    denom = math.sqrt(float((a * a).sum() * (b * b).sum()))
    return float((a * b).sum() / denom) if denom > 0 else float("nan")


def _average_ranks(x: np.ndarray) -> np.ndarray:
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x), dtype=np.float64)
    ranks[order] = np.arange(1, len(x) + 1)
    _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    return (np.bincount(inverse, weights=ranks) / counts)[inverse]  # ties share their mean rank


def srcc(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's rank correlation coefficient (ties get their average rank, as scipy does)."""
    return lcc(_average_ranks(np.asarray(x, dtype=np.float64)), _average_ranks(np.asarray(y, dtype=np.float64)))


def rating_metrics(pred: torch.Tensor, target: torch.Tensor, threshold: float = 5.0) -> Dict[str, float]:
    """EMD (r=2), LCC and SRCC of the mean scores, and binary accuracy at ``threshold``.

    Args:
        pred: ``(N, K)`` predicted probabilities.
        target: ``(N, K)`` target histograms or vote counts.
        threshold: an image is "high quality" when its mean score is > threshold.
    """
    pm = mean_score(pred.double()).numpy()
    tm = mean_score(target.double()).numpy()
    return {
        "emd": float(emd_loss(pred.double(), target.double(), r=2)),
        "lcc": lcc(pm, tm),
        "srcc": srcc(pm, tm),
        "accuracy": float(((pm > threshold) == (tm > threshold)).mean()),
        "n": int(len(pm)),
    }


# ---------------------------------------------------------------- training


@dataclass
class NIMATrainResult:
    """What :func:`train_nima` returns: the trained model (unwrapped, on its device), the per-epoch
    history (train loss, held-out metrics, seconds) and the final held-out metrics."""

    model: NIMA
    history: List[Dict[str, float]] = field(default_factory=list)
    metrics: Dict[str, float] = field(default_factory=dict)


def _distributed_setup(device: Optional[str]) -> Tuple[int, int, torch.device, bool]:
    """(rank, world size, device, whether we created the process group)."""
    if device is not None:
        dev = torch.device(device)
    elif torch.cuda.is_available():
        dev = torch.device("cuda", local_rank() if launched_world_size() > 1 else torch.cuda.current_device())
    else:
        dev = torch.device("cpu")
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    rank, world, owned = join_process_group(dev)
    return rank, world, dev, owned


def _split(items: List[RatingItem], val_fraction: float, seed: int) -> Tuple[List[RatingItem], List[RatingItem]]:
    if not 0 <= val_fraction < 1:
        raise ValueError(f"train_nima: val_fraction must be in [0, 1), got {val_fraction}")
    perm = torch.randperm(len(items), generator=torch.Generator().manual_seed(seed)).tolist()
    n_val = int(round(len(items) * val_fraction))
    if val_fraction > 0 and len(items) > 1:
        n_val = min(max(n_val, 1), len(items) - 1)
    return [items[i] for i in perm[n_val:]], [items[i] for i in perm[:n_val]]


@torch.no_grad()
def evaluate_nima(model: nn.Module, dataset: Dataset, batch_size: int = 32, device: Union[str, torch.device] = "cpu",
                  threshold: float = 5.0, workers: int = 0) -> Dict[str, float]:
    """Held-out metrics (:func:`rating_metrics`) of a NIMA on a dataset; under torch.distributed each
    process scores its share and the predictions are gathered, so every process returns the same."""
    distributed = dist.is_available() and dist.is_initialized()
    rank, world = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)
    shard = Subset(dataset, list(range(rank, len(dataset), world)))
    was_training = model.training
    model.eval()
    preds, targets = [], []
    for x, h in DataLoader(shard, batch_size=batch_size, shuffle=False, num_workers=workers):
        preds.append(model(x.to(device)).double().cpu())
        targets.append(h.double())
    model.train(was_training)
    pred = torch.cat(preds) if preds else torch.empty(0, 0, dtype=torch.float64)
    target = torch.cat(targets) if targets else torch.empty(0, 0, dtype=torch.float64)
    if distributed:
        gathered: List[object] = [None] * world
        dist.all_gather_object(gathered, (pred, target))
        pred = torch.cat([p for p, _ in gathered if p.numel()])
        target = torch.cat([t for _, t in gathered if t.numel()])
    return rating_metrics(pred, target, threshold)


def _training_items(ratings: Union[PathLike, Sequence[RatingItem]], images: Optional[PathLike],
                    val_ratings: Union[PathLike, Sequence[RatingItem], None], val_fraction: float, num_bins: int,
                    fmt: str, seed: int) -> Tuple[List[RatingItem], List[RatingItem]]:
    """(training, held-out) rating items: from files or lists; without ``val_ratings`` a seeded split."""
    items = list(ratings) if not isinstance(ratings, (str, os.PathLike)) else read_ratings(ratings, images, num_bins, fmt)
    if val_ratings is None:
        train_items, val_items = _split(items, val_fraction, seed)
    else:
        train_items = items
        val_items = (list(val_ratings) if not isinstance(val_ratings, (str, os.PathLike))
                     else read_ratings(val_ratings, images, num_bins, fmt))
    if not train_items:
        raise ValueError(f"train_nima: no training images (read {len(items)} ratings from {ratings})")
    return train_items, val_items


def _optimizer(module: nn.Module, optimizer: str, lr: float, backbone_lr_factor: float, momentum: float,
               weight_decay: float) -> torch.optim.Optimizer:
    """Adam or SGD with two parameter groups: the head at ``lr``, the backbone (a module's ``backbone``
    attribute, if any) at ``lr * backbone_lr_factor``; each group keeps its ``base_lr``."""
    backbone_module = getattr(module, "backbone", None)
    backbone_params = ([p for p in backbone_module.parameters() if p.requires_grad]
                       if isinstance(backbone_module, nn.Module) else [])
    ids = {id(p) for p in backbone_params}
    head_params = [p for p in module.parameters() if p.requires_grad and id(p) not in ids]
    groups = [{"params": head_params, "lr": lr, "base_lr": lr}]
    if backbone_params:
        groups.append({"params": backbone_params, "lr": lr * backbone_lr_factor, "base_lr": lr * backbone_lr_factor})
    if optimizer == "adam":
        return torch.optim.Adam(groups, lr=lr, weight_decay=weight_decay)
    return torch.optim.SGD(groups, lr=lr, momentum=momentum, weight_decay=weight_decay)


def _train_epoch(model: nn.Module, loader: DataLoader, opt: torch.optim.Optimizer, dev: torch.device, desc: str,
                 progress: bool) -> torch.Tensor:
    """One pass of EMD-loss steps; returns (sum of per-image losses, images) in float64 (this process)."""
    from tqdm.auto import tqdm

    model.train()
    total = torch.zeros(2, dtype=torch.float64)
    bar = tqdm(loader, desc=desc, disable=not progress, leave=False)
    for x, hist in bar:
        x, hist = x.to(dev, non_blocking=True), hist.to(dev, non_blocking=True)
        loss = emd_loss(model(x), hist)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        total += torch.tensor([loss.item() * len(x), len(x)], dtype=torch.float64)
        bar.set_postfix(emd=f"{loss.item():.4f}")
    return total


def _save_checkpoint(module: nn.Module, out: PathLike, num_bins: int, epoch: int, history: List[Dict[str, float]]) -> None:
    """The epoch's checkpoint, with what loading it needs and the history in its metadata."""
    meta = {"format": "pdl_ext.NIMA", "backbone": str(module.backbone_name) if hasattr(module, "backbone_name")
            else type(module).__name__, "num_bins": str(getattr(module, "num_bins", num_bins)),
            "epoch": str(epoch + 1), "history": json.dumps(history)}
    save_state_dict(module.state_dict(), out, metadata=meta)


def train_nima(
    ratings: Union[PathLike, Sequence[RatingItem]],
    images: Optional[PathLike] = None,
    *,
    model: Optional[nn.Module] = None,
    backbone: Union[str, nn.Module] = "vgg16",
    num_bins: int = 10,
    dropout: float = 0.75,
    weights: Optional[PathLike] = None,
    backbone_weights: Optional[PathLike] = None,
    pretrained_backbone: bool = True,
    download: bool = False,
    fmt: str = "auto",
    val_ratings: Union[PathLike, Sequence[RatingItem], None] = None,
    val_fraction: float = 0.1,
    epochs: int = 10,
    batch_size: int = 32,
    lr: float = 1e-4,
    backbone_lr_factor: float = 0.1,
    head_only_epochs: int = 0,
    optimizer: str = "adam",
    momentum: float = 0.9,
    weight_decay: float = 0.0,
    resize: Optional[int] = 256,
    crop: Optional[int] = 224,
    hflip: bool = True,
    seed: int = 0,
    workers: int = 0,
    device: Optional[str] = None,
    out: Optional[PathLike] = None,
    threshold: float = 5.0,
    progress: bool = True,
    log: Optional[Callable[[str], None]] = print,
) -> NIMATrainResult:
    """Trains NIMA with the EMD loss and reports held-out EMD, LCC, SRCC and binary accuracy.

    Runs on one device, or with DDP when launched by ``torchrun`` (or inside an initialised
    ``torch.distributed`` process group): each process takes ``batch_size / world_size`` images of
    every global batch (``DistributedSampler``), so the steps match a single process's.

    Args:
        ratings: an AVA or CSV ratings file (see :func:`read_ratings`) or a list of
            ``(image path, histogram)``.
        images: the image directory (AVA: ``<id>.jpg`` files; CSV: base of relative paths).
        model: a NIMA (or a module mapping images to probabilities; its ``backbone`` attribute, if any,
            gets the lower learning rate) to train; else one is built
            from ``backbone``, ``num_bins``, ``dropout``, ``weights``, ``backbone_weights``,
            ``pretrained_backbone``, ``download`` (see :class:`~pdl_ext.losses.nima.NIMA`).
        fmt: ``"auto"``, ``"ava"`` or ``"csv"``.
        val_ratings: held-out ratings (file or list); else ``val_fraction`` of ``ratings`` (seeded split).
        epochs: passes over the training set.
        batch_size: global batch size (a multiple of the number of processes).
        lr: learning rate of the head; the backbone's is ``lr * backbone_lr_factor`` (0.1: the NIMA paper's ratio of 3e-7 to 3e-6, Sec. III).
        head_only_epochs: first epochs with the backbone's learning rate at 0 (head-first fine-tuning).
        optimizer: ``"adam"`` or ``"sgd"`` (with ``momentum``; the NIMA paper's, Sec. III, with lr 3e-6).
        weight_decay: the optimizer's weight decay.
        resize, crop, hflip: augmentation (the NIMA paper's, Sec. III: 256, 224, True); small values for tiny images.
        seed: seeds the model's init, the split, the shuffling and the augmentation.
        workers: DataLoader worker processes.
        device: ``"cpu"``, ``"cuda"``, ...; default: this process's GPU if any, else the CPU.
        out: a `.safetensors` checkpoint written (by rank 0) after every epoch, with the epoch and the
            metrics in its metadata; load it with ``NIMA(backbone, weights=out)``.
        threshold: score splitting "low" and "high" quality for the binary accuracy.
        progress: tqdm progress bars (rank 0 only).
        log: called with one line per epoch (rank 0 only); None for silence.

    Returns:
        :class:`NIMATrainResult`.

    Example:
        >>> # result = train_nima("AVA.txt", "AVA/images", backbone="vgg16", epochs=10, out="nima.safetensors")
        >>> # result.metrics["srcc"]
    """
    if optimizer not in ("adam", "sgd"):
        raise ValueError(f"train_nima: optimizer must be 'adam' or 'sgd', got {optimizer!r}")
    if epochs < 0 or batch_size < 1:
        raise ValueError(f"train_nima: epochs must be >= 0 and batch_size >= 1, got {epochs} and {batch_size}")
    rank, world, dev, owned = _distributed_setup(device)
    try:
        if batch_size % world:
            raise ValueError(f"train_nima: batch_size ({batch_size}) must be a multiple of the number of "
                             f"processes ({world})")
        train_items, val_items = _training_items(ratings, images, val_ratings, val_fraction, num_bins, fmt, seed)
        torch.manual_seed(seed)  # identical initial weights on every process
        if model is None:
            model = NIMA(backbone, num_bins=num_bins, dropout=dropout, weights=weights,
                         pretrained_backbone=pretrained_backbone, backbone_weights=backbone_weights, download=download)
        model = model.to(dev)
        module = model
        if world > 1:
            model = nn.parallel.DistributedDataParallel(model, device_ids=[dev.index] if dev.type == "cuda" else None)
        opt = _optimizer(module, optimizer, lr, backbone_lr_factor, momentum, weight_decay)

        train_set = RatingDataset(train_items, resize, crop, train=True, hflip=hflip, seed=seed)
        val_set = RatingDataset(val_items, resize, crop, train=False)
        sampler = DistributedSampler(train_set, num_replicas=world, rank=rank, shuffle=True, seed=seed)
        loader = DataLoader(train_set, batch_size=batch_size // world, sampler=sampler, num_workers=workers,
                            pin_memory=dev.type == "cuda")
        say = log if (log is not None and rank == 0) else (lambda s: None)
        say(f"train-nima: {len(train_items)} training, {len(val_items)} held-out images, {world} process(es) on {dev}")

        result = NIMATrainResult(model=module)
        for epoch in range(epochs):
            start = time.perf_counter()
            sampler.set_epoch(epoch)
            train_set.set_epoch(epoch)
            for g in opt.param_groups[1:]:
                g["lr"] = 0.0 if epoch < head_only_epochs else g["base_lr"]
            total = _train_epoch(model, loader, opt, dev, f"epoch {epoch + 1}/{epochs}", progress and rank == 0)
            if world > 1:
                dist.all_reduce(total)
            train_seconds = time.perf_counter() - start
            row: Dict[str, float] = {"epoch": epoch + 1, "train_emd": float(total[0] / total[1].clamp_min(1)),
                                     "seconds": train_seconds}
            if len(val_set):
                metrics = evaluate_nima(module, val_set, batch_size=max(1, batch_size // world), device=dev,
                                        threshold=threshold, workers=workers)
                row.update({f"val_{k}": v for k, v in metrics.items()})
                result.metrics = metrics
            result.history.append(row)
            say("train-nima: " + ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()))
            if out is not None and rank == 0:
                _save_checkpoint(module, out, num_bins, epoch, result.history)
        if world > 1:
            dist.barrier()  # the checkpoint is complete before any process returns
        return result
    finally:
        leave_process_group(owned)


# ---------------------------------------------------------------- command line


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ratings", help="AVA.txt or a CSV (path,c1..c10 or path,mean,std); or --synthetic")
    synth = parser.add_argument_group("offline synthetic ratings (instead of --ratings; pdl_ext.train.synthetic_ratings)")
    synth.add_argument("--synthetic", action="store_true",
                       help="rate crops of the bundled photographs by known degradation strengths (haze, tone, noise, "
                            "blur, JPEG) and train a small NIMA on them; uses --seed, --device, --out, --no-progress")
    synth.add_argument("--synthetic-role", choices=("loss", "judge"), default="loss",
                       help="which disjoint set of photographs (and default seed: 0 / 1) to use (default loss)")
    synth.add_argument("--synthetic-photos", help="comma-separated bundled names or files instead of the role's")
    synth.add_argument("--synthetic-count", type=int, default=1200, help="training crops (held-out: a quarter as many)")
    synth.add_argument("--synthetic-epochs", type=int, default=16)
    parser.add_argument("--images", help="image directory (AVA: <id>.jpg; CSV: base of relative paths)")
    parser.add_argument("--format", dest="fmt", default="auto", choices=("auto", "ava", "csv"))
    parser.add_argument("--val-ratings", help="held-out ratings file (default: a seeded split of --ratings)")
    parser.add_argument("--val-fraction", type=float, default=0.1)
    parser.add_argument("--backbone", default="vgg16", choices=("vgg16", "vgg19"))
    parser.add_argument("--backbone-weights", help="torchvision VGG ImageNet weights (.pth/.safetensors); "
                                                   "default: the torch hub cache")
    parser.add_argument("--no-pretrained", action="store_true", help="random backbone init (no ImageNet weights)")
    parser.add_argument("--download", action="store_true", help="allow downloading the VGG ImageNet weights")
    parser.add_argument("--weights", help="start from a NIMA checkpoint (.safetensors/.pth)")
    parser.add_argument("--num-bins", type=int, default=10)
    parser.add_argument("--dropout", type=float, default=0.75)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=32, help="global batch size")
    parser.add_argument("--lr", type=float, default=1e-4, help="head learning rate")
    parser.add_argument("--backbone-lr-factor", type=float, default=0.1)
    parser.add_argument("--head-only-epochs", type=int, default=0)
    parser.add_argument("--optimizer", default="adam", choices=("adam", "sgd"))
    parser.add_argument("--weight-decay", type=float, default=0.0)
    parser.add_argument("--resize", type=int, default=256)
    parser.add_argument("--crop", type=int, default=224)
    parser.add_argument("--no-hflip", action="store_true")
    parser.add_argument("--seed", type=int, default=None, help="default 0 (--synthetic: the role's seed)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: this process's GPU, else CPU)")
    parser.add_argument("--threshold", type=float, default=5.0, help="score of the binary accuracy")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--out", required=True, help="checkpoint (.safetensors), written after every epoch")


def run(args: argparse.Namespace) -> int:
    import sys

    try:
        result = _run(args)
    except (FileNotFoundError, ValueError) as e:
        print(f"pdl-ext train-nima: error: {e}", file=sys.stderr)
        return 2
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps({"out": str(args.out), "metrics": result.metrics}, indent=2))
    return 0


def _run(args: argparse.Namespace) -> NIMATrainResult:
    if args.synthetic:
        return _run_synthetic(args)
    if args.ratings is None:
        raise ValueError("give --ratings FILE (AVA.txt or a CSV), or --synthetic for the offline synthetic ratings")
    return train_nima(
        args.ratings, args.images, backbone=args.backbone, num_bins=args.num_bins, dropout=args.dropout,
        weights=args.weights, backbone_weights=args.backbone_weights, pretrained_backbone=not args.no_pretrained,
        download=args.download, fmt=args.fmt, val_ratings=args.val_ratings, val_fraction=args.val_fraction,
        epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, backbone_lr_factor=args.backbone_lr_factor,
        head_only_epochs=args.head_only_epochs, optimizer=args.optimizer, weight_decay=args.weight_decay,
        resize=args.resize, crop=args.crop, hflip=not args.no_hflip, seed=0 if args.seed is None else args.seed,
        workers=args.workers,
        device=args.device, out=args.out, threshold=args.threshold, progress=not args.no_progress,
    )


def _run_synthetic(args: argparse.Namespace) -> NIMATrainResult:
    """``train-nima --synthetic``: :func:`pdl_ext.train.synthetic_ratings.train_synthetic_nima`."""
    from .synthetic_ratings import train_synthetic_nima

    if args.ratings is not None:
        raise ValueError("give either --ratings or --synthetic, not both")
    if args.synthetic_count < 1 or args.synthetic_epochs < 0:
        raise ValueError(f"--synthetic-count must be >= 1 and --synthetic-epochs >= 0, got {args.synthetic_count} "
                         f"and {args.synthetic_epochs}")
    photos = tuple(p.strip() for p in args.synthetic_photos.split(",") if p.strip()) if args.synthetic_photos else None
    return train_synthetic_nima(args.out, role=args.synthetic_role, photos=photos, count=args.synthetic_count,
                                val_count=max(1, args.synthetic_count // 4), seed=args.seed,
                                epochs=args.synthetic_epochs, device=args.device, progress=not args.no_progress)
