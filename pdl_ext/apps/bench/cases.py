"""What the benchmark runs: the shapes, the implementations, the timing loop, the table and the PDL step."""
from __future__ import annotations

import datetime
import os
import platform
import re
import statistics
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch


Shape = Tuple[int, int]

# The VGG16 feature-row table: rows x N of VGG16 feature maps (4 images 256x256) and small maps, large batch.
FULL_SHAPES: Tuple[Shape, ...] = ((256, 65536), (512, 16384), (1024, 4096), (2048, 1024), (2048, 256), (8192, 64))
QUICK_SHAPES: Tuple[Shape, ...] = ((64, 4096), (256, 1024), (1024, 256), (4096, 64))
# Our speedup targets, fused vs pure PyTorch, forward+backward; shapes outside the table take the rule by N.
SPEEDUP_TARGETS: Dict[Shape, float] = {
    (256, 65536): 10.0, (512, 16384): 10.0, (1024, 4096): 10.0, (2048, 1024): 10.0, (2048, 256): 4.0, (8192, 64): 4.0,
}
MEMORY_TARGET = 10.0  # extra peak bytes per element of x, fused forward+backward
# Peak memory only (not timed): one long row and a batch of long rows, whose scratch would dominate
# if the kernels sized it by the row rather than by what the rows need.
MEMORY_SHAPES: Tuple[Shape, ...] = ((1, 2**26), (64, 2**20))


@dataclass(frozen=True)
class Variant:
    """A configuration of the fused op timed against its float32, p=1, N == M run."""

    name: str
    dtype: torch.dtype
    p: int
    m_ratio: float  # M / N
    target: Optional[float]  # maximum time ratio to the base run


BASE = Variant("float32 p=1", torch.float32, 1, 1.0, None)
VARIANTS: Dict[str, Variant] = {
    "p2": Variant("p=2", torch.float32, 2, 1.0, 1.5),
    "nm": Variant("N!=M (M=3N/4)", torch.float32, 1, 0.75, 1.5),
    "float64": Variant("float64", torch.float64, 1, 1.0, 3.0),
}

MEMORY_METHOD = (
    "extra peak memory = peak RSS (VmHWM, reset via /proc/self/clear_refs) during one forward+backward "
    "minus RSS just before, in a worker process with MALLOC_MMAP_THRESHOLD_=65536 (freed buffers go back "
    "to the OS); it includes x.grad and scratch outside torch's allocator. 'alloc' = peak of torch's CPU "
    "allocator over the same step (torch.profiler profile_memory), which misses non-torch scratch."
)


# ----------------------------------------------------------------------------------------------
# The implementations compared


def pure_torch_wasserstein_1d(x: torch.Tensor, y: torch.Tensor, p: int = 1) -> torch.Tensor:
    """The baseline: ``torch.sort`` both rows, match, differentiate with autograd (N == M only)."""
    if x.shape[-1] != y.shape[-1]:
        raise ValueError(f"pure_torch_wasserstein_1d: needs N == M, got N={x.shape[-1]}, M={y.shape[-1]}")
    d = torch.sort(x, dim=-1).values - torch.sort(y, dim=-1).values
    return (d.abs() if p == 1 else d * d).mean(-1)


def _fused(x: torch.Tensor, y: torch.Tensor, p: int = 1) -> torch.Tensor:
    from ...ops import wasserstein_1d

    return wasserstein_1d(x, y, p)


def _reference(x: torch.Tensor, y: torch.Tensor, p: int = 1) -> torch.Tensor:
    from ...reference import wasserstein_1d

    return wasserstein_1d(x, y, p)


def _pot(x: torch.Tensor, y: torch.Tensor, p: int = 1) -> torch.Tensor:
    import ot  # POT, optional: its distributions run along dim 0

    return ot.wasserstein_1d(x.transpose(0, 1), y.transpose(0, 1), p=p)


IMPLEMENTATIONS: Dict[str, Tuple[str, Callable[..., torch.Tensor]]] = {
    "fused": ("pdl_ext.wasserstein_1d", _fused),
    "torch": ("pure PyTorch (sort + autograd)", pure_torch_wasserstein_1d),
    "reference": ("pdl_ext.reference", _reference),
    "pot": ("POT ot.wasserstein_1d", _pot),
}
DEFAULT_IMPLS = ("fused", "torch", "pot")


def unavailable_reason(impl: str) -> Optional[str]:
    """Why ``impl`` cannot run here (None when it can)."""
    if impl == "pot":
        import importlib.util

        if importlib.util.find_spec("ot") is None:
            return "POT (module `ot`) is not installed"
    return None


def make_inputs(rows: int, n: int, m: int, dtype: torch.dtype, seed: int = 0) -> Tuple[torch.Tensor, torch.Tensor]:
    """x (rows, n) requiring grad and y (rows, m) not, standard normal, seeded."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, n, generator=g, dtype=dtype).requires_grad_(True)
    y = torch.randn(rows, m, generator=g, dtype=dtype)
    return x, y


def step(fn: Callable[..., torch.Tensor], x: torch.Tensor, y: torch.Tensor, p: int) -> torch.Tensor:
    """One forward+backward of ``fn`` as a loss would run it; returns the detached per-row values."""
    x.grad = None
    out = fn(x, y, p)
    out.sum().backward()
    return out.detach()


def time_rounds(fns: Dict[str, Callable[[], Any]], warmup: int, repeats: int,
                failures: Optional[Dict[str, BaseException]] = None) -> Dict[str, List[float]]:
    """Wall times in seconds of each function over ``repeats`` rounds after ``warmup`` untimed ones.

    Each round calls every function once, so load changes on a shared machine hit them all alike.
    With ``failures`` given, a function that raises is recorded there and dropped from later rounds
    (one broken implementation must not lose the others' numbers); without it the error propagates.
    """
    times: Dict[str, List[float]] = {name: [] for name in fns}
    live = dict(fns)
    for r in range(warmup + repeats):
        for name, fn in list(live.items()):
            t0 = time.perf_counter()
            try:
                fn()
            except Exception as exc:
                if failures is None:
                    raise
                failures[name] = exc
                del live[name]
                continue
            if r >= warmup:
                times[name].append(time.perf_counter() - t0)
    return times


# ----------------------------------------------------------------------------------------------
# Machine description


def machine_info() -> Dict[str, Any]:
    """CPU model, cores, threads, versions, pdl_ext.extension_info() and the date of this run."""
    from ...extension import extension_info

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            found = re.search(r"^model name\s*:\s*(.+)$", f.read(), re.M)
        if found:
            cpu = found.group(1).strip()
    except OSError:
        pass
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    return {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "usable_cores": usable,
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "extension_info": extension_info(),
    }


# ----------------------------------------------------------------------------------------------
# The wasserstein_1d table


def speedup_target(shape: Shape) -> float:
    """Our fused-vs-PyTorch speedup target; shapes outside the table: 10x for N >= 1024, else 4x."""
    return SPEEDUP_TARGETS.get(shape, 10.0 if shape[1] >= 1024 else 4.0)


def _record(impl: str, shape: Shape, variant: Variant, m: int, times: List[float]) -> Dict[str, Any]:
    rows, n = shape
    median = statistics.median(times)
    return {
        "impl": impl, "name": IMPLEMENTATIONS[impl][0], "rows": rows, "n": n, "m": m,
        "dtype": str(variant.dtype).replace("torch.", ""), "p": variant.p, "variant": variant.name,
        "times_s": times, "median_s": median, "melem_per_s": rows * n / median / 1e6,
    }


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


@dataclass
class _Case:
    impl: str
    variant: Variant
    x: torch.Tensor
    y: torch.Tensor
    times: List[float]
    value: Optional[torch.Tensor] = None


def _time_interleaved(cases: List[_Case], warmup: int, repeats: int, notes: List[str], label: str) -> List[_Case]:
    """Times the cases in turns with ``time_rounds``; keeps each case's first output for the value
    check and returns the cases that ran."""

    def run_case(case: _Case) -> Callable[[], None]:
        fn = IMPLEMENTATIONS[case.impl][1]

        def once() -> None:
            out = step(fn, case.x, case.y, case.variant.p)
            if case.value is None:
                case.value = out
        return once

    failures: Dict[str, BaseException] = {}
    times = time_rounds({str(i): run_case(c) for i, c in enumerate(cases)}, warmup, repeats, failures)
    for i, case in enumerate(cases):
        case.times.extend(times[str(i)])
        if str(i) in failures:
            exc = failures[str(i)]
            notes.append(f"{case.impl} {label} {case.variant.name}: failed: {type(exc).__name__}: {exc}")
    return [c for i, c in enumerate(cases) if str(i) not in failures]


def run_table(shapes: Sequence[Shape], impls: Sequence[str], variants: Sequence[Variant], warmup: int,
              repeats: int) -> Tuple[List[Dict[str, Any]], List[str]]:
    """Times every implementation, and the fused variants, on every shape; returns (records, notes)."""
    records: List[Dict[str, Any]] = []
    notes: List[str] = []
    for rows, n in shapes:
        label = f"{rows}x{n}"
        x, y = make_inputs(rows, n, n, torch.float32)
        cases = [_Case(impl, BASE, x, y, []) for impl in impls]
        if "fused" in impls:
            for var in variants:
                m = max(1, round(n * var.m_ratio))
                vx, vy = (x, y) if (var.dtype, m) == (torch.float32, n) else make_inputs(rows, n, m, var.dtype)
                cases.append(_Case("fused", var, vx, vy, []))
        _log(f"  {label}: {len(cases)} cases, {warmup} + {repeats} interleaved rounds ...")
        live = _time_interleaved(cases, warmup, repeats, notes, label)
        base = {c.impl: c for c in live if c.variant is BASE}
        # Every implementation must compute the same thing, or its time means nothing.
        oracle = base.get("torch", base.get("reference"))
        for case in live:
            rec = _record(case.impl, (rows, n), case.variant, case.y.shape[-1], case.times)
            records.append(rec)
            if case.variant is BASE:
                if oracle is not None:
                    ref = oracle.value.double()
                    err = float((case.value.double() - ref).abs().max() / ref.abs().max().clamp_min(1e-30))
                    rec["max_rel_diff_vs_torch"] = err
                    if err > 1e-4:
                        notes.append(f"{case.impl} {label}: values differ from pure PyTorch by {err:.2e} (relative)")
                if "torch" in base:
                    rec["speedup_vs_torch"] = statistics.median(base["torch"].times) / rec["median_s"]
                if case.impl == "fused":
                    rec["target_speedup"] = speedup_target((rows, n))
            elif "fused" in base:
                rec["ratio_vs_base"] = rec["median_s"] / statistics.median(base["fused"].times)
                rec["target_ratio"] = case.variant.target
        del x, y, cases, live, base
    return records, notes


# ----------------------------------------------------------------------------------------------
# The whole PDL loss


def _feature_list(out: Any) -> List[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, dict):
        return list(out.values())
    return list(out)


def run_pdl(batch: int, size: int, warmup: int, repeats: int) -> Dict[str, Any]:
    """Times PDLLoss(vgg16, random weights) forward+backward, and its backbone alone; never raises."""
    try:
        from ...losses.pdl import PDLLoss
    except Exception as exc:  # not written yet, or broken: say so instead of failing the bench
        return {"skipped": f"pdl_ext.losses.pdl cannot be imported ({type(exc).__name__}: {exc})"}
    try:
        loss_fn = PDLLoss(backbone="vgg16", pretrained=False)
        backbone = loss_fn.backbone
        g = torch.Generator().manual_seed(0)
        x = torch.rand(batch, 3, size, size, generator=g).requires_grad_(True)
        y = torch.rand(batch, 3, size, size, generator=g)

        def whole() -> None:
            x.grad = None
            out = loss_fn(x, y)
            (out if out.dim() == 0 else out.sum()).backward()

        def backbone_only() -> None:
            # As the loss runs it: reference features without a graph, output features with one.
            x.grad = None
            with torch.no_grad():
                _feature_list(backbone(y))
            sum(f.sum() for f in _feature_list(backbone(x))).backward()

        with torch.no_grad():
            feature_elems = sum(f.numel() for f in _feature_list(backbone(x)))
        times = time_rounds({"backbone": backbone_only, "whole": whole}, warmup, repeats)
        t_backbone, t_whole = statistics.median(times["backbone"]), statistics.median(times["whole"])
    except Exception as exc:  # an API mismatch with this bench must not lose the other numbers
        return {"error": f"{type(exc).__name__}: {exc}"}
    t_distance = t_whole - t_backbone
    return {
        "backbone": "vgg16 (random weights)", "batch": batch, "size": size, "repeats": repeats,
        "whole_s": t_whole, "backbone_s": t_backbone, "distance_s": t_distance,
        "whole_times_s": times["whole"], "backbone_times_s": times["backbone"],
        "distance_fraction": t_distance / t_whole, "feature_elements": feature_elems,
        "distance_melem_per_s": feature_elems / t_distance / 1e6 if t_distance > 0 else None,
    }


