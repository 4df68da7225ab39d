"""GPU speed of the fused wasserstein_1d against pure PyTorch sort-and-match (torch.sort + autograd).

Forward+backward as a loss runs it (x requires grad, y does not), and the forward alone, timed with
CUDA events over --repeats calls after a warm-up; extra peak memory from torch.cuda's allocator
statistics, in bytes per element of x. Every case first checks that both compute the same values.

    python benchmarks/bench_cuda.py                          # the shapes of issue 2/4, float32, p=1
    python benchmarks/bench_cuda.py --shapes 256x65536,2048x256 --dtype bfloat16 --p 2 --repeats 50

Without a GPU (or without a CUDA build of pdl_ext._C) it says so and exits 0.
"""
from __future__ import annotations

import argparse
import sys
from typing import Callable, List, Tuple

import torch

SHAPES: Tuple[Tuple[int, int], ...] = ((256, 65536), (512, 16384), (256, 16384), (1024, 4096), (1024, 1024),
                                       (2048, 1024), (2048, 256), (8192, 64))


def pure_torch(x: torch.Tensor, y: torch.Tensor, p: int) -> torch.Tensor:
    """The baseline: torch.sort both rows, match, mean |d|^p; autograd differentiates."""
    d = torch.sort(x, dim=-1).values - torch.sort(y, dim=-1).values
    return (d.abs() if p == 1 else d * d).mean(-1)


def fused(x: torch.Tensor, y: torch.Tensor, p: int) -> torch.Tensor:
    from pdl_ext.ops import wasserstein_1d

    return wasserstein_1d(x, y, p)


def cuda_time_ms(fn: Callable[[], object], warmup: int, repeats: int) -> float:
    """Mean milliseconds per call of fn, between CUDA events on the current stream."""
    for _ in range(warmup):
        fn()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(repeats):
        fn()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / repeats


def peak_extra_bytes(fn: Callable[[], object]) -> int:
    """Peak bytes allocated by torch's CUDA allocator during fn() above what was allocated before."""
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - before


def parse_shapes(text: str) -> List[Tuple[int, int]]:
    try:
        return [(int(r), int(n)) for r, n in (part.lower().split("x") for part in text.split(","))]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--shapes: expected ROWSxN[,ROWSxN...], got {text!r}") from None


def main(argv: List[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", type=parse_shapes, default=list(SHAPES), help="ROWSxN[,ROWSxN...]")
    parser.add_argument("--dtype", choices=["float32", "float64", "float16", "bfloat16"], default="float32")
    parser.add_argument("--p", type=int, choices=[1, 2], default=1)
    parser.add_argument("--repeats", type=int, default=20, help="timed calls per measurement")
    parser.add_argument("--warmup", type=int, default=3, help="untimed calls first")
    args = parser.parse_args(argv)

    import pdl_ext

    info = pdl_ext.extension_info()
    if not torch.cuda.is_available() or not info.get("cuda"):
        print(f"bench_cuda: skipped, needs a GPU and pdl_ext._C built with CUDA "
              f"(cuda_available={torch.cuda.is_available()}, pdl_ext cuda={info.get('cuda')})")
        return 0
    dev = torch.device("cuda")
    dtype = getattr(torch, args.dtype)
    print(f"GPU: {torch.cuda.get_device_name(dev)}; torch {torch.__version__} (CUDA {torch.version.cuda}); "
          f"{args.dtype}, p={args.p}, mean of {args.repeats} calls after {args.warmup} warm-up (CUDA events)")
    header = (f"{'rows x N':>12} {'fused fwd+bwd':>14} {'torch fwd+bwd':>14} {'speedup':>8} "
              f"{'fused fwd':>10} {'torch fwd':>10} {'speedup':>8} {'fused B/el':>10} {'torch B/el':>10}")
    print(header)
    print("-" * len(header))
    for rows, n in args.shapes:
        g = torch.Generator(device=dev).manual_seed(0)
        x = torch.randn(rows, n, device=dev, dtype=dtype, generator=g).requires_grad_(True)
        y = torch.randn(rows, n, device=dev, dtype=dtype, generator=g)
        with torch.no_grad():
            a, b = fused(x, y, args.p).double(), pure_torch(x.double(), y.double(), args.p)
        err = ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()
        if err > (1e-4 if dtype in (torch.float32, torch.float64) else 2e-2):
            print(f"{rows:>5} x {n:<6} fused differs from torch.sort by {err:.2e} (relative): not timed")
            continue
        times, mems = [], []
        for impl in (fused, pure_torch):

            def step(impl=impl) -> None:
                x.grad = None
                impl(x, y, args.p).sum().backward()

            def forward(impl=impl) -> None:
                with torch.no_grad():
                    impl(x, y, args.p)

            times.append((cuda_time_ms(step, args.warmup, args.repeats), cuda_time_ms(forward, args.warmup, args.repeats)))
            x.grad = None
            mems.append(peak_extra_bytes(step) / x.numel())
        (f_step, f_fwd), (t_step, t_fwd) = times
        print(f"{rows:>5} x {n:<6} {f_step:>11.3f} ms {t_step:>11.3f} ms {t_step / f_step:>7.2f}x "
              f"{f_fwd:>7.3f} ms {t_fwd:>7.3f} ms {t_fwd / f_fwd:>7.2f}x {mems[0]:>10.1f} {mems[1]:>10.1f}")
        del x, y
        torch.cuda.empty_cache()
    print("B/el: extra peak bytes of torch's CUDA allocator per element of x during one forward+backward "
          "(x.grad included)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
