"""CI check: every pdl_ext op with a CPU kernel also has a CUDA kernel, and the build says it has CUDA.

Run against a FORCE_CUDA=1 build (no GPU needed): `python .ci/check_cuda_registration.py`.
Exits 1 and lists the ops that lack a CUDA kernel.
"""
from __future__ import annotations

import sys

import torch

import pdl_ext


def main() -> int:
    info = pdl_ext.extension_info()
    print(f"pdl_ext loaded from {pdl_ext.__file__}")
    print(f"extension_info: {info}")
    ops = sorted(n for n in torch._C._dispatch_get_all_op_names() if n.startswith("pdl_ext::"))
    has = torch._C._dispatch_has_kernel_for_dispatch_key
    with_cpu = [op for op in ops if has(op, "CPU")]
    missing = [op for op in with_cpu if not has(op, "CUDA")]
    for op in ops:
        keys = [k for k in ("CPU", "CUDA") if has(op, k)]
        print(f"  {op}: {', '.join(keys) if keys else 'composite'}")
    failed = False
    if not with_cpu:
        print("FAIL: no pdl_ext op has a CPU kernel (is the extension loaded?)")
        failed = True
    if missing:
        print("FAIL: ops with a CPU kernel but no CUDA kernel: " + ", ".join(missing))
        failed = True
    if info.get("cuda") is not True:
        print(f"FAIL: extension_info()['cuda'] is {info.get('cuda')!r}, expected True")
        failed = True
    if failed:
        return 1
    print(f"OK: {len(with_cpu)} op(s) with a CPU kernel all have a CUDA kernel")
    return 0


if __name__ == "__main__":
    sys.exit(main())
