"""Soak test: thousands of forward+backward calls of each op and of PDLLoss with varying shapes, and the
process's resident memory (RSS) along the way. After a warm-up that includes the largest shape, the
peak RSS must stop growing: growth means a leak (C++ scratch, saved tensors, autograd graphs) or
unbounded caches.

    python benchmarks/soak.py                  # 10,000 calls of each workload
    python benchmarks/soak.py --calls 500 --workloads wasserstein_1d,pdl_loss

Prints one line per workload (peak RSS after the warm-up, at the end, and the growth) and exits with
1 when a workload's peak grew by more than --max-growth-mb after its warm-up.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import random
import resource
import sys
import time
from typing import Callable, Dict, List, Optional, Tuple

import torch

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, _ROOT)

from pdl_ext import ops  # noqa: E402
from pdl_ext.losses.pdl import PDLLoss  # noqa: E402
from pdl_ext.projection import projected_distance  # noqa: E402

MB = 1024 * 1024


def _status_kb(field: str) -> Optional[int]:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def current_rss_mb() -> float:
    """Resident set size now (VmRSS), in MiB."""
    kb = _status_kb("VmRSS")
    return kb / 1024 if kb is not None else peak_rss_mb()


def peak_rss_mb() -> float:
    """Peak resident set size (VmHWM since the last reset_peak_rss, else since the start), in MiB."""
    kb = _status_kb("VmHWM")
    if kb is None:  # not Linux: ru_maxrss (KiB on Linux, bytes on macOS), never reset
        kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        kb = kb // 1024 if sys.platform == "darwin" else kb
    return kb / 1024


def reset_peak_rss() -> bool:
    """Resets the peak (VmHWM) to the current RSS, so each workload's peak is its own (Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


# ---------------------------------------------------------------------------------------------
# Workloads: call(rng, i) runs the i-th forward+backward; the first calls use the largest shapes, so
# the warm-up has seen them.
# ---------------------------------------------------------------------------------------------
def _wasserstein_call(rng: random.Random, i: int) -> None:
    largest = i < 2
    rows = 32 if largest else rng.randint(1, 32)
    n = 2048 if largest else rng.randint(1, 2048)
    m = 2048 if largest else rng.choice((n, rng.randint(1, 2048)))
    dtype = torch.float64 if largest else rng.choice((torch.float32, torch.float64, torch.bfloat16))
    x = torch.randn(rows, n, dtype=dtype, requires_grad=True)
    y = torch.randn(rows, m, dtype=dtype, requires_grad=rng.random() < 0.5)
    w = ops.wasserstein_1d(x, y, rng.choice((1, 2)))
    w.sum().backward()


def _normalized_call(rng: random.Random, i: int) -> None:
    largest = i < 2
    b = 2 if largest else rng.randint(1, 2)
    c = 32 if largest else rng.randint(1, 32)
    n = 1024 if largest else rng.randint(1, 1024)
    m = 1024 if largest else rng.choice((n, rng.randint(1, 1024)))
    x = torch.relu(torch.randn(b, c, n)).requires_grad_(True)
    y = torch.relu(torch.randn(b, c, m)).requires_grad_(rng.random() < 0.5)
    w = ops.normalized_wasserstein_1d(x, y, rng.choice((1, 2)))
    w.sum().backward()


def _projected_call(rng: random.Random, i: int) -> None:
    largest = i < 2
    side = 24 if largest else rng.randint(1, 24)
    c = 32 if largest else rng.randint(1, 32)
    projection = rng.choice(("spatial", "channel", rng.randint(1, 32)))
    fx = torch.relu(torch.randn(2, c, side, side)).requires_grad_(True)
    fy = torch.relu(torch.randn(2, c, side, side))
    projected_distance(fx, fy, rng.choice((1, 2)), projection, normalize=rng.random() < 0.5).sum().backward()


# PDLLoss: a few image sizes, each met during the warm-up. oneDNN caches a convolution plan per shape,
# so a new size late in the run would grow memory without any leak.
PDL_SIDES = (8, 12, 16, 20)
PDL_BATCHES = (1, 2)


def _make_pdl_call() -> Callable[[random.Random, int], None]:
    losses = {
        "spatial": PDLLoss(layers=("relu1_2", "relu2_1"), pretrained=False),
        "normalized": PDLLoss(layers=("relu1_2", "relu2_1"), pretrained=False, normalize=True, pixel_loss="l1"),
        "sliced": PDLLoss(layers=("relu1_2", "relu2_1"), pretrained=False, projection=16, p=2),
    }
    combos = [(k, s, b) for k in losses for s in PDL_SIDES for b in PDL_BATCHES]

    def call(rng: random.Random, i: int) -> None:
        kind, side, b = combos[i] if i < len(combos) else rng.choice(combos)
        x = torch.rand(b, 3, side, side, requires_grad=True)
        losses[kind](x, torch.rand(b, 3, side, side)).backward()

    return call


WORKLOADS: Dict[str, Callable[[], Callable[[random.Random, int], None]]] = {
    "wasserstein_1d": lambda: _wasserstein_call,
    "normalized_wasserstein_1d": lambda: _normalized_call,
    "projected_distance": lambda: _projected_call,
    "pdl_loss": _make_pdl_call,
}


def soak_one(name: str, calls: int, seed: int = 0, warmup: Optional[int] = None, checkpoints: int = 10,
             log: Optional[Callable[[str], None]] = None) -> Dict[str, object]:
    """Runs `calls` forward+backward calls of workload `name`; returns its memory figures (MiB)."""
    call = WORKLOADS[name]()
    rng = random.Random(seed)
    warmup = max(1, min(calls, warmup if warmup is not None else max(50, calls // 10)))
    gc.collect()
    own_peak = reset_peak_rss()
    start_rss = current_rss_mb()
    t0 = time.perf_counter()
    samples: List[Tuple[int, float]] = []
    warm_peak = warm_rss = 0.0
    every = max(1, (calls - warmup) // max(1, checkpoints))
    for i in range(calls):
        call(rng, i)
        if i + 1 == warmup:
            warm_peak, warm_rss = peak_rss_mb(), current_rss_mb()
            samples.append((i + 1, warm_rss))
        elif i + 1 > warmup and ((i + 1 - warmup) % every == 0 or i + 1 == calls):
            samples.append((i + 1, current_rss_mb()))
            if log is not None:
                log(f"  {name}: {i + 1}/{calls} calls, RSS {samples[-1][1]:.1f} MiB, peak {peak_rss_mb():.1f} MiB")
    seconds = time.perf_counter() - t0
    end_peak, end_rss = peak_rss_mb(), current_rss_mb()
    return {
        "workload": name,
        "calls": calls,
        "warmup_calls": warmup,
        "seconds": round(seconds, 2),
        "start_rss_mb": round(start_rss, 1),
        "warmup_peak_rss_mb": round(warm_peak, 1),
        "end_peak_rss_mb": round(end_peak, 1),
        "peak_growth_mb": round(end_peak - warm_peak, 1),
        "warmup_rss_mb": round(warm_rss, 1),
        "end_rss_mb": round(end_rss, 1),
        "rss_samples_mb": [round(r, 1) for _, r in samples],
        "peak_is_per_workload": own_peak,
    }


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=10_000, help="forward+backward calls per workload (10000)")
    parser.add_argument("--warmup", type=int, default=None, help="warm-up calls per workload (default: 10%%, >= 50)")
    parser.add_argument("--workloads", default=",".join(WORKLOADS), help=f"comma-separated subset of {','.join(WORKLOADS)}")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-growth-mb", type=float, default=16.0,
                        help="fail when a workload's peak RSS grows more than this after its warm-up (16)")
    parser.add_argument("--json", default=None, help="also write the figures to this JSON file")
    parser.add_argument("--quiet", action="store_true", help="no progress lines")
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.workloads.split(",") if n.strip()]
    unknown = [n for n in names if n not in WORKLOADS]
    if unknown:
        parser.error(f"unknown workload(s) {unknown}; choose from {', '.join(WORKLOADS)}")
    log = None if args.quiet else (lambda s: print(s, flush=True))
    print(f"soak: {args.calls} calls per workload, torch {torch.__version__}, {torch.get_num_threads()} threads", flush=True)
    results, failed = [], []
    for name in names:
        r = soak_one(name, args.calls, args.seed, args.warmup, log=log)
        results.append(r)
        grew = r["peak_growth_mb"] > args.max_growth_mb
        failed += [name] if grew else []
        print(f"{name}: {r['calls']} calls in {r['seconds']} s; peak RSS after warm-up ({r['warmup_calls']} calls) "
              f"{r['warmup_peak_rss_mb']} MiB, at the end {r['end_peak_rss_mb']} MiB (growth {r['peak_growth_mb']} MiB); "
              f"RSS {r['warmup_rss_mb']} -> {r['end_rss_mb']} MiB{'  GREW' if grew else ''}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    if failed:
        print(f"soak: peak RSS kept growing after the warm-up for {failed} (> {args.max_growth_mb} MiB)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
