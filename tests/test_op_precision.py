"""Precision of the fused ops where float32 accumulation would lose it, on every CPU path this processor runs.

- Rows of very different lengths (N != M): each atom of the shorter row gathers its gradient over up
  to max(N, M) / min(N, M) + 1 segments of the merged quantile grid. The kernels sum them in double
  (scalar walk of the radix and AVX2 paths, AVX-512 vector matching), so the gradient of a one-item
  row against 2^25 items is exact, not rounded away as a float32 sum of 2^25 terms would be.
- The per-row values are summed in double on every path.
- The per-position channel norms of the normalized op are read in the input's dtype and summed in
  double by a CPU kernel (no float64 copy of the features): the same values as the float64
  ``linalg_vector_norm`` it replaces.

Every expected value comes from the float64 pure-PyTorch reference (``pdl_ext.reference``).
"""
import os

import pytest
import torch

import pdl_ext
from pdl_ext import extension, reference

pytestmark = pytest.mark.skipif(not extension.COMPILED, reason="C++ extension not built")

PATH_ENV = "PDL_EXT_CPU_PATH"


def _path_now() -> str:
    return pdl_ext._C.cpu_path()


def _cpu_paths():
    """The CPU paths this processor runs: the vectorized ones it has, and the portable radix path."""
    if not extension.COMPILED:
        return []
    saved = os.environ.get(PATH_ENV)
    found = []
    try:
        for kind in ("avx512", "avx2", "radix"):
            os.environ[PATH_ENV] = kind
            if _path_now() == kind:
                found.append(kind)
    finally:
        if saved is None:
            os.environ.pop(PATH_ENV, None)
        else:
            os.environ[PATH_ENV] = saved
    return found


CPU_PATHS = _cpu_paths()


def _on_paths(monkeypatch, fn):
    """fn() on every CPU path here; {path: result}."""
    out = {}
    for kind in CPU_PATHS:
        monkeypatch.setenv(PATH_ENV, kind)
        assert _path_now() == kind
        out[kind] = fn()
    monkeypatch.delenv(PATH_ENV)
    return out


def _bits(t):
    ints = {torch.float64: torch.int64, torch.float32: torch.int32, torch.float16: torch.int16, torch.bfloat16: torch.int16}
    return t.view(ints[t.dtype])


def _grads(op, x, y, p, grad_x, grad_y):
    x = x.detach().clone().requires_grad_(grad_x)
    y = y.detach().clone().requires_grad_(grad_y)
    w = op(x, y, p)
    wanted = [t for t in (x, y) if t.requires_grad]
    return (w.detach(), *torch.autograd.grad(w.sum(), wanted))


def _check_unequal(monkeypatch, x, y, p, grad_x, grad_y):
    """The fused op on every path against the float64 reference of the same (rounded) inputs."""
    want = _grads(reference.wasserstein_1d, x.double(), y.double(), p, grad_x, grad_y)
    got = _on_paths(monkeypatch, lambda: _grads(torch.ops.pdl_ext.wasserstein_1d, x, y, p, grad_x, grad_y))
    for kind, res in got.items():
        torch.testing.assert_close(res[0].double(), want[0], rtol=1e-6, atol=0, msg=lambda m: f"{kind} value: {m}")
        for g, gw in zip(res[1:], want[1:]):
            # The float32 differences per pair are rounded (2^-24 relative, random in sign) and so is
            # the float32 result; the sums over an atom's segments add no error of their own.
            scale = gw.abs().max().item()
            torch.testing.assert_close(g.double(), gw, rtol=1e-6, atol=1e-7 * scale,
                                       msg=lambda m: f"{kind} p={p} gradient: {m}")
    first = next(iter(got.values()))
    for kind, res in got.items():  # one arithmetic on every path: the same gradient bits
        for a, b in zip(res[1:], first[1:]):
            assert torch.equal(_bits(a), _bits(b)), f"{kind}: gradient bits differ from {CPU_PATHS[0]}"


@pytest.mark.parametrize("p", [1, 2])
def test_one_item_against_2_to_the_16(monkeypatch, p):
    g = torch.Generator().manual_seed(p)
    x = torch.tensor([[10.0], [-3.0]])
    y = torch.rand(2, 2**16, generator=g)
    _check_unequal(monkeypatch, x, y, p, True, False)


@pytest.mark.parametrize("p", [1, 2])
@pytest.mark.parametrize("n,m", [(4, 2**18 + 3), (37, 2**18), (2**18 + 1, 5)])
def test_long_against_short_rows(monkeypatch, p, n, m):
    g = torch.Generator().manual_seed(n + m)
    x = torch.randn(2, n, generator=g)
    y = torch.randn(2, m, generator=g) * 1.5 + 0.25
    _check_unequal(monkeypatch, x, y, p, True, True)


@pytest.mark.parametrize("p", [1, 2])
def test_short_x_without_y_gradient_vector_match(monkeypatch, p):
    # x needs its gradient and y not: the loss case, which the vectorized paths match with vector code.
    g = torch.Generator().manual_seed(11)
    x = torch.randn(3, 24, generator=g)
    y = torch.randn(3, 2**18 + 11, generator=g)
    _check_unequal(monkeypatch, x, y, p, True, False)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_types_long_against_short(monkeypatch, dtype):
    g = torch.Generator().manual_seed(5)
    x = (torch.randn(2, 3, generator=g) * 2).to(dtype)
    y = torch.randn(2, 2**18, generator=g).to(dtype)
    want = _grads(reference.wasserstein_1d, x.double(), y.double(), 2, True, False)
    got = _on_paths(monkeypatch, lambda: _grads(torch.ops.pdl_ext.wasserstein_1d, x, y, 2, True, False))
    for kind, (w, gx) in got.items():
        torch.testing.assert_close(gx.double(), want[1], rtol=1e-2, atol=1e-3, msg=lambda m: f"{kind}: {m}")
        torch.testing.assert_close(w.double(), want[0], rtol=1e-2, atol=0)


@pytest.mark.slow
@pytest.mark.parametrize("p", [1, 2])
def test_one_item_against_2_to_the_25(monkeypatch, p):
    # float32 sums gave 0.5 (p=1) and 16.0 (p=2) here for 1.0 and 19.0.
    g = torch.Generator().manual_seed(0)
    x = torch.tensor([[10.0]])
    y = torch.rand(1, 2**25, generator=g)
    _check_unequal(monkeypatch, x, y, p, True, False)
    if p == 1:  # every segment of x is above y: the exact subgradient is 1
        for kind, (_, gx) in _on_paths(monkeypatch, lambda: _grads(pdl_ext.wasserstein_1d, x, y, 1, True, False)).items():
            assert gx.item() == 1.0, kind


@pytest.mark.slow
def test_four_items_against_4e6_with_y_gradient(monkeypatch):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1, 4, generator=g)
    y = torch.randn(1, 4_000_000, generator=g)
    _check_unequal(monkeypatch, x, y, 2, True, True)


@pytest.mark.slow
def test_2_to_the_25_against_one_item_y_gradient(monkeypatch):
    g = torch.Generator().manual_seed(2)
    x = torch.rand(1, 2**25, generator=g)
    y = torch.tensor([[-0.5]])
    _check_unequal(monkeypatch, x, y, 2, False, True)


# ---------------------------------------------------------------------------------------------
# Channel norms of the normalized op: a CPU kernel reads the features once in their dtype and sums
# the squares in double; no float64 copy of the (B, C, N) input is made.
# ---------------------------------------------------------------------------------------------
NORM_SHAPES = [(2, 3, 100), (2, 64, 1000), (1, 512, 4096), (3, 1000, 333), (2, 17, 1), (1, 1, 300)]


def _norms(x, y):
    _, _, _, nx, ny = torch.ops.pdl_ext.normalized_wasserstein_1d_fwd(x, y, 1, False, False)
    return nx, ny


@pytest.mark.parametrize("b,c,n", NORM_SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_channel_norms_have_the_bits_of_the_float64_formula(b, c, n, dtype):
    # The float64 sum rounded to float32: the same bits as the linalg_vector_norm(dtype=float64)
    # the op used before, and within float64 rounding of the reference's float64 sum.
    g = torch.Generator().manual_seed(c * n)
    x = (torch.randn(b, c, n, generator=g, dtype=torch.float64) * 3).to(dtype)
    y = torch.relu(torch.randn(b, c, 7, generator=g, dtype=torch.float64)).to(dtype)
    nx, ny = _norms(x, y)
    for f, got in ((x, nx), (y, ny)):
        assert got.dtype == torch.float32 and got.shape == (b, f.shape[2])
        old = torch.linalg.vector_norm(f, 2, (1,), False, dtype=torch.float64).to(torch.float32)
        assert torch.equal(_bits(got), _bits(old))
        ref = f.double().pow(2).sum(1).sqrt()  # pdl_ext.reference.channel_inv_norm's sum
        torch.testing.assert_close(got.double(), ref, rtol=2**-24, atol=0)


@pytest.mark.parametrize("b,c,n", NORM_SHAPES)
def test_channel_norms_float64(b, c, n):
    g = torch.Generator().manual_seed(c + n)
    x = torch.randn(b, c, n, generator=g, dtype=torch.float64) * 1e3
    y = torch.randn(b, c, 5, generator=g, dtype=torch.float64)
    nx, _ = _norms(x, y)
    assert nx.dtype == torch.float64
    # Sums in another order (torch's reductions) differ by a few float64 roundings.
    torch.testing.assert_close(nx, torch.linalg.vector_norm(x, 2, (1,), False), rtol=1e-14, atol=0)
    torch.testing.assert_close(nx, x.pow(2).sum(1).sqrt(), rtol=1e-14, atol=0)


def test_channel_norms_of_large_float32_features_do_not_overflow():
    # Squares of 1e20 overflow float32; their float64 sums do not.
    x = torch.full((1, 4, 6), 1e20)
    x[0, :, 1] = torch.tensor([3e38, -3e38, 1.0, 0.0])
    nx, _ = _norms(x, torch.ones(1, 4, 2))
    want = x.double().pow(2).sum(1).sqrt()
    assert torch.isinf(nx[0, 1]) and want[0, 1] > 3.4e38  # sqrt(2) * 3e38 is beyond float32: inf
    keep = [0, 2, 3, 4, 5]
    torch.testing.assert_close(nx[:, keep].double(), want[:, keep], rtol=2**-24, atol=0)


def test_channel_norms_make_no_float64_copy():
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    x = torch.rand(2, 64, 4096)
    y = torch.rand(2, 64, 4096)
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        torch.ops.pdl_ext.normalized_wasserstein_1d_fwd(x, y, 1, False, False)
    events = sorted((e for e in prof.profiler.kineto_results.events()
                     if e.name() == "[memory]" and e.device_type() == DeviceType.CPU), key=lambda e: e.start_ns())
    current = peak = 0
    for e in events:
        current += e.nbytes()
        peak = max(peak, current)
    # outputs: (B, C) values, (B, N) norms and inverse norms per side; a float64 copy of x is 4 MiB
    assert peak < x.numel() * 8 // 8, f"{peak} bytes allocated by torch during the forward"
