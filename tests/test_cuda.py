"""The wasserstein_1d op suite on CUDA: the CUDA kernels against the CPU kernel and the reference.

The GPU tests skip without a GPU or without a CUDA build of pdl_ext._C (CI compiles and links the
CUDA kernels in .ci/build_cuda.sh). The first test runs everywhere: it checks the shared math the
unequal-size CUDA path uses (merge_atom in csrc/wasserstein_math.h) against the CPU kernel.
"""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import torch

import pdl_ext
from pdl_ext import extension, reference

ROOT = Path(__file__).resolve().parents[1]
DEVICE = torch.device("cuda")
GPU = torch.cuda.is_available() and extension.has_kernel("wasserstein_1d_fwd", "CUDA")
needs_gpu = pytest.mark.skipif(not GPU, reason="needs a GPU and pdl_ext._C built with CUDA (FORCE_CUDA=1)")
requires_ext = pytest.mark.skipif(not extension.COMPILED, reason="C++ extension not built")


def fwd(x, y, p, grad_x=True, grad_y=True):
    return torch.ops.pdl_ext.wasserstein_1d_fwd(x, y, p, grad_x, grad_y)


# ----------------------------------------------------------------------------------------------
# The shared math of the unequal-size CUDA path, on the host

_MERGE_ATOM_MAIN = r"""
#include "wasserstein_math.h"
#include <cstdio>
#include <cstdlib>
#include <vector>

// stdin: n m p, then the sorted x and y (hex floats); stdout: dW/dx, dW/dy (hex), W from x atoms, W from y atoms.
template <typename A> int run(long n, long m, int p) {
  std::vector<A> x(n), y(m);
  char buf[64];
  for (auto& v : x) { if (std::scanf("%63s", buf) != 1) return 1; v = static_cast<A>(std::strtod(buf, nullptr)); }
  for (auto& v : y) { if (std::scanf("%63s", buf) != 1) return 1; v = static_cast<A>(std::strtod(buf, nullptr)); }
  const double total = static_cast<double>(n) * static_cast<double>(m);
  const A inv = static_cast<A>(1.0 / total);
  A cost_x = A(0), cost_y = A(0);
  for (long i = 0; i < n; ++i) {
    A c = A(0);
    const A g = pdl_ext::merge_atom<true>(i, x[i], n, m, p, [&](int64_t j) { return y[j]; }, c);
    cost_x += c;
    std::printf("%a\n", static_cast<double>(g * inv));
  }
  for (long j = 0; j < m; ++j) {
    A c = A(0);
    const A g = pdl_ext::merge_atom<false>(j, y[j], m, n, p, [&](int64_t i) { return x[i]; }, c);
    cost_y += c;
    std::printf("%a\n", static_cast<double>(g * inv));
  }
  std::printf("%a\n%a\n", static_cast<double>(cost_x) / total, static_cast<double>(cost_y) / total);
  return 0;
}

int main(int argc, char** argv) {
  long n, m;
  int p;
  if (argc < 2 || std::scanf("%ld %ld %d", &n, &m, &p) != 3) return 2;
  return argv[1][0] == 'd' ? run<double>(n, m, p) : run<float>(n, m, p);
}
"""


@pytest.fixture(scope="module")
def merge_atom_exe(tmp_path_factory):
    cxx = shutil.which("c++") or shutil.which("g++")
    if cxx is None:
        pytest.skip("no C++ compiler")
    d = tmp_path_factory.mktemp("merge_atom")
    (d / "main.cpp").write_text(_MERGE_ATOM_MAIN)
    exe = d / "merge_atom"
    # No FMA contraction: the walk of the CPU kernel rounds every product.
    subprocess.run([cxx, "-std=c++17", "-O2", "-ffp-contract=off", f"-I{ROOT / 'csrc'}", str(d / "main.cpp"),
                    "-o", str(exe)], check=True, capture_output=True, timeout=120)
    return exe


@requires_ext
@pytest.mark.parametrize("n,m", [(1, 5), (5, 1), (3, 7), (7, 3), (6, 4), (100, 37), (37, 100), (64, 63)])
@pytest.mark.parametrize("p", [1, 2])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_merge_atom_matches_cpu_walk(merge_atom_exe, n, m, p, dtype):
    # Sorted rows with ties: positions are ranks, so the CPU kernel's gradients are merge_atom's, bitwise.
    g = torch.Generator().manual_seed(7 * n + m)
    x = torch.sort((torch.randint(-4, 5, (n,), generator=g) / 4 + torch.randn(n, generator=g) * (torch.rand(n, generator=g) < 0.5)).to(dtype)).values
    y = torch.sort((torch.randint(-4, 5, (m,), generator=g) / 4 + torch.randn(m, generator=g) * 0.3).to(dtype)).values
    text = f"{n} {m} {p}\n" + "\n".join(float(v).hex() for v in torch.cat([x, y]).tolist()) + "\n"
    kind = "d" if dtype == torch.float64 else "f"
    out = subprocess.run([str(merge_atom_exe), kind], input=text, capture_output=True, text=True, check=True, timeout=60)
    vals = [float.fromhex(t) for t in out.stdout.split()]
    assert len(vals) == n + m + 2
    gx = torch.tensor(vals[:n], dtype=torch.float64).to(dtype)
    gy = torch.tensor(vals[n:n + m], dtype=torch.float64).to(dtype)
    w, dx, dy = fwd(x[None], y[None], p)
    assert torch.equal(gx, dx[0]), (gx - dx[0]).abs().max()
    assert torch.equal(gy, dy[0]), (gy - dy[0]).abs().max()
    tol = dict(rtol=1e-5, atol=1e-7) if dtype == torch.float32 else dict(rtol=1e-12, atol=1e-14)
    for loss in vals[n + m:]:
        torch.testing.assert_close(torch.tensor(loss, dtype=torch.float64), w[0].double(), **tol)
    torch.testing.assert_close(w[0], reference.wasserstein_1d(x, y, p), **tol)


# ----------------------------------------------------------------------------------------------
# Registration (no GPU needed)


@pytest.mark.skipif(not extension.has_kernel("wasserstein_1d_fwd", "CUDA"), reason="pdl_ext._C built without CUDA")
def test_every_cpu_op_has_a_cuda_kernel():
    has = torch._C._dispatch_has_kernel_for_dispatch_key
    ops = [n for n in torch._C._dispatch_get_all_op_names() if n.startswith("pdl_ext::")]
    with_cpu = [op for op in ops if has(op, "CPU")]
    assert with_cpu
    assert [op for op in with_cpu if not has(op, "CUDA")] == []
    assert pdl_ext.extension_info()["cuda"] is True


# ----------------------------------------------------------------------------------------------
# The CUDA kernels

# (leading shape, N, M): every block configuration (tiles 128, 512, 2048, 4096) and the segmented
# path (longer than 4096, or 2048 for float64), equal and unequal sizes.
SHAPES = [
    ((3,), 1, 1),
    ((4,), 1, 9),
    ((2,), 9, 1),
    ((5,), 7, 7),
    ((2, 3), 100, 128),
    ((3,), 129, 129),
    ((2,), 512, 300),
    ((2,), 2048, 2048),
    ((2,), 1000, 2047),
    ((2,), 4096, 4096),
    ((2,), 3000, 4096),
    ((2,), 4097, 4097),
    ((2,), 5000, 3001),
    ((2,), 65536, 65536),
]
TOL = {
    torch.float64: dict(rtol=1e-10, atol=1e-12),
    torch.float32: dict(rtol=1e-4, atol=1e-6),
    torch.float16: dict(rtol=2e-3, atol=1e-5),
    torch.bfloat16: dict(rtol=1.6e-2, atol=1e-5),
}


def _inputs(lead, n, m, dtype, seed=0):
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


def _close_grad(actual, expected, dtype):
    # Gradients of unequal sizes are sums of several terms; FMA on the GPU may round them differently.
    scale = expected.double().abs().max().item() if expected.numel() else 0.0
    tol = TOL[dtype]
    torch.testing.assert_close(actual, expected, rtol=tol["rtol"], atol=max(tol["atol"], 1e-6 * scale))


@needs_gpu
@pytest.mark.parametrize("lead,n,m", SHAPES)
@pytest.mark.parametrize("p", [1, 2])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_matches_cpu_kernel(lead, n, m, p, dtype):
    x, y = _inputs(lead, n, m, dtype, seed=n * 131 + m)
    w, dx, dy = fwd(x.to(DEVICE), y.to(DEVICE), p)
    wc, dxc, dyc = fwd(x, y, p)
    assert w.device == DEVICE and w.shape == wc.shape and dx.shape == x.shape and dy.shape == y.shape
    assert w.dtype == dx.dtype == dy.dtype == dtype
    torch.testing.assert_close(w.cpu(), wc, **TOL[dtype])
    if n == m:
        # Same sort order (ties by position), same per-pair arithmetic: the same bits.
        assert torch.equal(dx.cpu(), dxc)
        assert torch.equal(dy.cpu(), dyc)
    else:
        _close_grad(dx.cpu(), dxc, dtype)
        _close_grad(dy.cpu(), dyc, dtype)
    if dtype in (torch.float32, torch.float64):
        wr = reference.wasserstein_1d(x.to(DEVICE), y.to(DEVICE), p)
        torch.testing.assert_close(w, wr, **TOL[dtype])


@needs_gpu
@pytest.mark.parametrize("lead,n,m", [((4,), 300, 300), ((3,), 300, 200), ((2,), 5000, 5000), ((2,), 5000, 3001)])
@pytest.mark.parametrize("grad_x,grad_y", [(True, False), (False, True), (False, False)])
def test_gradient_flags(lead, n, m, grad_x, grad_y):
    x, y = _inputs(lead, n, m, torch.float32, seed=3)
    x, y = x.to(DEVICE), y.to(DEVICE)
    w_all, dx_all, dy_all = fwd(x, y, 2)
    w, dx, dy = fwd(x, y, 2, grad_x, grad_y)
    torch.testing.assert_close(w, w_all, rtol=1e-6, atol=1e-7)
    assert torch.equal(dx, dx_all) if grad_x else dx.numel() == 0
    assert torch.equal(dy, dy_all) if grad_y else dy.numel() == 0


@needs_gpu
@pytest.mark.parametrize("n,m", [(20, 20), (20, 13), (5000, 5000), (5000, 3001)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_nan_poisons_only_its_row(n, m, dtype):
    x, y = _inputs((4,), n, m, dtype, seed=5)
    x[0, n // 2] = float("nan")
    y[1, 0] = float("nan")
    x[2, -1] = -float("nan")
    w, dx, dy = fwd(x.to(DEVICE), y.to(DEVICE), 1)
    assert torch.isnan(w[:3]).all() and torch.isnan(dx[:3]).all() and torch.isnan(dy[:3]).all()
    wc, dxc, dyc = fwd(x[3:], y[3:], 1)
    torch.testing.assert_close(w[3:].cpu(), wc, **TOL[dtype])
    _close_grad(dx[3:].cpu(), dxc, dtype)
    _close_grad(dy[3:].cpu(), dyc, dtype)


@needs_gpu
@pytest.mark.parametrize("n", [4, 5000])
def test_infinities_and_signed_zeros_match_cpu(n):
    x = torch.zeros(3, n)
    y = torch.zeros(3, n)
    x[0, ::2] = -0.0
    y[0, 1::2] = -0.0
    x[1, 0], y[1, 1] = float("inf"), float("inf")  # inf - inf = NaN in that row, as IEEE says
    x[2, 0], y[2, 0] = -float("inf"), 1.0
    w, dx, dy = fwd(x.to(DEVICE), y.to(DEVICE), 1)
    wc, dxc, dyc = fwd(x, y, 1)
    torch.testing.assert_close(w.cpu(), wc, equal_nan=True)
    torch.testing.assert_close(dx.cpu(), dxc, equal_nan=True)
    torch.testing.assert_close(dy.cpu(), dyc, equal_nan=True)
    assert w[0].item() == 0.0 and (dx[0] == 0).all()


@needs_gpu
@pytest.mark.parametrize("p", [1, 2])
def test_autograd_non_contiguous_and_leading_dims(p):
    g = torch.Generator().manual_seed(11)
    base_x = torch.randn(4, 6, 50, generator=g, dtype=torch.float64)
    base_y = torch.randn(4, 6, 80, generator=g, dtype=torch.float64)
    results = []
    for dev in (torch.device("cpu"), DEVICE):
        bx = base_x.to(dev).requires_grad_(True)
        by = base_y.to(dev).requires_grad_(True)
        x = bx.transpose(0, 1)[..., ::2]  # (6, 4, 25), non-contiguous
        y = by.transpose(0, 1)[..., 1::2]  # (6, 4, 40)
        w = pdl_ext.wasserstein_1d(x, y, p)
        w.backward(torch.linspace(0.5, 2.0, w.numel(), dtype=w.dtype, device=dev).reshape(w.shape))
        results.append((w.detach().cpu(), bx.grad.cpu(), by.grad.cpu()))
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)


@needs_gpu
def test_empty_and_scalar_shapes():
    w, dx, dy = fwd(torch.randn(0, 5, device=DEVICE), torch.randn(0, 3, device=DEVICE), 1)
    assert w.shape == (0,) and dx.shape == (0, 5) and dy.shape == (0, 3)
    x, y = torch.randn(7, dtype=torch.float64), torch.randn(5, dtype=torch.float64)
    w, dx, dy = fwd(x.to(DEVICE), y.to(DEVICE), 2)
    assert w.shape == () and dx.shape == (7,) and dy.shape == (5,)
    torch.testing.assert_close(w.cpu(), reference.wasserstein_1d(x, y, 2), rtol=1e-12, atol=1e-14)


@needs_gpu
@pytest.mark.parametrize("p", [1, 2])
@pytest.mark.parametrize("n,m", [(6, 6), (7, 4), (1, 5), (3000, 3000)])
def test_gradcheck(p, n, m):
    g = torch.Generator().manual_seed(n + m)
    x = torch.randn(2, n, generator=g, dtype=torch.float64).to(DEVICE).requires_grad_(True)
    y = torch.randn(2, m, generator=g, dtype=torch.float64).to(DEVICE).requires_grad_(True)
    if n > 100:  # long rows: check the gradient along a few random directions only
        assert torch.autograd.gradcheck(lambda a, b: pdl_ext.wasserstein_1d(a, b, p), (x, y), fast_mode=True)
    else:
        assert torch.autograd.gradcheck(lambda a, b: pdl_ext.wasserstein_1d(a, b, p), (x, y))


@needs_gpu
@pytest.mark.parametrize("n,m", [(32, 32), (32, 20), (5000, 5000)])
@pytest.mark.parametrize("grad_x,grad_y", [(True, False), (True, True), (False, False)])
def test_opcheck_fwd(n, m, grad_x, grad_y):
    x = torch.randn(3, n, device=DEVICE, requires_grad=grad_x)
    y = torch.randn(3, m, device=DEVICE, requires_grad=grad_y)
    torch.library.opcheck(torch.ops.pdl_ext.wasserstein_1d_fwd, (x, y, 1, grad_x, grad_y))


@needs_gpu
def test_opcheck_composite_and_backward():
    x = torch.randn(3, 40, device=DEVICE, requires_grad=True)
    y = torch.randn(3, 30, device=DEVICE)
    torch.library.opcheck(torch.ops.pdl_ext.wasserstein_1d, (x, y, 2))
    torch.library.opcheck(torch.ops.pdl_ext.wasserstein_1d_bwd, (torch.randn(3, device=DEVICE), torch.randn(3, 40, device=DEVICE)))


@needs_gpu
def test_torch_compile_fullgraph():
    torch._dynamo.reset()

    def loss(a, b):
        return (pdl_ext.wasserstein_1d(a, b, 2) * 2).sum()

    compiled = torch.compile(loss, fullgraph=True)
    x = torch.randn(8, 300, device=DEVICE, requires_grad=True)
    y = torch.randn(8, 300, device=DEVICE)
    eager = loss(x, y)
    (gx_eager,) = torch.autograd.grad(eager, x)
    out = compiled(x, y)
    (gx,) = torch.autograd.grad(out, x)
    torch.testing.assert_close(out, eager)
    torch.testing.assert_close(gx, gx_eager)


@needs_gpu
@pytest.mark.parametrize("n,m", [(1000, 1000), (700, 999), (70000, 70000), (70000, 50000)])
def test_deterministic_bits(n, m):
    x, y = _inputs((3,), n, m, torch.float32, seed=9)
    x, y = x.to(DEVICE), y.to(DEVICE)
    first = fwd(x, y, 1)
    for _ in range(2):
        again = fwd(x, y, 1)
        assert all(torch.equal(a, b) for a, b in zip(first, again))


@needs_gpu
def test_runs_on_the_current_stream():
    x, y = _inputs((64,), 5000, 5000, torch.float32, seed=2)
    x, y = x.to(DEVICE), y.to(DEVICE)
    expected = fwd(x, y, 2)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        got = fwd(x, y, 2)
        small = fwd(x[:, :100], y[:, :100], 2)
    side.synchronize()
    assert all(torch.equal(a, b) for a, b in zip(got, expected))
    assert all(torch.equal(a, b) for a, b in zip(small, fwd(x[:, :100], y[:, :100], 2)))


@needs_gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 GPUs")
def test_second_device():
    x, y = _inputs((5,), 300, 200, torch.float32, seed=4)
    expected = fwd(x, y, 1)
    with torch.cuda.device(0):
        got = fwd(x.to("cuda:1"), y.to("cuda:1"), 1)
    assert got[0].device == torch.device("cuda:1")
    torch.testing.assert_close(got[0].cpu(), expected[0], **TOL[torch.float32])
    _close_grad(got[1].cpu(), expected[1], torch.float32)


@needs_gpu
def test_device_mismatch_is_an_error():
    with pytest.raises(RuntimeError, match="y must be on the device of x"):
        fwd(torch.randn(2, 5, device=DEVICE), torch.randn(2, 5), 1)
    with pytest.raises(ValueError, match="y must be on the device of x"):
        pdl_ext.wasserstein_1d(torch.randn(2, 5, device=DEVICE), torch.randn(2, 5), 1)


# ----------------------------------------------------------------------------------------------
# normalized_wasserstein_1d (channel L2 normalization fused into the same kernels)


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


@needs_gpu
@pytest.mark.parametrize("b,n,m", [(2, 50, 50), (2, 300, 200), (1, 5000, 5000), (2, 4100, 3000)])
@pytest.mark.parametrize("p", [1, 2])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_normalized_matches_cpu_kernel(b, n, m, p, dtype):
    # Exact norms: the normalized values, and so the sort orders, are the same on both devices.
    x, y = _exact_norm_features(b, n, dtype, seed=n), _exact_norm_features(b, m, dtype, seed=m + 1)
    w, dx, dy, nx, ny = torch.ops.pdl_ext.normalized_wasserstein_1d_fwd(x.to(DEVICE), y.to(DEVICE), p, True, True)
    wc, dxc, dyc, nxc, nyc = torch.ops.pdl_ext.normalized_wasserstein_1d_fwd(x, y, p, True, True)
    assert torch.equal(nx.cpu(), nxc) and torch.equal(ny.cpu(), nyc)
    torch.testing.assert_close(w.cpu(), wc, **TOL[dtype])
    if n == m:
        assert torch.equal(dx.cpu(), dxc)
        assert torch.equal(dy.cpu(), dyc)
    else:
        _close_grad(dx.cpu(), dxc, dtype)
        _close_grad(dy.cpu(), dyc, dtype)


@needs_gpu
@pytest.mark.parametrize("b,c,n,m", [(2, 3, 50, 50), (2, 4, 300, 200), (1, 3, 5000, 5000), (2, 2, 4100, 3000)])
@pytest.mark.parametrize("p", [1, 2])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16])
def test_normalized_random_features_match_cpu_kernel(b, c, n, m, p, dtype):
    x, y = _features(b, c, n, dtype, seed=n), _features(b, c, m, dtype, seed=m + 1)
    w, dx, dy, nx, ny = torch.ops.pdl_ext.normalized_wasserstein_1d_fwd(x.to(DEVICE), y.to(DEVICE), p, True, True)
    wc, dxc, dyc, nxc, nyc = torch.ops.pdl_ext.normalized_wasserstein_1d_fwd(x, y, p, True, True)
    torch.testing.assert_close(w.cpu(), wc, **TOL[dtype])
    torch.testing.assert_close(nx.cpu(), nxc, **TOL[nxc.dtype])
    torch.testing.assert_close(ny.cpu(), nyc, **TOL[nyc.dtype])
    # Norms rounded differently may swap two nearly equal values in the sort, and with them their
    # gradients; each row's sorted gradients do not depend on such swaps.
    _close_grad(torch.sort(dx.cpu(), -1).values, torch.sort(dxc, -1).values, dtype)
    _close_grad(torch.sort(dy.cpu(), -1).values, torch.sort(dyc, -1).values, dtype)


@needs_gpu
@pytest.mark.parametrize("b,c,n,m", [(2, 3, 40, 30), (1, 4, 5000, 5000)])
def test_normalized_autograd_matches_cpu_and_reference(b, c, n, m):
    from pdl_ext.ops import normalized_wasserstein_1d

    x, y = _features(b, c, n, torch.float64, seed=1), _features(b, c, m, torch.float64, seed=2)
    weights = torch.linspace(0.5, 2.0, b * c, dtype=torch.float64).reshape(b, c)
    results = []
    for dev, fn in ((torch.device("cpu"), normalized_wasserstein_1d), (DEVICE, normalized_wasserstein_1d),
                    (DEVICE, reference.normalized_wasserstein_1d)):
        xd = x.to(dev).requires_grad_(True)
        yd = y.to(dev).requires_grad_(True)
        w = fn(xd, yd, 2)
        gx, gy = torch.autograd.grad(w, (xd, yd), weights.to(dev))
        results.append((w.detach().cpu(), gx.cpu(), gy.cpu()))
    for other in results[1:]:
        for a, e in zip(other, results[0]):
            torch.testing.assert_close(a, e, rtol=1e-9, atol=1e-12)


@needs_gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16])
def test_normalized_bwd_matches_cpu_kernel(dtype):
    g = torch.Generator().manual_seed(3)
    f = _features(3, 5, 700, dtype, seed=4)
    d = torch.randn(3, 5, 700, generator=g).to(dtype)
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    norm = torch.linalg.vector_norm(f.to(acc), dim=1)
    grad = torch.randn(3, 5, generator=g, dtype=acc).to(dtype)
    got = torch.ops.pdl_ext.normalized_wasserstein_1d_bwd(grad.to(DEVICE), d.to(DEVICE), f.to(DEVICE), norm.to(DEVICE))
    want = torch.ops.pdl_ext.normalized_wasserstein_1d_bwd(grad, d, f, norm)
    assert got.dtype == dtype and got.shape == f.shape
    assert (got[:, :, ::7] == 0).all()  # all-zero positions: gradient 0
    torch.testing.assert_close(got.cpu(), want, **TOL[dtype])


@needs_gpu
@pytest.mark.parametrize("n,m", [(6, 6), (7, 4)])
def test_normalized_gradcheck(n, m):
    from pdl_ext.ops import normalized_wasserstein_1d

    g = torch.Generator().manual_seed(n * m)
    x = (torch.rand(2, 3, n, generator=g, dtype=torch.float64) + 0.1).to(DEVICE).requires_grad_(True)
    y = (torch.rand(2, 3, m, generator=g, dtype=torch.float64) + 0.1).to(DEVICE).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda a, b: normalized_wasserstein_1d(a, b, 2), (x, y))


@needs_gpu
def test_normalized_opcheck():
    x = _features(2, 3, 40, torch.float32, seed=5).to(DEVICE).requires_grad_(True)
    y = _features(2, 3, 30, torch.float32, seed=6).to(DEVICE)
    torch.library.opcheck(torch.ops.pdl_ext.normalized_wasserstein_1d_fwd, (x, y, 1, True, False))
    _, d, _, norm, _ = torch.ops.pdl_ext.normalized_wasserstein_1d_fwd(x, y, 1, True, False)
    torch.library.opcheck(torch.ops.pdl_ext.normalized_wasserstein_1d_bwd,
                          (torch.randn(2, 3, device=DEVICE), d, x.detach(), norm))
