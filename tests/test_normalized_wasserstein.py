"""The fused normalized op and projected_distance against the pure-PyTorch reference.

The op tests take the ``device`` fixture (tests/conftest.py): CPU, and ``cuda`` on a GPU machine with a
CUDA build; ``cuda_device`` tests compare the CUDA kernels with the CPU kernel.
"""
import pytest
import torch

import pdl_ext
from pdl_ext import extension, ops, reference
from pdl_ext.projection import projected_distance, random_directions

requires_ext = pytest.mark.skipif(not extension.COMPILED, reason="C++ extension not built")


def _relu_features(b, c, n, dtype, seed, zero_position=None):
    g = torch.Generator().manual_seed(seed)
    f = torch.relu(torch.randn(b, c, n, generator=g, dtype=torch.float64)).to(dtype)
    if zero_position is not None:
        f[:, :, zero_position] = 0  # an all-zero position: r = 0
    return f


def _grads(fn, x, y, p, seed=1):
    x = x.detach().clone().requires_grad_(True)
    y = y.detach().clone().requires_grad_(True)
    w = fn(x, y, p)
    g = torch.randn(w.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(w.dtype)
    return (w.detach(), *torch.autograd.grad(w, (x, y), g.to(w.device)))


@pytest.mark.parametrize("b,c,n,m", [(2, 5, 30, 30), (2, 5, 30, 17), (1, 64, 1024, 1024), (3, 3, 4100, 2000), (2, 1, 1, 3)])
@pytest.mark.parametrize("p", [1, 2])
def test_matches_reference_float64(b, c, n, m, p, device):
    x = _relu_features(b, c, n, torch.float64, n, zero_position=0).to(device)
    y = _relu_features(b, c, m, torch.float64, m + 1).to(device)
    got = _grads(ops.normalized_wasserstein_1d, x, y, p)
    want = _grads(reference.normalized_wasserstein_1d, x, y, p)
    for a, e in zip(got, want):
        torch.testing.assert_close(a, e, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_matches_reference_low_precision(dtype, device):
    x = _relu_features(2, 16, 300, dtype, 3).to(device)
    y = _relu_features(2, 16, 200, dtype, 4).to(device)
    w, gx, gy = _grads(ops.normalized_wasserstein_1d, x, y, 1)
    wr, gxr, gyr = _grads(reference.normalized_wasserstein_1d, x.double(), y.double(), 1)
    assert w.dtype == dtype and gx.dtype == dtype
    tol = dict(rtol=2e-2, atol=1e-4) if dtype == torch.bfloat16 else dict(rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(w.double(), wr, **tol)
    # gradients: compare their action on a random direction (robust to near-tie reorderings)
    v = torch.randn(gx.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64).to(device)
    assert (gx.double() * v).sum().item() == pytest.approx((gxr * v).sum().item(), rel=5e-2, abs=1e-5)


@pytest.mark.parametrize("p", [1, 2])
def test_gradcheck(p, device):
    g = torch.Generator().manual_seed(p)
    x = (torch.rand(2, 4, 6, generator=g, dtype=torch.float64) + 0.1).to(device).requires_grad_(True)
    y = (torch.rand(2, 4, 5, generator=g, dtype=torch.float64) + 0.1).to(device).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda a, b: ops.normalized_wasserstein_1d(a, b, p), (x, y), eps=1e-7, atol=1e-6)


def test_gradient_is_zero_at_all_zero_positions(device):
    x = _relu_features(1, 8, 20, torch.float64, 5, zero_position=7).to(device).requires_grad_(True)
    y = _relu_features(1, 8, 20, torch.float64, 6).to(device)
    ops.normalized_wasserstein_1d(x, y, 1).sum().backward()
    assert torch.isfinite(x.grad).all()
    assert (x.grad[:, :, 7] == 0).all()


@requires_ext
@pytest.mark.parametrize("grad_x,grad_y", [(True, False), (True, True), (False, False)])
def test_opcheck(grad_x, grad_y, device):
    x = (torch.rand(2, 6, 40, device=device) + 0.05).requires_grad_(grad_x)
    y = (torch.rand(2, 6, 33, device=device) + 0.05).requires_grad_(grad_y)
    torch.library.opcheck(torch.ops.pdl_ext.normalized_wasserstein_1d_fwd, (x, y, 1, grad_x, grad_y))
    torch.library.opcheck(torch.ops.pdl_ext.normalized_wasserstein_1d, (x.double(), y.double(), 2))
    torch.library.opcheck(
        torch.ops.pdl_ext.normalized_wasserstein_1d_bwd,
        (torch.randn(2, 6, device=device), torch.randn(2, 6, 40, device=device), x.detach(), x.detach().norm(dim=1)),
    )


def test_no_normalized_copy_is_made_in_python(monkeypatch, device):
    # The spatial + normalize path must go through the fused op, never through the reference normalization.
    if not extension.COMPILED:
        pytest.skip("C++ extension not built")

    def boom(*a, **k):
        raise AssertionError("normalized copy materialised")

    monkeypatch.setattr(reference, "normalize_channels", boom)
    monkeypatch.setattr(pdl_ext.projection, "channel_inv_norm", boom)
    projected_distance(torch.rand(2, 4, 8, 8, device=device), torch.rand(2, 4, 8, 8, device=device), normalize=True)


@pytest.mark.parametrize("normalize", [False, True])
@pytest.mark.parametrize("p", [1, 2])
def test_projection_modes_against_reference(normalize, p, device):
    g = torch.Generator().manual_seed(11)
    fx = torch.relu(torch.randn(2, 6, 8, 8, generator=g, dtype=torch.float64)).to(device)
    fy = torch.relu(torch.randn(2, 6, 8, 8, generator=g, dtype=torch.float64)).to(device)
    fy_small = torch.relu(torch.randn(2, 6, 5, 7, generator=g, dtype=torch.float64)).to(device)
    nx = reference.normalize_channels(fx) if normalize else fx
    ny = reference.normalize_channels(fy) if normalize else fy
    ns = reference.normalize_channels(fy_small) if normalize else fy_small
    # spatial: per channel over positions, sizes may differ
    got = projected_distance(fx, fy_small, p, "spatial", normalize)
    want = reference.wasserstein_1d(nx.flatten(2), ns.flatten(2), p)
    torch.testing.assert_close(got, want)
    # channel: per position over channels
    got = projected_distance(fx, fy, p, "channel", normalize)
    want = reference.wasserstein_1d(nx.flatten(2).transpose(1, 2), ny.flatten(2).transpose(1, 2), p)
    assert got.shape == (2, 64)
    torch.testing.assert_close(got, want)
    # sliced: K unit directions, the same ones for the same seed
    d = random_directions(5, 6, seed=3, dtype=torch.float64).to(device)
    torch.testing.assert_close(d.norm(dim=1), torch.ones(5, dtype=torch.float64, device=device))
    got = projected_distance(fx, fy_small, p, 5, normalize, seed=3)
    want = reference.wasserstein_1d(torch.einsum("kc,bcn->bkn", d, nx.flatten(2)), torch.einsum("kc,bcn->bkn", d, ns.flatten(2)), p)
    torch.testing.assert_close(got, want)
    assert not torch.equal(got, projected_distance(fx, fy_small, p, 5, normalize, seed=4))


# ----------------------------------------------------------------------------------------------
# The CUDA kernels against the CPU kernel (moved from test_cuda.py; cuda_device: GPU machines only)


def _features(b, c, n, dtype, seed):
    """ReLU-like features (some all-zero positions, where the norm is 0) of shape (b, c, n)."""
    g = torch.Generator().manual_seed(seed)
    f = torch.relu(torch.randn(b, c, n, generator=g, dtype=torch.float64))
    f[:, :, ::7] = 0.0
    return f.to(dtype)


def _exact_norm_features(b, n, dtype, seed):
    """(b, 3, n) features whose channel norms every reduction order computes exactly: each position is
    a Pythagorean quadruple (a, b, c; k) permuted and scaled by a power of 2, or all zero."""
    quads = torch.tensor([[1, 2, 2], [2, 3, 6], [1, 4, 8], [4, 4, 7], [2, 6, 9], [6, 6, 7], [3, 4, 12], [2, 10, 11],
                          [0, 3, 4], [0, 0, 1]], dtype=torch.float64)
    g = torch.Generator().manual_seed(seed)
    v = quads[torch.randint(len(quads), (b, n), generator=g)]  # (b, n, 3)
    v = torch.gather(v, 2, torch.argsort(torch.rand(b, n, 3, generator=g), dim=2))
    v = v * torch.pow(2.0, torch.randint(-3, 4, (b, n, 1), generator=g).double())
    v[:, ::11] = 0.0
    return v.transpose(1, 2).contiguous().to(dtype)


@requires_ext
@pytest.mark.parametrize("b,n,m", [(2, 50, 50), (2, 300, 200), (1, 5000, 5000), (2, 4100, 3000)])
@pytest.mark.parametrize("p", [1, 2])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_cuda_matches_cpu_kernel_exact_norms(b, n, m, p, dtype, cuda_device, cpu_kernel):
    # Exact norms: the normalized values, and so the sort orders, are the same on both devices.
    x, y = _exact_norm_features(b, n, dtype, seed=n), _exact_norm_features(b, m, dtype, seed=m + 1)
    op = torch.ops.pdl_ext.normalized_wasserstein_1d_fwd
    w, dx, dy, nx, ny = op(x.to(cuda_device), y.to(cuda_device), p, True, True)
    wc, dxc, dyc, nxc, nyc = op(x, y, p, True, True)
    assert torch.equal(nx.cpu(), nxc) and torch.equal(ny.cpu(), nyc)
    torch.testing.assert_close(w.cpu(), wc, **cpu_kernel.TOL[dtype])
    if n == m:
        assert torch.equal(dx.cpu(), dxc)
        assert torch.equal(dy.cpu(), dyc)
    else:
        cpu_kernel.close_grad(dx.cpu(), dxc, dtype)
        cpu_kernel.close_grad(dy.cpu(), dyc, dtype)


@requires_ext
@pytest.mark.parametrize("b,c,n,m", [(2, 3, 50, 50), (2, 4, 300, 200), (1, 3, 5000, 5000), (2, 2, 4100, 3000)])
@pytest.mark.parametrize("p", [1, 2])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16])
def test_cuda_matches_cpu_kernel_random_features(b, c, n, m, p, dtype, cuda_device, cpu_kernel):
    x, y = _features(b, c, n, dtype, seed=n), _features(b, c, m, dtype, seed=m + 1)
    op = torch.ops.pdl_ext.normalized_wasserstein_1d_fwd
    w, dx, dy, nx, ny = op(x.to(cuda_device), y.to(cuda_device), p, True, True)
    wc, dxc, dyc, nxc, nyc = op(x, y, p, True, True)
    tol = cpu_kernel.TOL
    torch.testing.assert_close(w.cpu(), wc, **tol[dtype])
    torch.testing.assert_close(nx.cpu(), nxc, **tol[nxc.dtype])
    torch.testing.assert_close(ny.cpu(), nyc, **tol[nyc.dtype])
    # Norms rounded differently may swap two nearly equal values in the sort, and with them their
    # gradients; each row's sorted gradients do not depend on such swaps.
    cpu_kernel.close_grad(torch.sort(dx.cpu(), -1).values, torch.sort(dxc, -1).values, dtype)
    cpu_kernel.close_grad(torch.sort(dy.cpu(), -1).values, torch.sort(dyc, -1).values, dtype)


@pytest.mark.parametrize("b,c,n,m", [(2, 3, 40, 30), (1, 4, 5000, 5000)])
def test_autograd_matches_cpu_and_reference(b, c, n, m, device):
    x, y = _features(b, c, n, torch.float64, seed=1), _features(b, c, m, torch.float64, seed=2)
    weights = torch.linspace(0.5, 2.0, b * c, dtype=torch.float64).reshape(b, c)
    results = []
    runs = [("cpu", ops.normalized_wasserstein_1d), (device, reference.normalized_wasserstein_1d)]
    if device != "cpu":
        runs.insert(1, (device, ops.normalized_wasserstein_1d))
    for dev, fn in runs:
        xd = x.to(dev).requires_grad_(True)
        yd = y.to(dev).requires_grad_(True)
        w = fn(xd, yd, 2)
        gx, gy = torch.autograd.grad(w, (xd, yd), weights.to(dev))
        results.append((w.detach().cpu(), gx.cpu(), gy.cpu()))
    for other in results[1:]:
        for a, e in zip(other, results[0]):
            torch.testing.assert_close(a, e, rtol=1e-9, atol=1e-12)


@requires_ext
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16])
def test_bwd_op_zero_positions_and_cpu_kernel(dtype, device, cpu_kernel):
    g = torch.Generator().manual_seed(3)
    f = _features(3, 5, 700, dtype, seed=4)
    d = torch.randn(3, 5, 700, generator=g).to(dtype)
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    norm = torch.linalg.vector_norm(f.to(acc), dim=1)
    grad = torch.randn(3, 5, generator=g, dtype=acc).to(dtype)
    bwd = torch.ops.pdl_ext.normalized_wasserstein_1d_bwd
    got = bwd(grad.to(device), d.to(device), f.to(device), norm.to(device))
    assert got.dtype == dtype and got.shape == f.shape and got.device.type == device
    assert (got[:, :, ::7] == 0).all()  # all-zero positions: gradient 0
    if device != "cpu":
        torch.testing.assert_close(got.cpu(), bwd(grad, d, f, norm), **cpu_kernel.TOL[dtype])


@pytest.mark.parametrize(
    "kwargs,exc,match",
    [
        (dict(fx=torch.rand(2, 3, 4), fy=torch.rand(2, 3, 4)), ValueError, r"fx must be a feature map \(B, C, H, W\), got shape \(2, 3, 4\)"),
        (dict(fx=torch.rand(2, 3, 4, 4), fy=torch.rand(2, 4, 4, 4)), ValueError, "same batch and channel sizes"),
        (dict(fx=torch.rand(2, 3, 4, 4), fy=torch.rand(2, 3, 5, 4), projection="channel"), ValueError, "equal shape"),
        (dict(fx=torch.rand(2, 3, 4, 4), fy=torch.rand(2, 3, 4, 4), projection="pixels"), ValueError, "projection must be"),
        (dict(fx=torch.rand(2, 3, 4, 4), fy=torch.rand(2, 3, 4, 4), projection=2, directions=torch.rand(3, 3)), ValueError, r"directions must have shape \(2, 3\)"),
        (dict(fx=torch.rand(2, 3, 4, 4), fy=torch.rand(2, 3, 4, 4), p=0), ValueError, "p must be 1 or 2"),
    ],
)
def test_projected_distance_errors(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        projected_distance(**kwargs)


def test_normalized_op_errors():
    with pytest.raises(ValueError, match=r"x must be \(B, C, N\), got shape \(2, 3\)"):
        ops.normalized_wasserstein_1d(torch.rand(2, 3), torch.rand(2, 3))
    with pytest.raises(ValueError, match="same leading shape"):
        ops.normalized_wasserstein_1d(torch.rand(2, 3, 5), torch.rand(2, 4, 5))


@pytest.mark.parametrize("projection", ["channel", 3])
def test_projected_normalization_follows_the_ops_non_finite_rule(projection):
    # The channel and sliced projections normalize in Python: an inf feature makes its position NaN,
    # as the fused op and the reference do, in value and in gradient.
    from pdl_ext import reference
    from pdl_ext.projection import channel_inv_norm

    f = torch.rand(2, 4, 5, 5, dtype=torch.float64)
    f[0, 1, 2, 3] = float("inf")
    torch.testing.assert_close(channel_inv_norm(f), reference.channel_inv_norm(f), equal_nan=True)
    fx = f.clone().requires_grad_(True)
    d = pdl_ext.projected_distance(fx, torch.rand(2, 4, 5, 5, dtype=torch.float64), projection=projection, normalize=True)
    assert d[0].isnan().any() and d[1].isfinite().all()
