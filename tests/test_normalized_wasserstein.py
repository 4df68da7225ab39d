"""The fused normalized op and projected_distance against the pure-PyTorch reference."""
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
    return (w.detach(), *torch.autograd.grad(w, (x, y), g))


@pytest.mark.parametrize("b,c,n,m", [(2, 5, 30, 30), (2, 5, 30, 17), (1, 64, 1024, 1024), (3, 3, 4100, 2000), (2, 1, 1, 3)])
@pytest.mark.parametrize("p", [1, 2])
def test_matches_reference_float64(b, c, n, m, p):
    x = _relu_features(b, c, n, torch.float64, n, zero_position=0)
    y = _relu_features(b, c, m, torch.float64, m + 1)
    got = _grads(ops.normalized_wasserstein_1d, x, y, p)
    want = _grads(reference.normalized_wasserstein_1d, x, y, p)
    for a, e in zip(got, want):
        torch.testing.assert_close(a, e, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_matches_reference_low_precision(dtype):
    x = _relu_features(2, 16, 300, dtype, 3)
    y = _relu_features(2, 16, 200, dtype, 4)
    w, gx, gy = _grads(ops.normalized_wasserstein_1d, x, y, 1)
    wr, gxr, gyr = _grads(reference.normalized_wasserstein_1d, x.double(), y.double(), 1)
    assert w.dtype == dtype and gx.dtype == dtype
    tol = dict(rtol=2e-2, atol=1e-4) if dtype == torch.bfloat16 else dict(rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(w.double(), wr, **tol)
    # gradients: compare their action on a random direction (robust to near-tie reorderings)
    v = torch.randn(gx.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert (gx.double() * v).sum().item() == pytest.approx((gxr * v).sum().item(), rel=5e-2, abs=1e-5)


@pytest.mark.parametrize("p", [1, 2])
def test_gradcheck(p):
    g = torch.Generator().manual_seed(p)
    x = (torch.rand(2, 4, 6, generator=g, dtype=torch.float64) + 0.1).requires_grad_(True)
    y = (torch.rand(2, 4, 5, generator=g, dtype=torch.float64) + 0.1).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda a, b: ops.normalized_wasserstein_1d(a, b, p), (x, y), eps=1e-7, atol=1e-6)


def test_gradient_is_zero_at_all_zero_positions():
    x = _relu_features(1, 8, 20, torch.float64, 5, zero_position=7).requires_grad_(True)
    y = _relu_features(1, 8, 20, torch.float64, 6)
    ops.normalized_wasserstein_1d(x, y, 1).sum().backward()
    assert torch.isfinite(x.grad).all()
    assert (x.grad[:, :, 7] == 0).all()


@requires_ext
@pytest.mark.parametrize("grad_x,grad_y", [(True, False), (True, True), (False, False)])
def test_opcheck(grad_x, grad_y):
    x = (torch.rand(2, 6, 40) + 0.05).requires_grad_(grad_x)
    y = (torch.rand(2, 6, 33) + 0.05).requires_grad_(grad_y)
    torch.library.opcheck(torch.ops.pdl_ext.normalized_wasserstein_1d_fwd, (x, y, 1, grad_x, grad_y))
    torch.library.opcheck(torch.ops.pdl_ext.normalized_wasserstein_1d, (x.double(), y.double(), 2))
    torch.library.opcheck(
        torch.ops.pdl_ext.normalized_wasserstein_1d_bwd, (torch.randn(2, 6), torch.randn(2, 6, 40), x.detach(), x.detach().norm(dim=1))
    )


def test_no_normalized_copy_is_made_in_python(monkeypatch):
    # The spatial + normalize path must go through the fused op, never through the reference normalization.
    if not extension.COMPILED:
        pytest.skip("C++ extension not built")

    def boom(*a, **k):
        raise AssertionError("normalized copy materialised")

    monkeypatch.setattr(reference, "normalize_channels", boom)
    monkeypatch.setattr(pdl_ext.projection, "channel_inv_norm", boom)
    projected_distance(torch.rand(2, 4, 8, 8), torch.rand(2, 4, 8, 8), normalize=True)


@pytest.mark.parametrize("normalize", [False, True])
@pytest.mark.parametrize("p", [1, 2])
def test_projection_modes_against_reference(normalize, p):
    g = torch.Generator().manual_seed(11)
    fx = torch.relu(torch.randn(2, 6, 8, 8, generator=g, dtype=torch.float64))
    fy = torch.relu(torch.randn(2, 6, 8, 8, generator=g, dtype=torch.float64))
    fy_small = torch.relu(torch.randn(2, 6, 5, 7, generator=g, dtype=torch.float64))
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
    d = random_directions(5, 6, seed=3, dtype=torch.float64)
    torch.testing.assert_close(d.norm(dim=1), torch.ones(5, dtype=torch.float64))
    got = projected_distance(fx, fy_small, p, 5, normalize, seed=3)
    want = reference.wasserstein_1d(torch.einsum("kc,bcn->bkn", d, nx.flatten(2)), torch.einsum("kc,bcn->bkn", d, ns.flatten(2)), p)
    torch.testing.assert_close(got, want)
    assert not torch.equal(got, projected_distance(fx, fy_small, p, 5, normalize, seed=4))


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
