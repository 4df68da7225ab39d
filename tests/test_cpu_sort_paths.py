"""The paths of the CPU kernels: vectorized (AVX-512 or AVX2) and portable (radix sort, scalar matching).

With AVX-512 or AVX2 the kernels sort short rows with the vectorized merge sort (csrc/cpu/simd_sort_impl.h),
long float32 rows one by one with the radix sort, float64 rows by their float32-rounded keys and then by
value, and match the rows of a loss (x needs its gradient, y not) with vector code. The environment
variable ``PDL_EXT_CPU_PATH`` (auto | avx512 | avx2 | radix) picks a path. Every path must give the same
sorted order, so the same gradients bit for bit and the same distances up to the order of the float64
summation, and all must agree with the pure-PyTorch reference.
"""
import os

import pytest
import torch

import pdl_ext
from pdl_ext import extension, reference

pytestmark = pytest.mark.skipif(not extension.COMPILED, reason="C++ extension not built")


def _cpu_sort() -> str:
    return pdl_ext._C.cpu_sort() if extension.COMPILED else "none"


def _simd_kinds():
    """The vectorized paths this processor runs."""
    if not extension.COMPILED:
        return []
    saved = os.environ.get("PDL_EXT_CPU_PATH")
    kinds = []
    try:
        for kind in ("avx512", "avx2"):
            os.environ["PDL_EXT_CPU_PATH"] = kind
            if _cpu_sort() == kind:
                kinds.append(kind)
    finally:
        if saved is None:
            os.environ.pop("PDL_EXT_CPU_PATH", None)
        else:
            os.environ["PDL_EXT_CPU_PATH"] = saved
    return kinds


SIMD_KINDS = _simd_kinds()
simd_kind = pytest.mark.parametrize(
    "kind", SIMD_KINDS or [pytest.param("none", marks=pytest.mark.skip(reason="no AVX-512 or AVX2 here"))])


def _run(x, y, p, grad_x, grad_y, op=pdl_ext.wasserstein_1d):
    x = x.detach().clone().requires_grad_(grad_x)
    y = y.detach().clone().requires_grad_(grad_y)
    w = op(x, y, p)
    g = torch.linspace(0.5, 1.5, w.numel(), dtype=torch.float64).reshape(w.shape).to(w.dtype)
    wanted = [t for t in (x, y) if t.requires_grad]
    grads = torch.autograd.grad(w, wanted, g)
    return w.detach(), grads


def _bits(t):
    """The tensor's bit patterns (so that -0.0 and +0.0 differ, unlike torch.equal on floats)."""
    ints = {torch.float64: torch.int64, torch.float32: torch.int32, torch.float16: torch.int16, torch.bfloat16: torch.int16}
    return t.view(ints[t.dtype])


def _both_paths(monkeypatch, kind, *args, **kwargs):
    monkeypatch.setenv("PDL_EXT_CPU_PATH", kind)
    assert _cpu_sort() == kind
    fast = _run(*args, **kwargs)
    monkeypatch.setenv("PDL_EXT_CPU_PATH", "radix")
    assert _cpu_sort() == "radix"
    slow = _run(*args, **kwargs)
    monkeypatch.delenv("PDL_EXT_CPU_PATH")
    return fast, slow


def _data(kind, rows, n, m, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    if kind == "normal":
        x, y = torch.randn(rows, n, generator=g), torch.randn(rows, m, generator=g) * 1.3 + 0.2
    elif kind == "ties":  # few distinct values, both signs of zero: the order among ties is by position
        x = torch.randint(-2, 3, (rows, n), generator=g).float() * 0.5
        y = torch.randint(-1, 2, (rows, m), generator=g).float()
        x[x == 0] = torch.where(torch.rand(int((x == 0).sum()), generator=g) < 0.5, -0.0, 0.0)
    elif kind == "relu":  # like CNN features: half exact zeros, the rest positive, some inf
        x = torch.relu(torch.randn(rows, n, generator=g))
        y = torch.relu(torch.randn(rows, m, generator=g) + 0.1)
        x[0, : min(n, 2)] = float("inf")
    else:
        raise ValueError(kind)
    return x.to(dtype), y.to(dtype)


# Row lengths around every block size of the merge sorts (8 and 16 lanes for AVX-512, 4 and 8 for AVX2,
# blocks of up to 8 vectors, runs that do not pair up) and the switches to the radix sort (64-bit items
# above 2048 / 1024, 32-bit keys above 8192 / 4096).
LENGTHS = [1, 2, 7, 8, 9, 15, 16, 17, 31, 33, 63, 64, 65, 127, 128, 129, 200, 255, 256, 257, 1000, 1024, 1025, 2048,
           2049, 4095, 4096, 4097, 8193, 20000]


@simd_kind
@pytest.mark.parametrize("n", LENGTHS)
@pytest.mark.parametrize("data", ["normal", "ties", "relu"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_vectorized_and_radix_agree_for_a_loss(monkeypatch, kind, n, data, dtype):
    rows = 3 if n > 1000 else 9
    x, y = _data(data, rows, n, n, dtype, seed=n)
    for p in (1, 2):
        (w, (gx,)), (w_r, (gx_r,)) = _both_paths(monkeypatch, kind, x, y, p, True, False)
        assert torch.equal(_bits(gx), _bits(gx_r)), f"{kind} n={n} {data} p={p}: gradients differ between the paths"
        torch.testing.assert_close(w, w_r, rtol=1e-6, atol=0, equal_nan=True)
        w_ref, (gx_ref,) = _run(x.double(), y.double(), p, True, False, op=reference.wasserstein_1d)
        torch.testing.assert_close(w.double(), w_ref, rtol=1e-5, atol=1e-6, equal_nan=True)
        torch.testing.assert_close(gx.double(), gx_ref, rtol=1e-5, atol=1e-7, equal_nan=True)


@simd_kind
@pytest.mark.parametrize("n,m", [(64, 64), (100, 37), (37, 100), (1024, 1000), (3000, 4096), (5000, 4097)])
@pytest.mark.parametrize("grads", [(True, True), (False, True), (True, False)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_vectorized_and_radix_agree_for_every_gradient_and_dtype(monkeypatch, kind, n, m, grads, dtype):
    x, y = _data("ties" if n == 100 else "normal", 4, n, m, dtype, seed=n + 7 * m)
    (w, g), (w_r, g_r) = _both_paths(monkeypatch, kind, x, y, 1, *grads)
    for a, b in zip(g, g_r):
        assert torch.equal(_bits(a), _bits(b))
    torch.testing.assert_close(w, w_r, rtol=1e-6 if dtype in (torch.float32, torch.float64) else 1e-3, atol=0)
    w_ref, g_ref = _run(x.double(), y.double(), 1, *grads, op=reference.wasserstein_1d)
    tol = dict(rtol=1e-5, atol=1e-6) if dtype in (torch.float32, torch.float64) else dict(rtol=2e-2, atol=2e-3)
    torch.testing.assert_close(w.double(), w_ref, **tol)
    for a, b in zip(g, g_ref):
        torch.testing.assert_close(a.double(), b, **tol)


@simd_kind
@pytest.mark.parametrize("n", [5, 64, 300, 4096])
def test_vectorized_nan_rows_are_nan(monkeypatch, kind, n):
    x, y = _data("normal", 4, n, n, torch.float32, seed=3)
    x[1, n // 2] = float("nan")
    y[2, n - 1] = float("nan")
    (w, (gx,)), (w_r, (gx_r,)) = _both_paths(monkeypatch, kind, x, y, 1, True, False)
    assert torch.isnan(w[1:3]).all() and not torch.isnan(w[[0, 3]]).any()
    assert torch.isnan(gx[1:3]).all() and not torch.isnan(gx[[0, 3]]).any()
    assert torch.equal(_bits(gx.nan_to_num()), _bits(gx_r.nan_to_num()))


@simd_kind
@pytest.mark.parametrize("n,m", [(49, 49), (256, 200)])
def test_vectorized_and_radix_agree_for_the_normalized_op(monkeypatch, kind, n, m):
    g = torch.Generator().manual_seed(n)
    x = torch.relu(torch.randn(2, 5, n, generator=g))
    y = torch.relu(torch.randn(2, 5, m, generator=g))
    (w, (gx,)), (w_r, (gx_r,)) = _both_paths(monkeypatch, kind, x, y, 2, True, False, op=pdl_ext.normalized_wasserstein_1d)
    assert torch.equal(_bits(gx), _bits(gx_r))
    torch.testing.assert_close(w, w_r, rtol=1e-6, atol=0)


def test_cpu_sort_is_reported_and_can_be_forced(monkeypatch):
    monkeypatch.setenv("PDL_EXT_CPU_PATH", "radix")
    assert pdl_ext.extension_info()["cpu_sort"] == "radix"
    monkeypatch.setenv("PDL_EXT_CPU_PATH", "auto")
    assert pdl_ext.extension_info()["cpu_sort"] == (SIMD_KINDS + ["radix"])[0]
    monkeypatch.setenv("PDL_EXT_CPU_PATH", "fastest")
    with pytest.raises(RuntimeError, match="PDL_EXT_CPU_PATH must be auto, avx512, avx2 or radix, got 'fastest'"):
        pdl_ext.wasserstein_1d(torch.rand(2, 3), torch.rand(2, 3))
    with pytest.raises(ValueError, match="PDL_EXT_CPU_PATH must be"):
        pdl_ext._C.cpu_sort()


@simd_kind
@pytest.mark.parametrize("n", [5, 40, 300, 3000, 5000])
def test_float64_values_that_round_alike_in_float32(monkeypatch, kind, n):
    # The float64 path sorts by the float32-rounded key, then re-sorts runs of equal float32 keys by
    # the float64 value: runs of values 1e-12 apart, beyond float32's range (inf) and below it (0).
    g = torch.Generator().manual_seed(n)
    base = torch.tensor([1.0, -3.0, 1e300, -1e250, 1e-300, -1e-310, 0.0, -0.0], dtype=torch.float64)
    pick = torch.randint(0, len(base), (4, n), generator=g)
    x = base[pick] * (1 + torch.randint(-40, 40, (4, n), generator=g).double() * 1e-12)
    y = base[torch.randint(0, len(base), (4, n), generator=g)] * (1 + torch.rand(4, n, generator=g, dtype=torch.float64) * 1e-11)
    assert (x.float().unique().numel() < x.unique().numel())  # many float64 values share a float32 key
    for p in (1, 2):
        (w, g_fast), (w_r, g_radix) = _both_paths(monkeypatch, kind, x, y, p, True, True)
        for a, b in zip(g_fast, g_radix):
            assert torch.equal(_bits(a), _bits(b))
        torch.testing.assert_close(w, w_r, rtol=1e-12, atol=0, equal_nan=True)
        w_ref, g_ref = _run(x, y, p, True, True, op=reference.wasserstein_1d)
        torch.testing.assert_close(w, w_ref, rtol=1e-12, atol=0, equal_nan=True)
        for a, b in zip(g_fast, g_ref):  # atol: subnormal gradients of p=2 round differently
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-300, equal_nan=True)
