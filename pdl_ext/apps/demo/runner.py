"""Running the demo: its configuration, the loop over loss specs, and the `pdl-ext demo` command."""
from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch

from ..loss_spec import LossSpec, WeightedSumLoss, parse_loss_specs
from ...train.degradations import TASKS
from .report import _mean_metrics, _describe_run, center_crop, format_table, image_metrics, metrics_rows, save_grid, write_outputs, zoom_box
from .report import enhancement_metrics, grid_caption, quality_models
from .terms import TermContext, build_term
from ...train.distributed import join_process_group, leave_process_group, local_rank
from .training import DEFAULT_LOSSES, TASK_PARAMS, TEST_IMAGES, TRAIN_IMAGES, ResidualRestorer, degrade_for_network, train_restorer
from .training import default_losses
from ..._checks import is_int


@dataclass
class DemoConfig:
    """Everything a demo run depends on (written to ``metrics.json``)."""

    task: str = "denoise"
    losses: Optional[str] = None  # None: the task's default (DEFAULT_LOSSES; l1 vs l1+W*nima for dehaze/tonemap)
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
    judge_weights: Optional[str] = None  # the NIMA that scores outputs; None: a second synthetic-ratings one
    mdf_iters: int = 100
    threads: int = 0  # 0: torch's default, or 1 when the machine is already busy
    out: str = "demo_out"
    train_images: Tuple[str, ...] = TRAIN_IMAGES
    test_images: Tuple[str, ...] = TEST_IMAGES


def _resolve_device(device: str, local_rank: int) -> torch.device:
    from ..cli import check_device

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = check_device(device, "demo: --device")  # a ValueError for 'foo' or CUDA without a GPU
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", local_rank)
    return dev


def _check_config(cfg: DemoConfig, multiple: int) -> None:
    if cfg.task not in TASKS:
        raise ValueError(f"demo: --task must be one of {', '.join(TASKS)}, got {cfg.task!r}")
    if not is_int(cfg.threads) or cfg.threads < 0:
        raise ValueError(f"demo: --threads must be 0 (automatic) or a positive integer, got {cfg.threads!r}")
    for name in ("steps", "batch", "width", "blocks", "mdf_iters"):
        v = getattr(cfg, name)
        if not is_int(v) or v < 1:
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
        >>> from pdl_ext.apps.demo import run_demo
        >>> r = run_demo(steps=5, crop=32, batch=2, test_images=("chelsea",), eval_size=64, out="demo_tiny")  # doctest: +SKIP
        >>> sorted(r["losses"])                                                                              # doctest: +SKIP
        ['l1', 'l1+0.05*pdl']
    """
    cfg = DemoConfig(**{**asdict(config or DemoConfig()), **overrides})
    cfg.train_images, cfg.test_images = tuple(cfg.train_images), tuple(cfg.test_images)
    multiple = TASK_PARAMS["sr"]["scale"] if cfg.task == "sr" else (2 if cfg.task == "demosaic" else 1)
    _check_config(cfg, multiple)
    cfg.losses = cfg.losses or default_losses(cfg.task)
    specs: List[LossSpec] = parse_loss_specs(cfg.losses)
    for flag, given in (("--nima-weights", cfg.nima_weights), ("--judge-weights", cfg.judge_weights)):
        if given is not None and not Path(given).expanduser().is_file():  # before any work
            raise FileNotFoundError(f"{flag} {given!r}: no such file (a NIMA checkpoint: VGG16/VGG19 .pth or "
                                    ".safetensors, or one written by `pdl-ext train-nima`)")

    device = _resolve_device(cfg.device, local_rank())
    from ...io.weights import check_output_path

    check_output_path(cfg.out, "demo: --out", directory=True)  # before any work, not after the training
    rank, world, created_group = join_process_group(device)
    say = log if rank == 0 else (lambda msg: None)
    threads_before = torch.get_num_threads()
    try:
        if device.type == "cpu":
            torch.set_num_threads(_choose_threads(cfg.threads, say))
        return _run(cfg, specs, device, rank, world, progress, say)
    finally:
        torch.set_num_threads(threads_before)
        leave_process_group(created_group)


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
    from ...train.images import load_image

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
    judges = quality_models(ctx, term_fns, cfg.judge_weights)  # NIMA scores of the outputs, if any

    def measure(img: torch.Tensor, ref: torch.Tensor) -> Dict[str, float]:
        return {**image_metrics(img, ref), **enhancement_metrics(img, cfg.task, judges)}

    torch.manual_seed(cfg.seed)
    initial = {k: v.clone() for k, v in ResidualRestorer(cfg.width, cfg.blocks).state_dict().items()}
    results: Dict[str, Any] = {
        "config": asdict(cfg), "config_losses": [str(s) for s in specs], "device": str(device),
        "processes": world, "torch": torch.__version__, "threads": torch.get_num_threads(),
        "notes": ctx.notes, "input": {"images": {}}, "losses": {}, "grids": {}, "interrupted": False,
    }
    results["input"]["images"] = {n: measure(degraded[n], refs[n]) for n in refs}
    results["input"]["mean"] = _mean_metrics(results["input"]["images"])
    reference = {n: enhancement_metrics(refs[n], cfg.task, judges) for n in refs}
    if any(reference.values()):
        results["reference"] = {"images": reference, "mean": _mean_metrics(reference)}
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
        per_image = {n: measure(outputs[name][n], refs[n]) for n in refs}
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
        cols = [("input", grid_caption(results["input"]["images"][n]), degraded[n])]
        for name, imgs in outputs.items():
            cols.append((name, grid_caption(results["losses"][name]["images"][n]), imgs[n]))
        cols.append(("reference", f"{n}\n{tuple(ref.shape[-2:])[0]}x{tuple(ref.shape[-2:])[1]}", ref))
        path = out / f"grid_{n}.png"
        save_grid(path, cols, zoom_box(ref))
        results["grids"][n] = str(path)
    write_outputs(out, results)


# ----------------------------------------------------------------------------------------------------
# CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = DemoConfig()
    parser.add_argument("--task", choices=TASKS, default=d.task, help=f"restoration or enhancement task (default {d.task})")
    parser.add_argument("--losses", default=None,
                        help=f"comma-separated loss specs, sums of WEIGHT*TERM with terms l1, l2, charbonnier, pdl, mdf, "
                             f"nima (default {DEFAULT_LOSSES!r}; dehaze, tonemap: {default_losses('dehaze')!r})")
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
                        help="MDF discriminators (.safetensors) for mdf (and pdl without VGG); 'train' trains a short "
                             "series here (default: the published ones bundled with pdl-ext, for the task)")
    parser.add_argument("--mdf-iters", type=int, default=d.mdf_iters, help=f"iterations per scale of the short MDF training (default {d.mdf_iters})")
    parser.add_argument("--nima-weights", default=None,
                        help="NIMA checkpoint for the nima term (VGG16/VGG19 .pth/.safetensors, or from `pdl-ext "
                             "train-nima`); default: a small NIMA trained here on synthetic ratings, cached in --out")
    parser.add_argument("--judge-weights", default=None,
                        help="NIMA checkpoint that scores the outputs (default for dehaze/tonemap and nima runs: a "
                             "second synthetic-ratings NIMA, other photographs and seed, cached in --out)")
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
                     judge_weights=args.judge_weights, mdf_iters=args.mdf_iters, threads=args.threads, out=args.out,
                     train_images=split(args.train_images), test_images=split(args.test_images))
    try:  # user errors become one line and exit status 2 in pdl-ext's main
        results = run_demo(cfg, progress=not args.quiet, log=lambda m: print(m, flush=True))
    except KeyboardInterrupt:  # before any loss finished (e.g. during a short MDF training)
        print("\npdl-ext demo: interrupted before any loss finished", file=sys.stderr)
        return 130
    return 130 if results["interrupted"] else 0
