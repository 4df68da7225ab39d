"""The demo's network, its task inputs and its training loop (the same seeded batches for every loss)."""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from ...train.degradations import degrade, upsample


# Named split of the bundled scikit-image photographs ("cat" is "chelsea": never train on it).
TRAIN_IMAGES: Tuple[str, ...] = ("astronaut", "rocket", "immunohistochemistry", "coffee", "brick", "grass", "camera", "coins")
TEST_IMAGES: Tuple[str, ...] = ("chelsea", "gravel")
DEFAULT_LOSSES = "l1,l1+0.05*pdl"
# Our default task settings (noise sigma in /255 units); not taken from a paper's tables.
TASK_PARAMS: Dict[str, Dict[str, Any]] = {
    "denoise": {"sigma": 25.0},
    "sr": {"scale": 4},
    "jpeg": {"quality": 10},
    "deblur": {"sigma": 2.0},
    "demosaic": {},
    # the enhancement tasks of Talebi & Milanfar, ICCP 2018 (haze: per-image beta and airlight draws)
    "dehaze": {"beta": (0.8, 1.8), "airlight": (0.85, 1.0)},
    "tonemap": {"exposure": -1.0, "compression": 3.0, "local": 0.5},
}
INPUT_LABELS = {"denoise": "input (noisy)", "sr": "input (bicubic x4)", "jpeg": "input (JPEG q10)",
                "deblur": "input (blurred)", "demosaic": "input (bilinear demosaic)", "dehaze": "input (hazy)",
                "tonemap": "input (tone-compressed)"}
ENHANCEMENT_TASKS: Tuple[str, ...] = ("dehaze", "tonemap")
# Their default comparison: the pixel loss alone and with NIMA's penalty. W from a sweep (0.05, 0.1, 0.2, 0.5; seed 1):
# the largest weight within 0.5 dB PSNR and 0.01 SSIM of l1 and no worse texture W1 (README, NIMA section);
# from 0.2 on, the restorer games the critic (hatching, colour fringes) and both NIMAs still score it higher.
ENHANCEMENT_LOSSES = {"dehaze": "l1,l1+0.05*nima", "tonemap": "l1,l1+0.05*nima"}


def default_losses(task: str) -> str:
    """The loss specs a task compares when ``--losses`` is not given."""
    return ENHANCEMENT_LOSSES.get(task, DEFAULT_LOSSES)


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
    its noise, dehazing its haze (beta, airlight, depth per image) from ``generator``.
    """
    params = dict(TASK_PARAMS[task])
    if task in ("denoise", "dehaze"):
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


