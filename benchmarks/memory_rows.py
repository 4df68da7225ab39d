"""Extra peak memory per element of x of the fused op, forward+backward, for few long rows and many rows.

    python benchmarks/memory_rows.py                      # 1 x 2^26 and 64 x 2^20, float32, p=1
    python benchmarks/memory_rows.py --shapes 1x67108869 --dtype float64 --m-ratio 0.75
    PDL_EXT_CPU_PATH=radix python benchmarks/memory_rows.py

The method is `pdl-ext bench`'s: each step runs in a fresh worker process with glibc's mmap threshold
pinned (MALLOC_MMAP_THRESHOLD_=65536, so freed buffers go back to the OS); the peak resident set size
(VmHWM, reset through /proc/self/clear_refs just before the step) minus the resident size before it is
the extra peak, which counts x.grad and the kernels' scratch outside torch's allocator. x requires
grad, y does not (a loss), as in the benchmark table. Linux only.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _status_bytes(key: str) -> int:
    with open("/proc/self/status") as f:
        return int(re.search(rf"^{key}:\s+(\d+) kB", f.read(), re.M).group(1)) * 1024


def _worker(rows: int, n: int, m: int, dtype: str, p: int, threads: int) -> None:
    import torch

    import pdl_ext

    torch.set_num_threads(threads)
    dt = getattr(torch, dtype)

    def step(x, y):
        x.grad = None
        pdl_ext.wasserstein_1d(x, y, p).sum().backward()

    g = torch.Generator().manual_seed(0)
    step(torch.randn(4, 64, dtype=dt).requires_grad_(), torch.randn(4, max(1, 64 * m // n), dtype=dt))  # warm-up
    x = torch.randn(rows, n, generator=g, dtype=dt).requires_grad_()
    y = torch.randn(rows, m, generator=g, dtype=dt)
    gc.collect()
    before = _status_bytes("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current RSS
    step(x, y)
    extra = _status_bytes("VmHWM") - before
    print(json.dumps({"rows": rows, "n": n, "m": m, "bytes": extra, "per_elem": extra / x.numel(),
                      "path": pdl_ext.extension_info().get("cpu_path", pdl_ext.extension_info().get("cpu_sort"))}))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", default=f"1x{2**26},64x{2**20}", help="ROWSxN[,ROWSxN...]")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--p", type=int, default=1)
    ap.add_argument("--m-ratio", type=float, default=1.0, help="M / N")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--worker", nargs=6, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        r, n, m, dt, p, t = args.worker
        _worker(int(r), int(n), int(m), dt, int(p), int(t))
        return 0
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    print("| rows x N | M | dtype | path | extra peak B/el |")
    print("|---|---:|---|---|---:|")
    for shape in args.shapes.split(","):
        rows, n = (int(v) for v in shape.lower().split("x"))
        m = max(1, round(n * args.m_ratio))
        proc = subprocess.run([sys.executable, __file__, "--worker", str(rows), str(n), str(m), args.dtype,
                               str(args.p), str(args.threads)], capture_output=True, text=True, env=env)
        if proc.returncode != 0:
            print(f"| {rows} x {n} | {m} | {args.dtype} | failed: {proc.stderr.strip().splitlines()[-1:]} | |")
            continue
        res = json.loads(proc.stdout.strip().splitlines()[-1])
        print(f"| {rows} x {n} | {m} | {args.dtype} | {res['path']} | {res['per_elem']:.2f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
