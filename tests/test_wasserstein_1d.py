"""The fused wasserstein_1d op against the pure-PyTorch reference, numpy/scipy, gradcheck and opcheck.

Every op test takes the ``device`` fixture (tests/conftest.py): it runs on the CPU and, on a GPU
machine with a CUDA build, on ``cuda`` too, where the results are also compared with the CPU kernel's
(the same bits for the derivatives of equal-size rows, as docs/op.md promises). CUDA-only matters
(block sizes, the segmented sort path, streams, several GPUs) are in test_cuda.py.
"""
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


def fwd(x, y, p, grad_x=True, grad_y=True):
    return torch.ops.pdl_ext.wasserstein_1d_fwd(x, y, p, grad_x, grad_y)


def _grads(fn, x, y, p, seed=0):
    x = x.detach().clone().requires_grad_(True)
    y = y.detach().clone().requires_grad_(True)
    w = fn(x, y, p)
    g = torch.randn(w.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(w.dtype)
    gx, gy = torch.autograd.grad(w, (x, y), g.to(w.device))
    return w.detach(), gx, gy


def _inputs(r, n, m, dtype, seed=0, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(r, n, generator=g, dtype=torch.float64)
    y = torch.randn(r, m, generator=g, dtype=torch.float64) * 1.5 + 0.25
    return x.to(dtype).to(device), y.to(dtype).to(device)


def _tied_inputs(lead, n, m, dtype, seed=0):
    """Rows of distinct values and, in every other row, heavy ties with -0.0 and +0.0 mixed in."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*lead, n, generator=g, dtype=torch.float64)
    y = torch.randn(*lead, m, generator=g, dtype=torch.float64) * 1.5 + 0.25
    tx = (torch.randint(-3, 4, x.shape, generator=g) / 2).double()
    ty = (torch.randint(-2, 3, y.shape, generator=g) / 2).double()
    tx[tx == 0] = torch.where(torch.rand(int((tx == 0).sum()), generator=g) < 0.5, -0.0, 0.0).double()
    odd = (torch.arange(x[..., 0].numel()) % 2 == 1).reshape(x.shape[:-1])
    x = torch.where(odd[..., None], tx, x)
    y = torch.where(odd[..., None], ty, y)
    return x.to(dtype), y.to(dtype)


@pytest.mark.parametrize("r,n,m", SHAPES)
@pytest.mark.parametrize("p", [1, 2])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_matches_reference(r, n, m, p, dtype, device, cpu_kernel):
    x, y = _inputs(r, n, m, dtype, seed=n * 131 + m, device=device)
    w, gx, gy = _grads(pdl_ext.wasserstein_1d, x, y, p)
    wr, gxr, gyr = _grads(reference.wasserstein_1d, x, y, p)
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == torch.float32 else dict(rtol=1e-12, atol=1e-13)
    torch.testing.assert_close(w, wr, **tol)
    torch.testing.assert_close(gx, gxr, **tol)
    torch.testing.assert_close(gy, gyr, **tol)
    if extension.COMPILED and device != "cpu":
        cpu_kernel.check_fwd(x, y, p)  # the CUDA kernel against the CPU kernel


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("r,n,m", [(4, 64, 64), (3, 300, 200), (2, 5000, 5000)])
@pytest.mark.parametrize("p", [1, 2])
def test_low_precision_accumulates_in_float32(dtype, r, n, m, p, device, cpu_kernel):
    x, y = _inputs(r, n, m, dtype, seed=n + m, device=device)
    w, gx, gy = _grads(pdl_ext.wasserstein_1d, x, y, p)
    assert w.dtype == dtype and gx.dtype == dtype
    # The float32 result of the same (rounded) values, then rounded once.
    wr, gxr, gyr = _grads(reference.wasserstein_1d, x.float(), y.float(), p)
    torch.testing.assert_close(w.float(), wr, rtol=1e-2, atol=1e-3)
    torch.testing.assert_close(gx.float(), gxr, rtol=1e-2, atol=1e-5)
    torch.testing.assert_close(gy.float(), gyr, rtol=1e-2, atol=1e-5)
    if extension.COMPILED and device != "cpu":
        cpu_kernel.check_fwd(x, y, p)  # the CUDA kernel against the CPU kernel


def _numpy_wasserstein(u, v, p):
    """W_p^p from numpy's inverse ECDF (np.quantile, inverted_cdf) on the merged breakpoint grid."""
    n, m = len(u), len(v)
    t = np.union1d(np.arange(n + 1) / n, np.arange(m + 1) / m)
    mid = (t[1:] + t[:-1]) / 2
    qu = np.quantile(u, mid, method="inverted_cdf")
    qv = np.quantile(v, mid, method="inverted_cdf")
    return float(np.sum(np.diff(t) * np.abs(qu - qv) ** p))


@pytest.mark.parametrize("n,m", [(1, 1), (5, 5), (7, 3), (64, 100), (1000, 999)])
def test_matches_scipy_and_numpy(n, m, device):
    x, y = _inputs(3, n, m, torch.float64, seed=7 * n + m)
    w1 = pdl_ext.wasserstein_1d(x.to(device), y.to(device), 1).cpu()
    w2 = pdl_ext.wasserstein_1d(x.to(device), y.to(device), 2).cpu()
    for r in range(3):
        u, v = x[r].numpy(), y[r].numpy()
        assert w1[r].item() == pytest.approx(scipy.stats.wasserstein_distance(u, v), rel=1e-12, abs=1e-14)
        assert w1[r].item() == pytest.approx(_numpy_wasserstein(u, v, 1), rel=1e-12, abs=1e-14)
        assert w2[r].item() == pytest.approx(_numpy_wasserstein(u, v, 2), rel=1e-12, abs=1e-14)


@pytest.mark.parametrize("n,m", [(50, 50), (40, 25), (3000, 3000)])
@pytest.mark.parametrize("p", [1, 2])
def test_heavy_ties_match_reference(n, m, p, device, cpu_kernel):
    # Few distinct values: every row is full of ties, and -0.0 and +0.0 are mixed in.
    g = torch.Generator().manual_seed(n + m)
    x = torch.randint(-3, 4, (6, n), generator=g).double() / 2
    y = torch.randint(-2, 3, (6, m), generator=g).double() / 2
    x[x == 0] = torch.where(torch.rand(int((x == 0).sum()), generator=g) < 0.5, -0.0, 0.0).double()
    x, y = x.to(device), y.to(device)
    w, gx, gy = _grads(pdl_ext.wasserstein_1d, x, y, p)
    wr, gxr, gyr = _grads(reference.wasserstein_1d, x, y, p)
    torch.testing.assert_close(w, wr, rtol=1e-12, atol=1e-13)
    torch.testing.assert_close(gx, gxr, rtol=1e-12, atol=1e-13)
    torch.testing.assert_close(gy, gyr, rtol=1e-12, atol=1e-13)
    if extension.COMPILED and device != "cpu":
        cpu_kernel.check_fwd(x, y, p)  # the CUDA kernel against the CPU kernel


def test_p1_subgradient_is_zero_at_equal_atoms(device):
    x = torch.tensor([[1.0, 2.0, 3.0]], device=device, requires_grad=True)
    y = torch.tensor([[3.0, 2.0, 0.0]], device=device)
    pdl_ext.wasserstein_1d(x, y, 1).sum().backward()
    # sorted pairs: (1, 0) -> +1/3, (2, 2) -> 0, (3, 3) -> 0
    assert x.grad.tolist() == [[pytest.approx(1 / 3), 0.0, 0.0]]


@pytest.mark.parametrize("p", [1, 2])
def test_non_contiguous_and_leading_dims(p, device):
    g = torch.Generator().manual_seed(11)
    base_x = torch.randn(4, 6, 50, generator=g, dtype=torch.float64).to(device)
    base_y = torch.randn(6, 4, 80, generator=g, dtype=torch.float64).to(device)
    x = base_x.transpose(0, 1)[:, :, ::2]  # (6, 4, 25), strided
    y = base_y[:, :, 1::2]  # (6, 4, 40)
    assert not x.is_contiguous() and not y.is_contiguous()
    w, gx, gy = _grads(pdl_ext.wasserstein_1d, x, y, p)
    wr, gxr, gyr = _grads(reference.wasserstein_1d, x.contiguous(), y.contiguous(), p)
    assert w.shape == (6, 4)
    torch.testing.assert_close(w, wr)
    torch.testing.assert_close(gx, gxr)
    torch.testing.assert_close(gy, gyr)
    if device != "cpu":
        # The same strided views on the CPU: the same results up to float64 rounding.
        wc, gxc, gyc = _grads(pdl_ext.wasserstein_1d, x.cpu(), y.cpu(), p)
        for a, b in ((w, wc), (gx, gxc), (gy, gyc)):
            torch.testing.assert_close(a.cpu(), b, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("p", [1, 2])
def test_autograd_through_strided_leaves(p, device):
    # Gradients land in the strided leaves' own layout (the backward scatters back through the view).
    g = torch.Generator().manual_seed(11)
    base_x = torch.randn(4, 6, 50, generator=g, dtype=torch.float64)
    base_y = torch.randn(4, 6, 80, generator=g, dtype=torch.float64)
    results = []
    for dev in dict.fromkeys(("cpu", device)):
        bx = base_x.to(dev).requires_grad_(True)
        by = base_y.to(dev).requires_grad_(True)
        x = bx.transpose(0, 1)[..., ::2]  # (6, 4, 25), non-contiguous
        y = by.transpose(0, 1)[..., 1::2]  # (6, 4, 40)
        w = pdl_ext.wasserstein_1d(x, y, p)
        w.backward(torch.linspace(0.5, 2.0, w.numel(), dtype=w.dtype, device=dev).reshape(w.shape))
        results.append((w.detach().cpu(), bx.grad.cpu(), by.grad.cpu()))
    wr = reference.wasserstein_1d(base_x.transpose(0, 1)[..., ::2], base_y.transpose(0, 1)[..., 1::2], p)
    torch.testing.assert_close(results[0][0], wr, rtol=1e-12, atol=1e-14)
    assert (results[0][1][..., 1::2] == 0).all() and (results[0][2][..., ::2] == 0).all()  # unread elements
    for a, b in zip(results[-1], results[0]):  # the device against the CPU
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)


def test_one_dimensional_input_gives_scalar(device):
    x, y = torch.randn(10), torch.randn(12)
    w = pdl_ext.wasserstein_1d(x.to(device), y.to(device))
    assert w.shape == ()
    assert w.item() == pytest.approx(scipy.stats.wasserstein_distance(x.numpy(), y.numpy()), rel=1e-5)


def test_empty_leading_shape(device):
    x, y = torch.randn(0, 3, 5, device=device, requires_grad=True), torch.randn(0, 3, 4, device=device)
    w = pdl_ext.wasserstein_1d(x, y)
    assert w.shape == (0, 3)
    w.sum().backward()
    assert x.grad.shape == x.shape


@requires_ext
def test_empty_and_scalar_shapes_of_the_fwd_op(device):
    w, dx, dy = fwd(torch.randn(0, 5, device=device), torch.randn(0, 3, device=device), 1)
    assert w.shape == (0,) and dx.shape == (0, 5) and dy.shape == (0, 3)
    x, y = torch.randn(7, dtype=torch.float64), torch.randn(5, dtype=torch.float64)
    w, dx, dy = fwd(x.to(device), y.to(device), 2)
    assert w.shape == () and dx.shape == (7,) and dy.shape == (5,)
    torch.testing.assert_close(w.cpu(), reference.wasserstein_1d(x, y, 2), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("p", [1, 2])
@pytest.mark.parametrize("n,m", [(6, 6), (7, 4), (1, 5), (3000, 3000)])
def test_gradcheck(p, n, m, device):
    # Distinct, well-separated values: no ties, so the function is differentiable at the point.
    g = torch.Generator().manual_seed(n * 10 + m)
    x = (torch.randperm(n, generator=g).double() + 0.1 * torch.rand(n, generator=g, dtype=torch.float64)).repeat(3, 1)
    y = (torch.randperm(m, generator=g).double() * 1.3 + 0.05).repeat(3, 1) + torch.arange(3).unsqueeze(1) * 0.01
    x = x.to(device).requires_grad_(True)
    y = y.to(device).requires_grad_(True)
    # Long rows: the gradient along a few random directions only (fast_mode).
    assert torch.autograd.gradcheck(lambda a, b: pdl_ext.wasserstein_1d(a, b, p), (x, y), eps=1e-6, atol=1e-6,
                                    fast_mode=n > 100)


@requires_ext
@pytest.mark.parametrize("n,m", [(17, 11), (32, 32), (5000, 5000)])
@pytest.mark.parametrize("grad_x,grad_y", [(True, False), (False, True), (True, True), (False, False)])
def test_opcheck_fwd(n, m, grad_x, grad_y, device):
    lead = (3, 4) if n < 1000 else (2,)  # long rows: the segmented CUDA path (and the CPU's long-row path)
    x = torch.randn(*lead, n, device=device, requires_grad=grad_x)
    y = torch.randn(*lead, m, device=device, requires_grad=grad_y)
    torch.library.opcheck(torch.ops.pdl_ext.wasserstein_1d_fwd, (x, y, 1, grad_x, grad_y))
    torch.library.opcheck(torch.ops.pdl_ext.wasserstein_1d_fwd, (x.double(), y.double(), 2, grad_x, grad_y))


@requires_ext
def test_opcheck_composite_and_backward(device):
    x = torch.randn(5, 33, device=device, requires_grad=True)
    y = torch.randn(5, 33, device=device)
    torch.library.opcheck(torch.ops.pdl_ext.wasserstein_1d, (x, y, 2))
    torch.library.opcheck(torch.ops.pdl_ext.wasserstein_1d_bwd, (torch.randn(5, device=device), torch.randn(5, 33, device=device)))


@requires_ext
def test_fwd_skips_unwanted_gradients(device):
    x, y = torch.randn(2, 9, device=device), torch.randn(2, 9, device=device)
    loss, dx, dy = torch.ops.pdl_ext.wasserstein_1d_fwd(x, y, 1, True, False)
    assert dx.shape == x.shape and dy.numel() == 0
    torch.testing.assert_close(loss, reference.wasserstein_1d(x, y, 1))


@requires_ext
@pytest.mark.parametrize("lead,n,m", [((4,), 300, 300), ((3,), 300, 200), ((2,), 5000, 5000), ((2,), 5000, 3001)])
@pytest.mark.parametrize("grad_x,grad_y", [(True, False), (False, True), (False, False)])
def test_gradient_flags_give_the_bits_of_the_full_run(lead, n, m, grad_x, grad_y, device):
    x, y = _tied_inputs(lead, n, m, torch.float32, seed=3)
    x, y = x.to(device), y.to(device)
    w_all, dx_all, dy_all = fwd(x, y, 2)
    w, dx, dy = fwd(x, y, 2, grad_x, grad_y)
    torch.testing.assert_close(w, w_all, rtol=1e-6, atol=1e-7)
    assert torch.equal(dx, dx_all) if grad_x else dx.numel() == 0
    assert torch.equal(dy, dy_all) if grad_y else dy.numel() == 0


@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_torch_compile_fullgraph(backend, device):
    if backend == "inductor" and device == "cpu":
        pytest.skip("inductor on the CPU compiles C++ for a minute; aot_eager traces the same graph here")
    torch._dynamo.reset()

    def loss_fn(a, b):
        return pdl_ext.wasserstein_1d(a * 2.0, b, 1).mean()

    compiled = torch.compile(loss_fn, fullgraph=True, backend=backend)
    x = torch.randn(4, 40, device=device, requires_grad=True)
    y = torch.randn(4, 30, device=device)
    out = compiled(x, y)
    out.backward()
    x2 = x.detach().clone().requires_grad_(True)
    ref = reference.wasserstein_1d(x2 * 2.0, y, 1).mean()
    ref.backward()
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(x.grad, x2.grad)


@pytest.mark.parametrize("n,m", [(3000, 2000), (1000, 1000), (700, 999), (70000, 70000), (70000, 50000)])
def test_deterministic_bits_and_threads(n, m, device, restore_threads):
    x, y = _inputs(64 if n < 10000 else 3, n, m, torch.float32, seed=3)
    x[:, ::7] = 0.5  # ties
    x, y = x.to(device), y.to(device)
    outs = []
    for threads in (1, 2, 2):
        torch.set_num_threads(threads)
        outs.append(_grads(pdl_ext.wasserstein_1d, x, y, 1))
    for other in outs[1:]:
        for a, b in zip(outs[0], other):
            assert torch.equal(a, b)


@pytest.mark.parametrize("n,m", [(20, 20), (20, 13)])
def test_nan_poisons_only_its_row(n, m, device):
    x, y = _inputs(3, n, m, torch.float32, device=device)
    x[1, 4] = float("nan")
    y[2, 0] = float("nan")
    w, gx, gy = _grads(pdl_ext.wasserstein_1d, x, y, 1)
    assert torch.isnan(w[1]) and torch.isnan(w[2]) and torch.isfinite(w[0])
    assert torch.isnan(gx[1:]).all() and torch.isnan(gy[1:]).all()
    wr, gxr, gyr = _grads(reference.wasserstein_1d, x[:1], y[:1], 1)
    torch.testing.assert_close(w[:1], wr)
    torch.testing.assert_close(gx[:1], gxr)


@requires_ext
@pytest.mark.parametrize("n,m", [(20, 20), (20, 13), (5000, 5000), (5000, 3001)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_nan_rows_leave_the_other_rows_alone(n, m, dtype, device, cpu_kernel):
    x, y = _tied_inputs((4,), n, m, dtype, seed=5)
    x[0, n // 2] = float("nan")
    y[1, 0] = float("nan")
    x[2, -1] = -float("nan")
    w, dx, dy = cpu_kernel.check_fwd(x.to(device), y.to(device), 1)
    assert torch.isnan(w[:3]).all() and torch.isnan(dx[:3]).all() and torch.isnan(dy[:3]).all()
    # The last row alone gives what it gave in the batch.
    wc, dxc, dyc = fwd(x[3:], y[3:], 1)
    torch.testing.assert_close(w[3:].cpu(), wc, **cpu_kernel.TOL[dtype])
    cpu_kernel.close_grad(dx[3:].cpu(), dxc, dtype)
    cpu_kernel.close_grad(dy[3:].cpu(), dyc, dtype)


def test_infinities_follow_ieee(device):
    x = torch.tensor([[float("inf"), 0.0, 1.0], [float("-inf"), 0.0, 1.0]], device=device)
    y = torch.tensor([[float("inf"), 0.0, 1.0], [2.0, 0.0, 1.0]], device=device)
    w = pdl_ext.wasserstein_1d(x, y, 1)
    torch.testing.assert_close(w, reference.wasserstein_1d(x, y, 1), equal_nan=True)
    assert torch.isnan(w[0]) and w[1].item() == float("inf")


@requires_ext
@pytest.mark.parametrize("n", [4, 5000])
def test_infinities_and_signed_zeros(n, device, cpu_kernel):
    x = torch.zeros(3, n)
    y = torch.zeros(3, n)
    x[0, ::2] = -0.0
    y[0, 1::2] = -0.0
    x[1, 0], y[1, 1] = float("inf"), float("inf")  # inf - inf = NaN in that row, as IEEE says
    x[2, 0], y[2, 0] = -float("inf"), 1.0
    w, dx, dy = cpu_kernel.check_fwd(x.to(device), y.to(device), 1)
    torch.testing.assert_close(w.cpu(), reference.wasserstein_1d(x, y, 1), equal_nan=True)
    assert w[0].item() == 0.0 and (dx[0] == 0).all()
    assert torch.isnan(w[1]) and w[2].item() == float("inf")


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
def test_double_backward_is_refused(device):
    x = torch.randn(3, 8, device=device, requires_grad=True)
    w = pdl_ext.wasserstein_1d(x, torch.randn(3, 8, device=device), 2).sum()
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
