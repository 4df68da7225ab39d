"""`pdl-ext bench`: times the fused ``wasserstein_1d`` against pure PyTorch (and POT), and the whole PDLLoss.

What it measures, every number forward+backward with ``x`` requiring grad and ``y`` not:

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
import json
import re
from pathlib import Path
from typing import Any, Callable, Dict, List, Sequence

import torch


from .cases import (BASE, DEFAULT_IMPLS, FULL_SHAPES, IMPLEMENTATIONS, MEMORY_SHAPES, QUICK_SHAPES, SPEEDUP_TARGETS, VARIANTS,
                    Shape, Variant, machine_info, make_inputs, pure_torch_wasserstein_1d, run_pdl, run_table, step,
                    time_rounds, unavailable_reason)
from .cases import MEMORY_METHOD, _log
from .memory import attach_memory, measure_memory, memory_supported
from .report import print_report, write_plot

__all__ = ["BASE", "DEFAULT_IMPLS", "FULL_SHAPES", "IMPLEMENTATIONS", "QUICK_SHAPES", "SPEEDUP_TARGETS", "VARIANTS",
           "Shape", "Variant", "add_arguments", "attach_memory", "machine_info", "make_inputs", "measure_memory",
           "memory_supported", "parse_shapes", "print_report", "pure_torch_wasserstein_1d", "run", "run_pdl", "run_table",
           "step", "time_rounds", "unavailable_reason", "write_plot"]

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
                        help="comma-separated ROWSxN (default: the VGG16 feature-row table)")
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
              f"cpu_path={ext.get('cpu_path')}")
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
        memory_only: List[Dict[str, Any]] = []
        if not args.no_memory and not args.quick and "fused" in impls:
            memory_only = [{"impl": "fused", "rows": r, "n": n, "m": n, "dtype": "float32", "p": 1,
                            "variant": BASE.name} for r, n in MEMORY_SHAPES]
            attach_memory(memory_only, torch.get_num_threads(), notes)
        pdl = None
        if not args.no_pdl:
            batch, size = (1, 32) if args.quick else (2, 128)
            _log(f"  PDLLoss vgg16 batch {batch} of {size}x{size} ...")
            pdl = run_pdl(batch, size, args.warmup, min(repeats, 2) if args.quick else repeats)
        print_report(records, pdl, notes, settings, memory_only)

        json_path = args.json or args.out / "bench.json"
        plot_path = args.plot or args.out / "bench.png"
        json_path.parent.mkdir(parents=True, exist_ok=True)
        result = {"machine": info, "settings": settings, "memory_method": MEMORY_METHOD, "results": records, "memory_only": memory_only,
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
