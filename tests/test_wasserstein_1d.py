"""The fused wasserstein_1d op against the pure-PyTorch reference, numpy/scipy, gradcheck and opcheck."""
import numpy as np
import pytest
import scipy.stats
import torch

import pdl_ext
from pdl_ext import extension, reference

requires_ext = pytest.mark.skipif(not extension.COMPILED, reason="C++ extension not built")

# Row lengths that visit every sort path of the CPU kernel: insertion (<= 32), 8-bit radix (<= 4096),
# 11-bit radix (longer), and unequal lengths (the merged quantile grid).
SHAPES = [
    (3, 1, 1),
    (4, 1, 7),
    (2, 9, 1),
    (5, 2, 2),
    (3, 31, 31),
    (3, 32, 33),
    (2, 100, 100),
    (2, 100, 37),
    (2, 4096, 4096),
    (2, 4097, 4097),
    (2, 5000, 3001),
    (1, 20000, 20000),
]


def _grads(fn, x, y, p, seed=0):
    x = x.detach().clone().requires_grad_(True)
    y = y.detach().clone().requires_grad_(True)
    w = fn(x, y, p)
    g = torch.randn(w.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(w.dtype)
    gx, gy = torch.autograd.grad(w, (x, y), g)
    return w.detach(), gx, gy


def _inputs(r, n, m, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(r, n, generator=g, dtype=torch.float64)
    y = torch.randn(r, m, generator=g, dtype=torch.float64) * 1.5 + 0.25
    return x.to(dtype), y.to(dtype)


@pytest.mark.parametrize("r,n,m", SHAPES)
@pytest.mark.parametrize("p", [1, 2])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_matches_reference(r, n, m, p, dtype):
    x, y = _inputs(r, n, m, dtype, seed=n * 131 + m)
    w, gx, gy = _grads(pdl_ext.wasserstein_1d, x, y, p)
    wr, gxr, gyr = _grads(reference.wasserstein_1d, x, y, p)
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == torch.float32 else dict(rtol=1e-12, atol=1e-13)
    torch.testing.assert_close(w, wr, **tol)
    torch.testing.assert_close(gx, gxr, **tol)
    torch.testing.assert_close(gy, gyr, **tol)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("r,n,m", [(4, 64, 64), (3, 300, 200), (2, 5000, 5000)])
@pytest.mark.parametrize("p", [1, 2])
def test_low_precision_accumulates_in_float32(dtype, r, n, m, p):
    x, y = _inputs(r, n, m, dtype, seed=n + m)
    w, gx, gy = _grads(pdl_ext.wasserstein_1d, x, y, p)
    assert w.dtype == dtype and gx.dtype == dtype
    # The float32 result of the same (rounded) values, then rounded once.
    wr, gxr, gyr = _grads(reference.wasserstein_1d, x.float(), y.float(), p)
    torch.testing.assert_close(w.float(), wr, rtol=1e-2, atol=1e-3)
    torch.testing.assert_close(gx.float(), gxr, rtol=1e-2, atol=1e-5)
    torch.testing.assert_close(gy.float(), gyr, rtol=1e-2, atol=1e-5)


def _numpy_wasserstein(u, v, p):
    """W_p^p from numpy's inverse ECDF (np.quantile, inverted_cdf) on the merged breakpoint grid."""
    n, m = len(u), len(v)
    t = np.union1d(np.arange(n + 1) / n, np.arange(m + 1) / m)
    mid = (t[1:] + t[:-1]) / 2
    qu = np.quantile(u, mid, method="inverted_cdf")
    qv = np.quantile(v, mid, method="inverted_cdf")
    return float(np.sum(np.diff(t) * np.abs(qu - qv) ** p))


@pytest.mark.parametrize("n,m", [(1, 1), (5, 5), (7, 3), (64, 100), (1000, 999)])
def test_matches_scipy_and_numpy(n, m):
    x, y = _inputs(3, n, m, torch.float64, seed=7 * n + m)
    w1 = pdl_ext.wasserstein_1d(x, y, 1)
    w2 = pdl_ext.wasserstein_1d(x, y, 2)
    for r in range(3):
        u, v = x[r].numpy(), y[r].numpy()
        assert w1[r].item() == pytest.approx(scipy.stats.wasserstein_distance(u, v), rel=1e-12, abs=1e-14)
        assert w1[r].item() == pytest.approx(_numpy_wasserstein(u, v, 1), rel=1e-12, abs=1e-14)
        assert w2[r].item() == pytest.approx(_numpy_wasserstein(u, v, 2), rel=1e-12, abs=1e-14)


@pytest.mark.parametrize("n,m", [(50, 50), (40, 25), (3000, 3000)])
@pytest.mark.parametrize("p", [1, 2])
def test_heavy_ties_match_reference(n, m, p):
    # Few distinct values: every row is full of ties, and -0.0 and +0.0 are mixed in.
    g = torch.Generator().manual_seed(n + m)
    x = torch.randint(-3, 4, (6, n), generator=g).double() / 2
    y = torch.randint(-2, 3, (6, m), generator=g).double() / 2
    x[x == 0] = torch.where(torch.rand(int((x == 0).sum()), generator=g) < 0.5, -0.0, 0.0).double()
    w, gx, gy = _grads(pdl_ext.wasserstein_1d, x, y, p)
    wr, gxr, gyr = _grads(reference.wasserstein_1d, x, y, p)
    torch.testing.assert_close(w, wr, rtol=1e-12, atol=1e-13)
    torch.testing.assert_close(gx, gxr, rtol=1e-12, atol=1e-13)
    torch.testing.assert_close(gy, gyr, rtol=1e-12, atol=1e-13)


def test_p1_subgradient_is_zero_at_equal_atoms():
    x = torch.tensor([[1.0, 2.0, 3.0]], requires_grad=True)
    y = torch.tensor([[3.0, 2.0, 0.0]])
    pdl_ext.wasserstein_1d(x, y, 1).sum().backward()
    # sorted pairs: (1, 0) -> +1/3, (2, 2) -> 0, (3, 3) -> 0
    assert x.grad.tolist() == [[pytest.approx(1 / 3), 0.0, 0.0]]


@pytest.mark.parametrize("p", [1, 2])
def test_non_contiguous_and_leading_dims(p):
    base_x = torch.randn(4, 6, 50, dtype=torch.float64)
    base_y = torch.randn(6, 4, 80, dtype=torch.float64)
    x = base_x.transpose(0, 1)[:, :, ::2]  # (6, 4, 25), strided
    y = base_y[:, :, 1::2]  # (6, 4, 40)
    assert not x.is_contiguous() and not y.is_contiguous()
    w, gx, gy = _grads(pdl_ext.wasserstein_1d, x, y, p)
    wr, gxr, gyr = _grads(reference.wasserstein_1d, x.contiguous(), y.contiguous(), p)
    assert w.shape == (6, 4)
    torch.testing.assert_close(w, wr)
    torch.testing.assert_close(gx, gxr)
    torch.testing.assert_close(gy, gyr)


def test_one_dimensional_input_gives_scalar():
    x, y = torch.randn(10), torch.randn(12)
    w = pdl_ext.wasserstein_1d(x, y)
    assert w.shape == ()
    assert w.item() == pytest.approx(scipy.stats.wasserstein_distance(x.numpy(), y.numpy()), rel=1e-5)


def test_empty_leading_shape():
    x, y = torch.randn(0, 3, 5, requires_grad=True), torch.randn(0, 3, 4)
    w = pdl_ext.wasserstein_1d(x, y)
    assert w.shape == (0, 3)
    w.sum().backward()
    assert x.grad.shape == x.shape


@pytest.mark.parametrize("p", [1, 2])
@pytest.mark.parametrize("n,m", [(6, 6), (7, 4), (1, 5)])
def test_gradcheck(p, n, m):
    # Distinct, well-separated values: no ties, so the function is differentiable at the point.
    g = torch.Generator().manual_seed(n * 10 + m)
    x = (torch.randperm(n, generator=g).double() + 0.1 * torch.rand(n, generator=g, dtype=torch.float64)).repeat(3, 1)
    y = (torch.randperm(m, generator=g).double() * 1.3 + 0.05).repeat(3, 1) + torch.arange(3).unsqueeze(1) * 0.01
    x.requires_grad_(True)
    y.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda a, b: pdl_ext.wasserstein_1d(a, b, p), (x, y), eps=1e-6, atol=1e-6)


@requires_ext
@pytest.mark.parametrize("grad_x,grad_y", [(True, False), (False, True), (True, True), (False, False)])
def test_opcheck_fwd(grad_x, grad_y):
    x = torch.randn(3, 4, 17, requires_grad=grad_x)
    y = torch.randn(3, 4, 11, requires_grad=grad_y)
    torch.library.opcheck(torch.ops.pdl_ext.wasserstein_1d_fwd, (x, y, 1, grad_x, grad_y))
    torch.library.opcheck(torch.ops.pdl_ext.wasserstein_1d_fwd, (x.double(), y.double(), 2, grad_x, grad_y))


@requires_ext
def test_opcheck_composite_and_backward():
    x = torch.randn(5, 33, requires_grad=True)
    y = torch.randn(5, 33)
    torch.library.opcheck(torch.ops.pdl_ext.wasserstein_1d, (x, y, 2))
    torch.library.opcheck(torch.ops.pdl_ext.wasserstein_1d_bwd, (torch.randn(5), torch.randn(5, 33)))


@requires_ext
def test_fwd_skips_unwanted_gradients():
    x, y = torch.randn(2, 9), torch.randn(2, 9)
    loss, dx, dy = torch.ops.pdl_ext.wasserstein_1d_fwd(x, y, 1, True, False)
    assert dx.shape == x.shape and dy.numel() == 0
    torch.testing.assert_close(loss, reference.wasserstein_1d(x, y, 1))


def test_torch_compile_fullgraph():
    torch._dynamo.reset()

    def loss_fn(a, b):
        return pdl_ext.wasserstein_1d(a * 2.0, b, 1).mean()

    compiled = torch.compile(loss_fn, fullgraph=True, backend="aot_eager")
    x = torch.randn(4, 40, requires_grad=True)
    y = torch.randn(4, 30)
    out = compiled(x, y)
    out.backward()
    x2 = x.detach().clone().requires_grad_(True)
    ref = reference.wasserstein_1d(x2 * 2.0, y, 1).mean()
    ref.backward()
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(x.grad, x2.grad)


def test_deterministic_bits_and_threads():
    x, y = _inputs(64, 3000, 2000, torch.float32, seed=3)
    x[:, ::7] = 0.5  # ties
    prev = torch.get_num_threads()
    try:
        outs = []
        for threads in (1, 2, 2):
            torch.set_num_threads(threads)
            outs.append(_grads(pdl_ext.wasserstein_1d, x, y, 1))
    finally:
        torch.set_num_threads(prev)
    for other in outs[1:]:
        for a, b in zip(outs[0], other):
            assert torch.equal(a, b)


@pytest.mark.parametrize("n,m", [(20, 20), (20, 13)])
def test_nan_poisons_only_its_row(n, m):
    x, y = _inputs(3, n, m, torch.float32)
    x[1, 4] = float("nan")
    y[2, 0] = float("nan")
    w, gx, gy = _grads(pdl_ext.wasserstein_1d, x, y, 1)
    assert torch.isnan(w[1]) and torch.isnan(w[2]) and torch.isfinite(w[0])
    assert torch.isnan(gx[1:]).all() and torch.isnan(gy[1:]).all()
    wr, gxr, gyr = _grads(reference.wasserstein_1d, x[:1], y[:1], 1)
    torch.testing.assert_close(w[:1], wr)
    torch.testing.assert_close(gx[:1], gxr)


def test_infinities_follow_ieee():
    x = torch.tensor([[float("inf"), 0.0, 1.0], [float("-inf"), 0.0, 1.0]])
    y = torch.tensor([[float("inf"), 0.0, 1.0], [2.0, 0.0, 1.0]])
    w = pdl_ext.wasserstein_1d(x, y, 1)
    torch.testing.assert_close(w, reference.wasserstein_1d(x, y, 1), equal_nan=True)
    assert torch.isnan(w[0]) and w[1].item() == float("inf")


@pytest.mark.parametrize(
    "x,y,p,exc,match",
    [
        (torch.randn(2, 5), torch.randn(3, 5), 1, ValueError, r"same leading shape.*\(2, 5\).*\(3, 5\)"),
        (torch.randint(0, 5, (2, 5)), torch.randint(0, 5, (2, 5)), 1, TypeError, "x must be float.*torch.int64"),
        (torch.randn(2, 5, dtype=torch.complex64), torch.randn(2, 5, dtype=torch.complex64), 1, TypeError, "complex64"),
        (torch.randn(2, 5), torch.randn(2, 5).double(), 1, TypeError, r"y must have the dtype of x \(torch.float32\)"),
        (torch.randn(2, 5), torch.randn(2, 5, device="meta"), 1, ValueError, r"device of x \(cpu\), got meta"),
        (torch.randn(2, 5), torch.randn(2, 5), 3, ValueError, "p must be 1 or 2, got 3"),
        (torch.randn(2, 0), torch.randn(2, 5), 1, ValueError, r"x rows must not be empty.*\(2, 0\)"),
        (torch.randn(2, 5), torch.randn(2, 0), 1, ValueError, r"y rows must not be empty"),
        (torch.tensor(1.0), torch.tensor(2.0), 1, ValueError, "at least 1 dimension"),
        ([1.0, 2.0], torch.randn(2), 1, TypeError, "x must be a torch.Tensor, got list"),
    ],
)
def test_bad_input_errors(x, y, p, exc, match):
    with pytest.raises(exc, match=match):
        pdl_ext.wasserstein_1d(x, y, p)


@requires_ext
def test_registered_op_checks_too():
    with pytest.raises(RuntimeError, match="p must be 1 or 2, got 0"):
        torch.ops.pdl_ext.wasserstein_1d(torch.randn(2, 3), torch.randn(2, 3), 0)
    with pytest.raises(RuntimeError, match="same leading shape"):
        torch.ops.pdl_ext.wasserstein_1d_fwd(torch.randn(2, 3), torch.randn(4, 3), 1, True, False)


@requires_ext
def test_double_backward_is_refused():
    x = torch.randn(3, 8, requires_grad=True)
    w = pdl_ext.wasserstein_1d(x, torch.randn(3, 8), 2).sum()
    with pytest.raises(RuntimeError, match="double backward"):
        torch.autograd.grad(w, x, create_graph=True)


def test_fallback_uses_reference_and_warns_once(monkeypatch):
    monkeypatch.setattr(extension, "COMPILED", False)
    monkeypatch.setattr(extension, "_warned", False)
    x, y = torch.randn(3, 10), torch.randn(3, 7)
    with pytest.warns(RuntimeWarning, match="pure-PyTorch reference"):
        w = pdl_ext.wasserstein_1d(x, y, 2)
    torch.testing.assert_close(w, reference.wasserstein_1d(x, y, 2))
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pdl_ext.wasserstein_1d(x, y, 2)


def test_extension_info():
    info = pdl_ext.extension_info()
    for key in ("compiled", "cuda", "cuda_available", "version"):
        assert key in info
    assert info["version"] == pdl_ext.__version__
    assert info["compiled"] == extension.COMPILED
