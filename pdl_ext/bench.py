"""`pdl-ext bench`: times the fused ``wasserstein_1d`` against pure PyTorch (and POT), and the whole PDLLoss.

What it measures (issue 4), every number forward+backward with ``x`` requiring grad and ``y`` not:

- the table of shapes ``rows x N`` (VGG16 feature rows), float32, p=1, per implementation:
  median time over ``--repeats`` rounds after ``--warmup`` ones (``time.perf_counter``; a round runs
  every case of a shape once, so load changes on a shared machine hit all of them alike), million
  elements of ``x`` per second, speedup against pure PyTorch, extra peak memory per element of ``x``;
- the fused op's variants p=2, N != M (``y`` rows 3/4 as long) and float64, as their time over the
  fused float32 p=1 time of the same shape;
- the whole ``PDLLoss`` (VGG16, random weights) split into backbone and distance time, when it exists.

Peak memory is measured in a separate worker process: the peak resident set size (Linux ``VmHWM``,
reset through ``/proc/self/clear_refs``) during one step minus the resident size just before, with
glibc's mmap threshold pinned so freed buffers go back to the OS instead of hiding the next peak.
It counts everything the step touches, ``x.grad`` and scratch outside torch's allocator included. The
peak of torch's CPU allocator (``torch.profiler`` with ``profile_memory=True``) is reported beside it.

Example:
    $ pdl-ext bench --quick                      # ~15 s; writes bench_out/bench.json and bench.png
    $ pdl-ext bench --shapes 1024x4096 --repeats 9 --threads 1
    $ python -m pdl_ext bench --json out.json --plot out.png
"""
from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch

Shape = Tuple[int, int]

# The table of issue 4: rows x N of VGG16 feature maps (4 images 256x256) and small maps, large batch.
FULL_SHAPES: Tuple[Shape, ...] = ((256, 65536), (512, 16384), (1024, 4096), (2048, 1024), (2048, 256), (8192, 64))
QUICK_SHAPES: Tuple[Shape, ...] = ((64, 4096), (256, 1024), (1024, 256), (4096, 64))
# Fused vs pure PyTorch, forward+backward (issue 4); shapes outside the table take the rule by N.
SPEEDUP_TARGETS: Dict[Shape, float] = {
    (256, 65536): 10.0, (512, 16384): 10.0, (1024, 4096): 10.0, (2048, 1024): 10.0, (2048, 256): 4.0, (8192, 64): 4.0,
}
MEMORY_TARGET = 10.0  # extra peak bytes per element of x, fused forward+backward


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
    from .ops import wasserstein_1d

    return wasserstein_1d(x, y, p)


def _reference(x: torch.Tensor, y: torch.Tensor, p: int = 1) -> torch.Tensor:
    from .reference import wasserstein_1d

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


def time_rounds(fns: Dict[str, Callable[[], Any]], warmup: int, repeats: int) -> Dict[str, List[float]]:
    """Wall times in seconds of each function over ``repeats`` rounds after ``warmup`` untimed ones.

    Each round calls every function once, so load changes on a shared machine hit them all alike.
    """
    times: Dict[str, List[float]] = {name: [] for name in fns}
    for r in range(warmup + repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            if r >= warmup:
                times[name].append(time.perf_counter() - t0)
    return times


# ----------------------------------------------------------------------------------------------
# Peak memory, in a worker process


def _proc_status_bytes(key: str) -> int:
    with open("/proc/self/status") as f:
        return int(re.search(rf"^{key}:\s+(\d+) kB", f.read(), re.M).group(1)) * 1024


def _allocator_peak(fn: Callable[[], Any]) -> int:
    """Peak bytes held by torch's CPU allocator during ``fn()`` above what it held before."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = [e for e in prof.profiler.kineto_results.events()
              if e.name() == "[memory]" and e.device_type() == DeviceType.CPU]
    current = peak = 0
    for e in sorted(events, key=lambda e: e.start_ns()):
        current += e.nbytes()
        peak = max(peak, current)
    return peak


def _memory_job(job: Dict[str, Any]) -> Dict[str, Any]:
    fn = IMPLEMENTATIONS[job["impl"]][1]
    dtype = getattr(torch, job["dtype"])
    p = job["p"]
    # Warm-up at a tiny size: thread pools and lazy initialisation must not count as the step's memory.
    wx, wy = make_inputs(4, 64, max(1, round(64 * job["m"] / job["n"])), dtype)
    step(fn, wx, wy, p)
    x, y = make_inputs(job["rows"], job["n"], job["m"], dtype)
    del wx, wy
    gc.collect()
    before = _proc_status_bytes("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current RSS (Linux >= 4.0)
    step(fn, x, y, p)
    rss_peak = _proc_status_bytes("VmHWM") - before
    x.grad = None  # else freeing it inside the profiled step would offset the allocator's count
    alloc_peak = _allocator_peak(lambda: step(fn, x, y, p))
    return {"rss_bytes": max(0, rss_peak), "alloc_bytes": alloc_peak, "elements": x.numel()}


def _memory_worker() -> int:
    """Entry of the worker process: jobs as JSON on stdin, one JSON result per line on stdout."""
    spec = json.loads(sys.stdin.read())
    torch.set_num_threads(spec["threads"])
    for job in spec["jobs"]:
        try:
            result = _memory_job(job)
        except Exception as exc:  # one failing implementation must not lose the others' numbers
            result = {"error": f"{type(exc).__name__}: {exc}"}
        print("RESULT " + json.dumps(result), flush=True)
    return 0


def memory_supported() -> Optional[str]:
    """None when peak RSS can be reset and read here, else why not."""
    if not (os.path.exists("/proc/self/status") and os.access("/proc/self/clear_refs", os.W_OK)):
        return "peak memory needs Linux /proc/self/clear_refs and VmHWM; not available here"
    return None


def measure_memory(jobs: List[Dict[str, Any]], threads: int, timeout: float = 900.0) -> List[Dict[str, Any]]:
    """Runs the memory jobs in one fresh worker process; returns one result dict per job."""
    if not jobs:
        return []
    env = dict(os.environ)
    # A fixed threshold disables glibc's adaptive one, under which freed large buffers stay resident.
    env["MALLOC_MMAP_THRESHOLD_"] = "65536"
    package_root = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join([package_root] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    code = "import sys; from pdl_ext.bench import _memory_worker; sys.exit(_memory_worker())"
    try:
        proc = subprocess.run(
            [sys.executable, "-c", code], input=json.dumps({"threads": threads, "jobs": jobs}),
            capture_output=True, text=True, env=env, timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        return [{"error": f"memory worker timed out after {timeout:.0f} s"} for _ in jobs]
    results = [json.loads(line[len("RESULT "):]) for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if len(results) < len(jobs):
        tail = proc.stderr.strip().splitlines()[-1:] or [f"exit code {proc.returncode}"]
        results += [{"error": f"memory worker died: {tail[0]}"} for _ in range(len(jobs) - len(results))]
    return results


# ----------------------------------------------------------------------------------------------
# Machine description


def machine_info() -> Dict[str, Any]:
    """CPU model, cores, threads, versions, pdl_ext.extension_info() and the date of this run."""
    from .extension import extension_info

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
    """Issue 4's fused-vs-PyTorch target; shapes outside its table: 10x for N >= 1024, else 4x."""
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
    """Times the cases in turns (one step of each per round), so a load change on a shared machine hits
    them all alike and their ratios stay fair; returns the cases that ran."""
    live = list(cases)
    for r in range(warmup + repeats):
        for case in list(live):
            fn = IMPLEMENTATIONS[case.impl][1]
            try:
                t0 = time.perf_counter()
                out = step(fn, case.x, case.y, case.variant.p)
                elapsed = time.perf_counter() - t0
            except Exception as exc:  # one broken implementation must not lose the others' numbers
                notes.append(f"{case.impl} {label} {case.variant.name}: failed: {type(exc).__name__}: {exc}")
                live.remove(case)
                continue
            if case.value is None:
                case.value = out
            if r >= warmup:
                case.times.append(elapsed)
    return live


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


def attach_memory(records: List[Dict[str, Any]], threads: int, notes: List[str]) -> None:
    """Adds extra peak bytes per element of x (RSS and torch allocator) to the given records."""
    reason = memory_supported()
    if reason:
        notes.append(reason)
        return
    jobs = [{k: r[k] for k in ("impl", "rows", "n", "m", "dtype", "p")} for r in records]
    _log(f"  measuring peak memory of {len(jobs)} steps in a worker process ...")
    for rec, res in zip(records, measure_memory(jobs, threads)):
        if "error" in res:
            notes.append(f"memory {rec['impl']} {rec['rows']}x{rec['n']} {rec['variant']}: {res['error']}")
            continue
        rec["peak_extra_bytes_per_elem"] = res["rss_bytes"] / res["elements"]
        rec["alloc_peak_bytes_per_elem"] = res["alloc_bytes"] / res["elements"]
        if rec["impl"] == "fused" and rec["variant"] == BASE.name:
            rec["target_bytes_per_elem"] = MEMORY_TARGET


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
        from .pdl import PDLLoss
    except Exception as exc:  # not written yet, or broken: say so instead of failing the bench
        return {"skipped": f"pdl_ext.pdl cannot be imported ({type(exc).__name__}: {exc})"}
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


# ----------------------------------------------------------------------------------------------
# Output


def _print_table(title: str, headers: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
        print(f"\n{title}")
        print("  ".join(h.rjust(w) for h, w in zip(headers, widths)))
        print("  ".join("-" * w for w in widths))
        for r in rows:
            print("  ".join(c.rjust(w) for c, w in zip(r, widths)))
        return
    table = Table(title=title)
    for h in headers:
        table.add_column(h, justify="right")
    for r in rows:
        table.add_row(*r)
    Console().print(table)


def _fmt(value: Optional[float], spec: str, suffix: str = "") -> str:
    return "-" if value is None else f"{value:{spec}}{suffix}"


def _check(ok: Optional[bool]) -> str:
    return "" if ok is None else ("ok" if ok else "MISS")


def print_report(records: List[Dict[str, Any]], pdl: Optional[Dict[str, Any]],
                 notes: List[str], settings: Dict[str, Any]) -> None:
    base = [r for r in records if r["variant"] == BASE.name]
    rows = []
    for r in base:
        sp, target = r.get("speedup_vs_torch"), r.get("target_speedup")
        mem = r.get("peak_extra_bytes_per_elem")
        ok = None if sp is None or target is None else sp >= target
        mem_ok = None if mem is None or "target_bytes_per_elem" not in r else mem <= r["target_bytes_per_elem"]
        rows.append([
            f"{r['rows']}x{r['n']}", r["impl"], _fmt(r["median_s"] * 1e3, ".2f"), _fmt(r["melem_per_s"], ".1f"),
            _fmt(sp, ".2f", "x"), _fmt(target, ".0f", "x") + (" " + _check(ok) if ok is not None else ""),
            _fmt(mem, ".1f") + (" " + _check(mem_ok) if mem_ok is not None else ""),
            _fmt(r.get("alloc_peak_bytes_per_elem"), ".1f"),
        ])
    _print_table(
        f"wasserstein_1d forward+backward, float32, p=1 (median of {settings['repeats']})",
        ["rows x N", "impl", "ms", "Melem/s", "vs torch", "target", "peak B/el", "alloc B/el"], rows,
    )
    rows = []
    for r in records:
        if r["variant"] == BASE.name:
            continue
        ratio, target = r.get("ratio_vs_base"), r["target_ratio"]
        ok = None if ratio is None else ratio <= target
        rows.append([
            f"{r['rows']}x{r['n']}", r["variant"], _fmt(r["median_s"] * 1e3, ".2f"), _fmt(r["melem_per_s"], ".1f"),
            _fmt(ratio, ".2f", "x"), _fmt(target, ".1f", "x") + " " + _check(ok),
            _fmt(r.get("peak_extra_bytes_per_elem"), ".1f"),
        ])
    if rows:
        _print_table("fused variants: time / fused float32 p=1 of the same shape",
                     ["rows x N", "variant", "ms", "Melem/s", "ratio", "target", "peak B/el"], rows)
    print("\nMelem/s = rows*N / median time; peak B/el: " + MEMORY_METHOD)
    if pdl is not None:
        print("\nPDLLoss (VGG16, random weights), forward+backward:")
        if "skipped" in pdl or "error" in pdl:
            print(f"  skipped: {pdl.get('skipped') or 'error: ' + pdl['error']}")
        else:
            print(f"  batch {pdl['batch']} of {pdl['size']}x{pdl['size']}: whole {pdl['whole_s'] * 1e3:.1f} ms = "
                  f"backbone {pdl['backbone_s'] * 1e3:.1f} ms + distance {pdl['distance_s'] * 1e3:.1f} ms "
                  f"({100 * pdl['distance_fraction']:.1f}% of the step; "
                  f"{pdl['feature_elements'] / 1e6:.2f} M feature elements of x)")
    for note in notes:
        print(f"note: {note}")


def write_plot(path: Path, records: List[Dict[str, Any]], subtitle: str = "") -> None:
    """Bar plots: fused speedup over pure PyTorch by shape, and the variants' time ratios, with targets."""
    from matplotlib.figure import Figure  # no pyplot: renders with Agg, touches no global backend

    base = [r for r in records if r["impl"] == "fused" and r["variant"] == BASE.name]
    shapes = [f"{r['rows']}x{r['n']}" for r in base]
    fig = Figure(figsize=(12, 4.5), layout="constrained")
    ax1, ax2 = fig.subplots(1, 2)
    if subtitle:
        fig.suptitle(subtitle, fontsize=9)
    pos = list(range(len(base)))
    speedups = [r.get("speedup_vs_torch", 0.0) for r in base]
    ax1.bar(pos, speedups, color="tab:blue", label="fused / pure PyTorch")
    for i, r in enumerate(base):
        ax1.hlines(r["target_speedup"], i - 0.4, i + 0.4, colors="tab:red", linestyles="--",
                   label="target (issue 4)" if i == 0 else None)
        ax1.annotate(f"{speedups[i]:.1f}x", (i, speedups[i]), ha="center", va="bottom", fontsize=8)
    ax1.set_xticks(pos, shapes, rotation=30)
    ax1.set_ylabel("speedup, forward+backward")
    ax1.set_title("fused wasserstein_1d vs pure PyTorch (float32, p=1)")
    ax1.legend(loc="upper right", fontsize=8)

    shown = [v for v in VARIANTS.values() if any(r["variant"] == v.name for r in records)]
    width = 0.8 / max(1, len(shown))
    for k, var in enumerate(shown):
        ratios = {(r["rows"], r["n"]): r.get("ratio_vs_base", 0.0) for r in records if r["variant"] == var.name}
        xs = [i + (k - (len(shown) - 1) / 2) * width for i in pos]
        ax2.bar(xs, [ratios.get((r["rows"], r["n"]), 0.0) for r in base], width, label=var.name)
    for target in sorted({v.target for v in shown}):
        which = ", ".join(v.name for v in shown if v.target == target)
        ax2.axhline(target, color="tab:red", linestyle="--", linewidth=1)
        ax2.annotate(f"target {which}: {target}x", (-0.5, target), va="bottom", fontsize=7, color="tab:red")
    ax2.set_xticks(pos, shapes, rotation=30)
    ax2.set_ylabel("time / fused float32 p=1")
    ax2.set_title("fused variants (lower is better)")
    ax2.legend(fontsize=7)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)


# ----------------------------------------------------------------------------------------------
# CLI


def parse_shapes(text: str) -> List[Shape]:
    """'256x65536,2048x256' -> [(256, 65536), (2048, 256)]."""
    shapes = []
    for part in text.split(","):
        found = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", part)
        if not found or int(found.group(1)) < 1 or int(found.group(2)) < 1:
            raise argparse.ArgumentTypeError(f"--shapes: expected ROWSxN[,ROWSxN...] of positive ints, got {part!r}")
        shapes.append((int(found.group(1)), int(found.group(2))))
    return shapes


def _names(choices: Sequence[str], option: str) -> Callable[[str], List[str]]:
    def parse(text: str) -> List[str]:
        names = [] if text.strip() in ("", "none") else [t.strip() for t in text.split(",")]
        bad = [t for t in names if t not in choices]
        if bad:
            raise argparse.ArgumentTypeError(f"{option}: unknown {bad}, choose from {', '.join(choices)} or none")
        return names

    return parse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true",
                        help=f"small shapes ({', '.join(f'{r}x{n}' for r, n in QUICK_SHAPES)}), 3 repeats, "
                             "small PDL images: ~15 s")
    parser.add_argument("--shapes", type=parse_shapes, default=None,
                        help="comma-separated ROWSxN (default: the table of issue 4)")
    parser.add_argument("--repeats", type=int, default=None, help="timed runs per measurement (default 5, quick 3)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs before the timed ones (default 1)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads for this run")
    parser.add_argument("--impls", type=_names(list(IMPLEMENTATIONS), "--impls"), default=list(DEFAULT_IMPLS),
                        help=f"comma-separated, from {', '.join(IMPLEMENTATIONS)} (default {','.join(DEFAULT_IMPLS)})")
    parser.add_argument("--variants", type=_names(list(VARIANTS), "--variants"), default=list(VARIANTS),
                        help="fused variants timed against float32 p=1: p2, nm, float64, or none (default all)")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory worker")
    parser.add_argument("--no-pdl", action="store_true", help="skip the whole-PDLLoss timing")
    parser.add_argument("--out", type=Path, default=Path("bench_out"), help="directory of the default outputs")
    parser.add_argument("--json", type=Path, default=None, help="JSON results path (default OUT/bench.json)")
    parser.add_argument("--plot", type=Path, default=None, help="PNG plot path (default OUT/bench.png)")


def run(args: argparse.Namespace) -> int:
    repeats = args.repeats if args.repeats is not None else (3 if args.quick else 5)
    if repeats < 1 or args.warmup < 0:
        raise SystemExit(f"pdl-ext bench: --repeats must be >= 1 and --warmup >= 0, got {repeats} and {args.warmup}")
    if args.threads is not None and args.threads < 1:
        raise SystemExit(f"pdl-ext bench: --threads must be >= 1, got {args.threads}")
    shapes = args.shapes or list(QUICK_SHAPES if args.quick else FULL_SHAPES)
    previous_threads = torch.get_num_threads()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    try:
        info = machine_info()
        ext = info["extension_info"]
        print(f"pdl-ext bench, {info['date']}")
        print(f"machine: {info['cpu']}, {info['cores']} cores ({info['usable_cores']} usable), "
              f"torch threads {info['torch_threads']}, {info['platform']}")
        print(f"torch {info['torch']}, python {info['python']}; pdl_ext {ext.get('version')}: "
              f"compiled={ext.get('compiled')} cuda={ext.get('cuda')} openmp={ext.get('openmp')} "
              f"cpu_sort={ext.get('cpu_sort')}")
        notes: List[str] = []
        impls = []
        for impl in args.impls:
            reason = unavailable_reason(impl)
            if reason:
                notes.append(f"{impl} skipped: {reason}")
            else:
                impls.append(impl)
        if not ext.get("compiled") and "fused" in impls:
            notes.append("the C++ extension is not built: 'fused' runs the pure-PyTorch reference fallback")
        variants = [VARIANTS[v] for v in args.variants]
        settings = {"shapes": [list(s) for s in shapes], "repeats": repeats, "warmup": args.warmup,
                    "impls": impls, "variants": [v.name for v in variants], "quick": args.quick,
                    "timing": "time.perf_counter around forward + out.sum().backward(), x requiring grad, y not; "
                              "per shape, rounds that run every case once (interleaved); median of the rounds"}
        records, table_notes = run_table(shapes, impls, variants, args.warmup, repeats)
        notes += table_notes
        if not args.no_memory:
            # --quick measures the memory targets only: one worker step costs as much as a timed one.
            measured = [r for r in records if not args.quick or r["variant"] == BASE.name]
            attach_memory(measured, torch.get_num_threads(), notes)
        pdl = None
        if not args.no_pdl:
            batch, size = (1, 32) if args.quick else (2, 128)
            _log(f"  PDLLoss vgg16 batch {batch} of {size}x{size} ...")
            pdl = run_pdl(batch, size, args.warmup, min(repeats, 2) if args.quick else repeats)
        print_report(records, pdl, notes, settings)

        json_path = args.json or args.out / "bench.json"
        plot_path = args.plot or args.out / "bench.png"
        json_path.parent.mkdir(parents=True, exist_ok=True)
        result = {"machine": info, "settings": settings, "memory_method": MEMORY_METHOD, "results": records,
                  "pdl": pdl, "notes": notes}
        json_path.write_text(json.dumps(result, indent=2) + "\n")
        print(f"\nwrote {json_path}")
        try:
            write_plot(plot_path, records, f"{info['date']}, {info['cpu']}, {info['torch_threads']} threads, "
                                           f"torch {info['torch']}, median of {repeats}")
            print(f"wrote {plot_path}")
        except ImportError as exc:
            print(f"note: no plot ({exc}); install matplotlib")
    finally:
        torch.set_num_threads(previous_threads)
    return 0
