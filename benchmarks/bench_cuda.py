"""GPU speed and memory of the fused wasserstein_1d against what a user would write instead.

Forward+backward as a loss runs it (x requires grad, y does not), p=1, at the row shapes of VGG16 on
a batch of 8 images of 256x256 (rows x N: relu1_2 512x65536, relu2_2 1024x16384, relu3_3 2048x4096,
relu4_3 4096x1024, relu5_3 4096x256) and 8192x64, in float32 and bfloat16:

- ``fused``: ``pdl_ext.wasserstein_1d`` (one sort-and-match pass that also makes the gradient);
- ``torch``: the pure-PyTorch sort-and-match (``pdl_ext.apps.bench.pure_torch_wasserstein_1d``:
  ``torch.sort`` both rows, subtract, mean of ``|d|``, autograd), eager;
- ``torch.compile``: the same function under ``torch.compile`` (default settings: a static graph
  for the first shape, one dynamic-shape graph for the others).

Also the normalized op (``normalized_wasserstein_1d``, channel L2 normalization fused) against the
pure-PyTorch normalize-then-sort, and one ``PDLLoss`` step (VGG16, random weights, batch 8 of
256x256) split into backbone and distance time.

Timing: CUDA events around every call, median over ``--repeats`` calls after ``--warmup`` ones.
Memory: ``torch.cuda.max_memory_allocated()`` during one step after ``reset_peak_memory_stats()``,
minus what was allocated before (x, y and the module's weights), per element of x. Bandwidth: the
bytes the fused op must move at least (read x and y, write dx: 12 bytes per float32 element, 6 per
bfloat16) over its time, against the copy bandwidth measured in the same run
(``torch.empty_like(x).copy_(x)``, counting bytes read and written).

    python benchmarks/bench_cuda.py                       # everything (~1 to 2 minutes on an H100/H200)
    python benchmarks/bench_cuda.py --quick --json b.json # fewer shapes and repeats
    python benchmarks/bench_cuda.py --summarize b.json    # the markdown tables of a saved run (no GPU)

Without a GPU, or without a CUDA build of pdl_ext._C, it prints one line saying so and exits 1.
The results are written to --json after every section, so an interrupted run keeps what it measured.
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

Shape = Tuple[int, int]

# VGG16 feature rows of a batch of 8 images of 256x256 (rows = 8 * channels, N = H * W), and a
# short-row case.
SHAPES: Tuple[Shape, ...] = ((512, 65536), (1024, 16384), (2048, 4096), (4096, 1024), (4096, 256), (8192, 64))
QUICK_SHAPES: Tuple[Shape, ...] = ((512, 65536), (2048, 4096), (4096, 256))
DTYPES = ("float32", "bfloat16")
BATCH = 8  # images per batch: the normalized op's (B, C, N) = (8, rows / 8, N)
IMPLS = ("fused", "torch", "torch.compile")
DEVICE = "cuda"  # a module global so that a CPU smoke test (tests/test_gpu_check_script.py) can swap it


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------------------------
# The implementations


def fused(x, y, p: int = 1):
    from pdl_ext.ops import wasserstein_1d

    return wasserstein_1d(x, y, p)


def pure_torch(x, y, p: int = 1):
    from pdl_ext.apps.bench import pure_torch_wasserstein_1d

    return pure_torch_wasserstein_1d(x, y, p)


def fused_normalized(x, y, p: int = 1):
    from pdl_ext.ops import normalized_wasserstein_1d

    return normalized_wasserstein_1d(x, y, p)


def pure_torch_normalized(x, y, p: int = 1):
    """Normalize each position's channel vector (f / (||f|| + 1e-10)), then sort-and-match."""
    import torch

    def normalize(f):
        acc = torch.float32 if f.dtype in (torch.float16, torch.bfloat16) else f.dtype
        return f / (torch.linalg.vector_norm(f, dim=1, keepdim=True, dtype=acc).to(f.dtype) + 1e-10)

    return pure_torch(normalize(x), normalize(y), p)


_COMPILED: Dict[str, Callable] = {}


def compiled(name: str, fn: Callable) -> Callable:
    """torch.compile(fn) with default settings, one per function (recompiles per dtype as torch does)."""
    import torch

    if name not in _COMPILED:
        _COMPILED[name] = torch.compile(fn)
    return _COMPILED[name]


# ----------------------------------------------------------------------------------------------
# Measuring


def cuda_times_ms(fn: Callable[[], object], warmup: int, repeats: int) -> List[float]:
    """Milliseconds of each of `repeats` calls of fn (CUDA events around each), after `warmup` calls."""
    import torch

    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(repeats)]
    for start, end in events:
        start.record()
        fn()
        end.record()
    torch.cuda.synchronize()
    return [start.elapsed_time(end) for start, end in events]


def peak_extra_bytes(fn: Callable[[], object]) -> int:
    """Peak bytes of torch's CUDA allocator during fn() above what was allocated before it."""
    import torch

    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - before


def copy_bandwidth(warmup: int, repeats: int, nbytes: int = 1 << 30) -> Dict[str, Any]:
    """Device-to-device copy (torch.empty_like(x).copy_(x)) of `nbytes`: bytes read + written per second."""
    import torch

    src = torch.empty(nbytes // 4, dtype=torch.float32, device=DEVICE).uniform_()
    dst = torch.empty_like(src)
    times = cuda_times_ms(lambda: dst.copy_(src), warmup, repeats)
    median = statistics.median(times)
    return {"bytes": nbytes, "median_ms": median, "times_ms": times,
            "gb_per_s": 2 * nbytes / (median * 1e-3) / 1e9, "method": "torch.empty_like(x).copy_(x), read + write"}


def step_fn(impl: Callable, x, y) -> Callable[[], None]:
    def step() -> None:
        x.grad = None
        impl(x, y, 1).sum().backward()

    return step


def machine() -> Dict[str, Any]:
    import torch

    import pdl_ext

    props = torch.cuda.get_device_properties(0)
    return {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "gpu": torch.cuda.get_device_name(0),
        "compute_capability": f"{props.major}.{props.minor}",
        "multiprocessors": props.multi_processor_count,
        "memory_gib": round(props.total_memory / 2**30, 1),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "tf32_cudnn": torch.backends.cudnn.allow_tf32,
        "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
        "extension_info": pdl_ext.extension_info(),
    }


def unavailable() -> Optional[str]:
    """Why this benchmark cannot run here (None when it can)."""
    try:
        import torch
    except ImportError as exc:
        return f"torch cannot be imported ({exc})"
    if not torch.cuda.is_available():
        return f"no GPU visible: torch.cuda.is_available() is False (torch {torch.__version__}, CUDA {torch.version.cuda})"
    try:
        import pdl_ext
    except Exception as exc:  # noqa: BLE001 - say why in one line
        return f"pdl_ext cannot be imported ({type(exc).__name__}: {exc})"
    info = pdl_ext.extension_info()
    if not info.get("compiled"):
        return f"pdl_ext._C is not built ({info.get('load_error')})"
    if not info.get("cuda"):
        return "pdl_ext._C was built without its CUDA kernels (rebuild with FORCE_CUDA=1)"
    return None


# ----------------------------------------------------------------------------------------------
# The sections


def _values_agree(a, b) -> float:
    return float(((a.double() - b.double()).abs().max() / b.double().abs().max().clamp_min(1e-30)).item())


def run_case(label: str, impls: Dict[str, Callable], make: Callable[[], Tuple[Any, Any]], elem_bytes: int,
             warmup: int, repeats: int, notes: List[str]) -> Dict[str, Any]:
    """Times and measures each implementation on the inputs `make()` returns; one record."""
    import torch

    x, y = make()
    numel = x.numel()
    rec: Dict[str, Any] = {"elements": numel, "min_bytes": 3 * elem_bytes * numel, "impls": {}}
    with torch.no_grad():
        ref = impls["torch"](x.double(), y.double(), 1)
    for name, impl in impls.items():
        r: Dict[str, Any] = {}
        try:
            # The first call (it compiles under torch.compile) also checks the values: a fast wrong
            # result would time nothing worth knowing.
            x.grad = None
            t0 = time.perf_counter()
            out = impl(x, y, 1)
            out.sum().backward()
            torch.cuda.synchronize()
            r["first_call_s"] = time.perf_counter() - t0
            r["max_rel_diff_vs_float64"] = _values_agree(out.detach(), ref)
            if r["max_rel_diff_vs_float64"] > (1e-4 if x.dtype in (torch.float32, torch.float64) else 2e-2):
                notes.append(f"{label} {name}: values differ from float64 sort-and-match by "
                             f"{r['max_rel_diff_vs_float64']:.1e} (relative)")
            del out
            step = step_fn(impl, x, y)
            times = cuda_times_ms(step, warmup, repeats)
            r["times_ms"] = times
            r["median_ms"] = statistics.median(times)
            r["peak_extra_bytes"] = peak_extra_bytes(step)
            r["peak_extra_bytes_per_el"] = r["peak_extra_bytes"] / numel
        except Exception as exc:  # noqa: BLE001 - one failing implementation must not lose the others
            r["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            notes.append(f"{label} {name}: {r['error']}")
            log(f"    {name}: {r['error']}")
        rec["impls"][name] = r
    f = rec["impls"].get("fused", {})
    if "median_ms" in f:
        rec["fused_gb_per_s_at_min_bytes"] = rec["min_bytes"] / (f["median_ms"] * 1e-3) / 1e9
        for name, r in rec["impls"].items():
            if name != "fused" and "median_ms" in r:
                rec[f"speedup_vs_{name}"] = r["median_ms"] / f["median_ms"]
    del x, y, ref
    torch.cuda.empty_cache()
    return rec


def run_table(shapes: Sequence[Shape], dtypes: Sequence[str], impl_names: Sequence[str], warmup: int, repeats: int,
              notes: List[str], save: Callable[[], None], results: Dict[str, Any]) -> None:
    import torch

    impls = {"fused": fused, "torch": pure_torch}
    if "torch.compile" in impl_names:
        impls["torch.compile"] = compiled("w1d", pure_torch)
    impls = {k: v for k, v in impls.items() if k in impl_names}
    for dtype_name in dtypes:
        dtype = getattr(torch, dtype_name)
        for rows, n in shapes:
            label = f"{rows}x{n} {dtype_name}"
            log(f"  wasserstein_1d {label} ...")

            def make(rows=rows, n=n, dtype=dtype):
                g = torch.Generator(device=DEVICE).manual_seed(0)
                x = torch.randn(rows, n, device=DEVICE, generator=g).to(dtype).requires_grad_(True)
                y = torch.randn(rows, n, device=DEVICE, generator=g).to(dtype)
                return x, y

            rec = run_case(label, impls, make, torch.finfo(dtype).bits // 8, warmup, repeats, notes)
            rec.update({"op": "wasserstein_1d", "rows": rows, "n": n, "dtype": dtype_name, "p": 1})
            results["table"].append(rec)
            save()


def run_normalized(shapes: Sequence[Shape], dtypes: Sequence[str], impl_names: Sequence[str], warmup: int,
                   repeats: int, notes: List[str], save: Callable[[], None], results: Dict[str, Any]) -> None:
    import torch

    impls = {"fused": fused_normalized, "torch": pure_torch_normalized}
    if "torch.compile" in impl_names:
        impls["torch.compile"] = compiled("normalized", pure_torch_normalized)
    impls = {k: v for k, v in impls.items() if k in impl_names}
    for dtype_name in dtypes:
        dtype = getattr(torch, dtype_name)
        for rows, n in shapes:
            b, c = BATCH, rows // BATCH
            label = f"{b}x{c}x{n} {dtype_name}"
            log(f"  normalized_wasserstein_1d {label} ...")

            def make(b=b, c=c, n=n, dtype=dtype):
                g = torch.Generator(device=DEVICE).manual_seed(1)
                x = torch.relu(torch.randn(b, c, n, device=DEVICE, generator=g)).to(dtype).requires_grad_(True)
                y = torch.relu(torch.randn(b, c, n, device=DEVICE, generator=g)).to(dtype)
                return x, y

            rec = run_case(label, impls, make, torch.finfo(dtype).bits // 8, warmup, repeats, notes)
            rec.update({"op": "normalized_wasserstein_1d", "batch": b, "channels": c, "n": n, "rows": rows,
                        "dtype": dtype_name, "p": 1})
            results["normalized"].append(rec)
            save()


def run_pdl(batch: int, size: int, warmup: int, repeats: int) -> Dict[str, Any]:
    """PDLLoss (VGG16, random weights) forward+backward, its backbone alone, and the difference."""
    import torch

    from pdl_ext.losses.pdl import PDLLoss

    loss_fn = PDLLoss(backbone="vgg16", pretrained=False).to(DEVICE)
    backbone = loss_fn.backbone
    g = torch.Generator(device=DEVICE).manual_seed(0)
    x = torch.rand(batch, 3, size, size, device=DEVICE, generator=g).requires_grad_(True)
    y = torch.rand(batch, 3, size, size, device=DEVICE, generator=g)

    def feats(img):
        out = backbone(img)
        return [out] if isinstance(out, torch.Tensor) else list(out)

    def whole() -> None:
        x.grad = None
        loss_fn(x, y).backward()

    def backbone_only() -> None:
        # As the loss runs it: reference features without a graph, output features with one.
        x.grad = None
        with torch.no_grad():
            feats(y)
        sum(f.float().sum() for f in feats(x)).backward()

    with torch.no_grad():
        shapes = [tuple(f.shape) for f in feats(x)]
    t_whole = statistics.median(cuda_times_ms(whole, warmup, repeats))
    t_backbone = statistics.median(cuda_times_ms(backbone_only, warmup, repeats))
    mem_whole, mem_backbone = peak_extra_bytes(whole), peak_extra_bytes(backbone_only)
    return {
        "backbone": "vgg16 (random weights)", "batch": batch, "size": size, "feature_shapes": shapes,
        "whole_ms": t_whole, "backbone_ms": t_backbone, "distance_ms": t_whole - t_backbone,
        "distance_fraction": (t_whole - t_backbone) / t_whole,
        "peak_extra_bytes_whole": mem_whole, "peak_extra_bytes_backbone": mem_backbone,
    }


# ----------------------------------------------------------------------------------------------
# Reporting (also without a GPU: --summarize)


def _ms(r: Dict[str, Any]) -> str:
    return f"{r['median_ms']:.3f}" if "median_ms" in r else ("error" if "error" in r else "-")


def _mib(r: Dict[str, Any]) -> str:
    return f"{r['peak_extra_bytes'] / 2**20:.1f}" if "peak_extra_bytes" in r else "-"


def _x(v: Optional[float]) -> str:
    return f"{v:.2f}x" if isinstance(v, (int, float)) and math.isfinite(v) else "-"


def markdown(results: Dict[str, Any]) -> str:
    """The results as markdown tables."""
    lines: List[str] = []
    m = results.get("machine", {})
    copy = results.get("copy") or {}
    copy_gbs = copy.get("gb_per_s")
    if m:
        lines.append(f"GPU: {m.get('gpu')} (sm_{str(m.get('compute_capability', '')).replace('.', '')}), torch "
                     f"{m.get('torch')} (CUDA {m.get('torch_cuda')}), {m.get('date')}; "
                     f"copy bandwidth {copy_gbs:.0f} GB/s (read + write)" if copy_gbs else
                     f"GPU: {m.get('gpu')}, torch {m.get('torch')}, {m.get('date')}")
        lines.append("")
    s = results.get("settings", {})
    if s:
        lines.append(f"Forward+backward (x requires grad), p=1, median of {s.get('repeats')} calls after "
                     f"{s.get('warmup')} (CUDA events); memory: extra peak of torch's CUDA allocator in MiB.")
        lines.append("")
    for key, title, label in (("table", "wasserstein_1d", lambda r: f"{r['rows']}x{r['n']}"),
                              ("normalized", "normalized_wasserstein_1d",
                               lambda r: f"{r['batch']}x{r['channels']}x{r['n']}")):
        recs = results.get(key) or []
        if not recs:
            continue
        lines.append(f"| {title} | dtype | fused ms | torch ms | compile ms | vs torch | vs compile | "
                     "fused MiB | torch MiB | fused GB/s at min bytes | of copy bw |")
        lines.append("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for r in recs:
            im = r.get("impls", {})
            f, t, c = im.get("fused", {}), im.get("torch", {}), im.get("torch.compile", {})
            gbs = r.get("fused_gb_per_s_at_min_bytes")
            frac = f"{100 * gbs / copy_gbs:.0f} %" if gbs and copy_gbs else "-"
            lines.append(f"| {label(r)} | {r['dtype']} | {_ms(f)} | {_ms(t)} | {_ms(c)} | "
                         f"{_x(r.get('speedup_vs_torch'))} | {_x(r.get('speedup_vs_torch.compile'))} | "
                         f"{_mib(f)} | {_mib(t)} | {f'{gbs:.0f}' if gbs and gbs >= 10 else (f'{gbs:.2f}' if gbs else '-')} | {frac} |")
        lines.append("")
    pdl = results.get("pdl")
    if pdl:
        if "error" in pdl:
            lines.append(f"PDLLoss step: error: {pdl['error']}")
        else:
            lines.append(f"PDLLoss (VGG16, random weights) batch {pdl['batch']} of {pdl['size']}x{pdl['size']}, "
                         f"forward+backward: {pdl['whole_ms']:.2f} ms = backbone {pdl['backbone_ms']:.2f} ms + "
                         f"distance {pdl['distance_ms']:.2f} ms ({100 * pdl['distance_fraction']:.0f} %); extra peak "
                         f"{pdl['peak_extra_bytes_whole'] / 2**20:.0f} MiB (backbone alone "
                         f"{pdl['peak_extra_bytes_backbone'] / 2**20:.0f} MiB)")
        lines.append("")
    for note in results.get("notes", []):
        lines.append(f"- note: {note}")
    if results.get("interrupted"):
        lines.append("- note: the run was interrupted; the tables hold what was measured before")
    return "\n".join(lines).rstrip() + "\n"


# ----------------------------------------------------------------------------------------------
# Command line


def parse_shapes(text: str) -> List[Shape]:
    try:
        shapes = [(int(r), int(n)) for r, n in (part.lower().split("x") for part in text.split(","))]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--shapes: expected ROWSxN[,ROWSxN...], got {text!r}") from None
    if any(r < 1 or n < 1 or r % BATCH for r, n in shapes):
        raise argparse.ArgumentTypeError(f"--shapes: ROWS and N must be positive, ROWS a multiple of {BATCH}")
    return shapes


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n".join(__doc__.splitlines()[1:]))
    parser.add_argument("--quick", action="store_true",
                        help=f"shapes {', '.join(f'{r}x{n}' for r, n in QUICK_SHAPES)}, 5 repeats; the normalized op "
                             "in float32 only and without torch.compile")
    parser.add_argument("--shapes", type=parse_shapes, default=None, help="ROWSxN[,ROWSxN...] (default: VGG16's)")
    parser.add_argument("--dtypes", default=",".join(DTYPES), help="comma-separated (default float32,bfloat16)")
    parser.add_argument("--impls", default=",".join(IMPLS), help=f"comma-separated from {', '.join(IMPLS)}")
    parser.add_argument("--no-compile", action="store_true", help="leave torch.compile out")
    parser.add_argument("--no-normalized", action="store_true", help="skip the normalized op")
    parser.add_argument("--no-pdl", action="store_true", help="skip the PDLLoss step")
    parser.add_argument("--pdl-batch", type=int, default=8, help="images per PDLLoss step (default 8)")
    parser.add_argument("--pdl-size", type=int, default=256, help="image side of the PDLLoss step (default 256)")
    parser.add_argument("--repeats", type=int, default=None, help="timed calls per case (default 20, quick 5)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed calls first (default 3)")
    parser.add_argument("--json", type=Path, default=None, help="write the results here (after every section)")
    parser.add_argument("--markdown", type=Path, default=None, help="write the markdown tables here at the end")
    parser.add_argument("--summarize", type=Path, default=None, metavar="JSON",
                        help="print the markdown tables of a saved --json file and exit (no GPU needed)")
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if args.summarize is not None:
        print(markdown(json.loads(args.summarize.read_text())), end="")
        return 0
    reason = unavailable()
    if reason:
        print(f"bench_cuda: {reason}")
        return 1
    dtypes = [d.strip() for d in args.dtypes.split(",") if d.strip()]
    impl_names = [i.strip() for i in args.impls.split(",") if i.strip()]
    bad = [d for d in dtypes if d not in ("float32", "bfloat16", "float16", "float64")]
    bad += [i for i in impl_names if i not in IMPLS]
    if bad or "torch" not in impl_names:
        print(f"bench_cuda: unknown --dtypes/--impls {bad} (the 'torch' oracle is always needed)")
        return 2
    if args.no_compile:
        impl_names = [i for i in impl_names if i != "torch.compile"]
    repeats = args.repeats if args.repeats is not None else (5 if args.quick else 20)
    shapes = args.shapes or list(QUICK_SHAPES if args.quick else SHAPES)
    import torch

    results: Dict[str, Any] = {
        "machine": machine(),
        "settings": {"shapes": [list(s) for s in shapes], "dtypes": dtypes, "impls": impl_names, "repeats": repeats,
                     "warmup": args.warmup, "quick": args.quick,
                     "timing": "CUDA events around each forward+backward call (x requires grad, y not); median",
                     "memory": "torch.cuda.max_memory_allocated() during one step after reset_peak_memory_stats(), "
                               "minus memory_allocated() before it",
                     "min_bytes": "3 * element size per element of x: read x and y, write dx"},
        "copy": None, "table": [], "normalized": [], "pdl": None, "notes": [], "interrupted": False,
    }

    def save() -> None:
        if args.json is not None:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(results, indent=2) + "\n")

    m = results["machine"]
    log(f"bench_cuda: {m['gpu']} (sm {m['compute_capability']}, {m['multiprocessors']} SMs), torch {m['torch']}")
    start = time.perf_counter()
    try:
        log("  copy bandwidth ...")
        results["copy"] = copy_bandwidth(args.warmup, max(repeats, 10))
        torch.cuda.empty_cache()
        save()
        run_table(shapes, dtypes, impl_names, args.warmup, repeats, results["notes"], save, results)
        if not args.no_pdl:
            log(f"  PDLLoss vgg16 batch {args.pdl_batch} of {args.pdl_size}x{args.pdl_size} ...")
            try:
                results["pdl"] = run_pdl(args.pdl_batch, args.pdl_size, args.warmup, min(repeats, 10))
            except Exception as exc:  # noqa: BLE001 - keep the tables
                results["pdl"] = {"error": f"{type(exc).__name__}: {exc}"}
                results["notes"].append(f"PDLLoss step: {results['pdl']['error']}")
            save()
        if not args.no_normalized:
            # --quick: float32 only, and no torch.compile (its compilations cost more than the timings)
            run_normalized(shapes, dtypes[:1] if args.quick else dtypes,
                           [i for i in impl_names if not (args.quick and i == "torch.compile")], args.warmup,
                           repeats, results["notes"], save, results)
    except KeyboardInterrupt:
        results["interrupted"] = True
        results["notes"].append("interrupted (KeyboardInterrupt / SIGINT)")
    results["seconds"] = time.perf_counter() - start
    save()
    table = markdown(results)
    print(table, end="")
    if args.markdown is not None:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(table)
    return 130 if results["interrupted"] else 0


if __name__ == "__main__":
    sys.exit(main())
