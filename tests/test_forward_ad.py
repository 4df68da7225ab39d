"""Forward-mode AD and torch.func transforms through the fused ops, against the pure-PyTorch reference.

The tangent of W is sum_i dW/dx_i tx_i + sum_j dW/dy_j ty_j, made from the derivatives the forward
computes (the op asks for them when an input carries a tangent): torch.func.jvp,
torch.autograd.forward_ad, jacfwd. torch.func.grad, vjp and jacrev go through the same autograd
kernel. Second derivatives (hessian, grad of grad, double backward) raise an error naming the op,
never a silent zero.
"""
import pytest
import torch
import torch.autograd.forward_ad as fwAD

import pdl_ext
from pdl_ext import extension, ops, reference

pytestmark = pytest.mark.skipif(not extension.COMPILED, reason="C++ extension not built")

PLAIN = [(pdl_ext.wasserstein_1d, reference.wasserstein_1d), (torch.ops.pdl_ext.wasserstein_1d, reference.wasserstein_1d)]
NORMALIZED = [(ops.normalized_wasserstein_1d, reference.normalized_wasserstein_1d),
              (torch.ops.pdl_ext.normalized_wasserstein_1d, reference.normalized_wasserstein_1d)]


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _plain_inputs(n, m, dtype=torch.float64, seed=0):
    g = _gen(seed)
    x = torch.randn(3, n, generator=g, dtype=torch.float64)
    y = torch.randn(3, m, generator=g, dtype=torch.float64) * 1.5 + 0.3
    tx = torch.randn(3, n, generator=g, dtype=torch.float64)
    ty = torch.randn(3, m, generator=g, dtype=torch.float64)
    return [t.to(dtype) for t in (x, y, tx, ty)]


def _normalized_inputs(n, m, seed=0):
    g = _gen(seed)
    x = torch.relu(torch.randn(2, 5, n, generator=g, dtype=torch.float64))
    y = torch.relu(torch.randn(2, 5, m, generator=g, dtype=torch.float64))
    x[0, :, 1] = 0.0  # an all-zero position: derivative 0 there, in both directions of AD
    tx = torch.randn(2, 5, n, generator=g, dtype=torch.float64)
    ty = torch.randn(2, 5, m, generator=g, dtype=torch.float64)
    return x, y, tx, ty


def _with_tangents(which, tx, ty):
    return (tx if "x" in which else torch.zeros_like(tx)), (ty if "y" in which else torch.zeros_like(ty))


def test_the_small_example():
    # The reference's tangent is -2.6667 here; the op's was a silent 0.
    x = torch.tensor([[0.0, 1.0, 3.0, 7.0]])
    y = torch.tensor([[5.0, 1.0, 2.0]])
    tx = torch.tensor([[1.0, 2.0, 3.0, -4.0]])
    ty = torch.tensor([[0.5, -1.0, 2.0]])
    want = torch.func.jvp(lambda a, b: reference.wasserstein_1d(a, b, 1), (x, y), (tx, ty))
    got = torch.func.jvp(lambda a, b: pdl_ext.wasserstein_1d(a, b, 1), (x, y), (tx, ty))
    torch.testing.assert_close(got, want)
    assert want[1].item() != 0


@pytest.mark.parametrize("op,ref", PLAIN)
@pytest.mark.parametrize("n,m", [(40, 40), (40, 23), (7, 300)])
@pytest.mark.parametrize("p", [1, 2])
@pytest.mark.parametrize("which", ["x", "y", "xy"])
def test_func_jvp_matches_reference(op, ref, n, m, p, which):
    x, y, tx, ty = _plain_inputs(n, m, seed=n + m + p)
    if which == "x":  # a tangent on x only: y enters as a constant
        got = torch.func.jvp(lambda a: op(a, y, p), (x,), (tx,))
        want = torch.func.jvp(lambda a: ref(a, y, p), (x,), (tx,))
    elif which == "y":
        got = torch.func.jvp(lambda b: op(x, b, p), (y,), (ty,))
        want = torch.func.jvp(lambda b: ref(x, b, p), (y,), (ty,))
    else:
        got = torch.func.jvp(lambda a, b: op(a, b, p), (x, y), (tx, ty))
        want = torch.func.jvp(lambda a, b: ref(a, b, p), (x, y), (tx, ty))
    torch.testing.assert_close(got[0], want[0], rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(got[1], want[1], rtol=1e-10, atol=1e-12)
    assert got[1].abs().max() > 0


@pytest.mark.parametrize("op,ref", PLAIN)
@pytest.mark.parametrize("p", [1, 2])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16])
def test_forward_ad_dual_tensors_match_reference(op, ref, p, dtype):
    x, y, tx, ty = _plain_inputs(50, 31, dtype=dtype, seed=p)

    def tangent(fn):
        with fwAD.dual_level():
            out = fn(fwAD.make_dual(x, tx), fwAD.make_dual(y, ty), p)
            primal, tan = fwAD.unpack_dual(out)
            assert tan is not None, "no tangent on the output"
            return primal, tan

    got = tangent(op)
    want = tangent(lambda a, b, q: ref(a.double(), b.double(), q))
    tol = dict(rtol=1e-10, atol=1e-12) if dtype == torch.float64 else dict(rtol=1e-2 if dtype == torch.float16 else 1e-5, atol=1e-3)
    assert got[1].dtype == dtype
    torch.testing.assert_close(got[1].double(), want[1], **tol)


@pytest.mark.parametrize("op,ref", NORMALIZED)
@pytest.mark.parametrize("n,m", [(30, 30), (30, 17)])
@pytest.mark.parametrize("p", [1, 2])
@pytest.mark.parametrize("which", ["x", "y", "xy"])
def test_normalized_jvp_matches_reference(op, ref, n, m, p, which):
    x, y, tx, ty = _normalized_inputs(n, m, seed=n + m + p)
    tx, ty = _with_tangents(which, tx, ty)
    got = torch.func.jvp(lambda a, b: op(a, b, p), (x, y), (tx, ty))
    want = torch.func.jvp(lambda a, b: ref(a, b, p), (x, y), (tx, ty))
    torch.testing.assert_close(got[0], want[0], rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(got[1], want[1], rtol=1e-9, atol=1e-12)
    with fwAD.dual_level():
        out = op(fwAD.make_dual(x, tx), fwAD.make_dual(y, ty), p)
        torch.testing.assert_close(fwAD.unpack_dual(out).tangent, want[1], rtol=1e-9, atol=1e-12)


def test_normalized_jvp_float32():
    x, y, tx, ty = (t.float() for t in _normalized_inputs(64, 50, seed=3))
    got = torch.func.jvp(lambda a, b: ops.normalized_wasserstein_1d(a, b, 2), (x, y), (tx, ty))[1]
    want = torch.func.jvp(lambda a, b: reference.normalized_wasserstein_1d(a, b, 2),
                          (x.double(), y.double()), (tx.double(), ty.double()))[1]
    torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("op,ref", PLAIN + NORMALIZED)
def test_func_grad_vjp_jacrev_jacfwd_match_reference(op, ref):
    normalized = op in (ops.normalized_wasserstein_1d, torch.ops.pdl_ext.normalized_wasserstein_1d)
    x, y, _, _ = _normalized_inputs(12, 9) if normalized else _plain_inputs(12, 9)
    for fn in (lambda f: torch.func.grad(lambda a, b: f(a, b, 2).sum(), argnums=(0, 1))(x, y),
               lambda f: torch.func.vjp(lambda a, b: f(a, b, 2), x, y)[1](torch.linspace(0.5, 1.5, x.shape[0] * (
                   x.shape[1] if normalized else 1), dtype=torch.float64).reshape(x.shape[:-1])),
               lambda f: torch.func.jacrev(lambda a: f(a, y, 1))(x),
               lambda f: torch.func.jacfwd(lambda a: f(a, y, 1))(x)):
        got, want = fn(op), fn(ref)
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("op,ref", PLAIN + NORMALIZED)
def test_second_derivatives_raise(op, ref):
    normalized = op in (ops.normalized_wasserstein_1d, torch.ops.pdl_ext.normalized_wasserstein_1d)
    x, y, _, _ = _normalized_inputs(6, 5) if normalized else _plain_inputs(6, 5)

    def f(a):
        return op(a, y, 2).sum()

    for second in (torch.func.hessian(f), torch.func.grad(lambda a: torch.func.grad(f)(a).sum()),
                   torch.func.jacfwd(torch.func.jacrev(f))):
        with pytest.raises(RuntimeError, match="second derivatives of the wasserstein ops are not supported"):
            second(x)
    a = x.clone().requires_grad_(True)
    with pytest.raises(RuntimeError, match="double backward"):
        torch.autograd.grad(f(a), a, create_graph=True)


@pytest.mark.parametrize("normalize", [False, True])
def test_pdl_loss_jvp(normalize, monkeypatch):
    torch.manual_seed(0)
    loss_fn = pdl_ext.PDLLoss(pretrained=False, layers=("relu1_2",), normalize=normalize).double()
    g = _gen(1)
    img = torch.rand(2, 3, 16, 16, generator=g, dtype=torch.float64)
    ref_img = torch.rand(2, 3, 16, 16, generator=g, dtype=torch.float64)
    t = torch.randn(2, 3, 16, 16, generator=g, dtype=torch.float64)
    value, tangent = torch.func.jvp(lambda a: loss_fn(a, ref_img), (img,), (t,))
    # the same derivative by reverse mode
    a = img.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(loss_fn(a, ref_img), a)
    torch.testing.assert_close(tangent, (grad * t).sum(), rtol=1e-9, atol=1e-12)
    assert tangent.abs() > 0
    # and by the pure-PyTorch reference (the fallback of an unbuilt extension)
    monkeypatch.setattr(extension, "COMPILED", False)
    monkeypatch.setattr(extension, "_warned", True)
    want = torch.func.jvp(lambda a: loss_fn(a, ref_img), (img,), (t,))
    torch.testing.assert_close((value, tangent), want, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("op,ref", PLAIN + NORMALIZED)
def test_per_sample_gradients_vmap_of_grad(op, ref):
    normalized = op in (ops.normalized_wasserstein_1d, torch.ops.pdl_ext.normalized_wasserstein_1d)
    x, y, _, _ = _normalized_inputs(10, 7) if normalized else _plain_inputs(10, 7)
    if normalized:  # one sample per vmapped slice: (1, C, N)
        x, y = x.unsqueeze(1), y.unsqueeze(1)

    def per_sample(fn):
        return torch.func.vmap(torch.func.grad(lambda a, b: fn(a, b, 2).sum(), argnums=(0, 1)))(x, y)

    for a, b in zip(per_sample(op), per_sample(ref)):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)
