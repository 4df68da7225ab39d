"""What is CUDA-specific: the kernels' size classes against the CPU kernel, streams, several GPUs, devices
mixed, the registration, and the losses on the GPU against the CPU.

The op's device-neutral tests (values, gradients, N != M, dtypes, NaN/inf, layouts, opcheck, compile,
determinism) run on ``cuda`` through the ``device`` fixture of tests/conftest.py, in
test_wasserstein_1d.py, test_normalized_wasserstein.py and test_properties.py. The GPU tests here skip
without a GPU or without a CUDA build of pdl_ext._C (CI compiles and links the CUDA kernels in
.ci/build_cuda.sh; `.ci/gpu_check.sh` runs them on a GPU machine). The first test runs everywhere: it
checks the unequal-size CUDA path's per-atom math (merge_atom_f64 in csrc/cuda/device_math.h, compiled
for the host) against the CPU kernel, bit for bit.
"""
from __future__ import annotations

import copy
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
#include "cuda/device_math.h"
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
  const double inv = 1.0 / total;  // the CUDA kernels' scale: double, rounded once to the dtype
  double cost_x = 0.0, cost_y = 0.0;
  for (long i = 0; i < n; ++i) {
    double c = 0.0;
    const double g = pdl_ext::merge_atom_f64<true>(i, x[i], n, m, p, [&](int64_t j) { return y[j]; }, c);
    cost_x += c;
    std::printf("%a\n", static_cast<double>(static_cast<A>(g * inv)));
  }
  for (long j = 0; j < m; ++j) {
    double c = 0.0;
    const double g = pdl_ext::merge_atom_f64<false>(j, y[j], m, n, p, [&](int64_t i) { return x[i]; }, c);
    cost_y += c;
    std::printf("%a\n", static_cast<double>(static_cast<A>(g * inv)));
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
    # Sorted rows with ties: positions are ranks, so the CPU kernel's gradients are merge_atom_f64's, bitwise.
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

# (leading shape, N, M): every block configuration of block_row_kernel (tiles 128, 512, 2048, 4096)
# and the segmented-sort path (longer than 4096, or 2048 for float64), equal and unequal sizes.
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


@needs_gpu
@pytest.mark.parametrize("lead,n,m", SHAPES)
@pytest.mark.parametrize("p", [1, 2])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_size_classes_match_cpu_kernel(lead, n, m, p, dtype, cpu_kernel):
    x, y = _inputs(lead, n, m, dtype, seed=n * 131 + m)
    # Values close; with N == M the same sort order (ties by position) and the same per-pair
    # arithmetic give the same derivative bits (cpu_kernel.check_fwd, tests/conftest.py).
    w, dx, dy = cpu_kernel.check_fwd(x.to(DEVICE), y.to(DEVICE), p)
    assert w.device == DEVICE and w.shape == x.shape[:-1] and dx.shape == x.shape and dy.shape == y.shape
    assert w.dtype == dx.dtype == dy.dtype == dtype
    if dtype in (torch.float32, torch.float64):
        wr = reference.wasserstein_1d(x.to(DEVICE), y.to(DEVICE), p)
        torch.testing.assert_close(w, wr, **cpu_kernel.TOL[dtype])


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
def test_second_device(cpu_kernel):
    x, y = _inputs((5,), 300, 200, torch.float32, seed=4)
    expected = fwd(x, y, 1)
    with torch.cuda.device(0):
        got = fwd(x.to("cuda:1"), y.to("cuda:1"), 1)
    assert got[0].device == torch.device("cuda:1")
    torch.testing.assert_close(got[0].cpu(), expected[0], **cpu_kernel.TOL[torch.float32])
    cpu_kernel.close_grad(got[1].cpu(), expected[1], torch.float32)


@needs_gpu
def test_device_mismatch_is_an_error():
    with pytest.raises(RuntimeError, match="y must be on the device of x"):
        fwd(torch.randn(2, 5, device=DEVICE), torch.randn(2, 5), 1)
    with pytest.raises(ValueError, match="y must be on the device of x"):
        pdl_ext.wasserstein_1d(torch.randn(2, 5, device=DEVICE), torch.randn(2, 5), 1)


# ----------------------------------------------------------------------------------------------
# The losses on the GPU against the CPU (.ci/gpu_check.sh stage 2: `pytest -m gpu_losses`)


def _relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    return float((a - b).norm() / b.norm().clamp_min(1e-300))


@pytest.fixture
def exact_cuda_math():
    """No TF32 in cuDNN convolutions and matmuls for the test (torch allows it in convolutions by
    default), so a float32 network on the GPU computes what it computes on the CPU up to rounding."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def _loss_on_both(loss_cpu, x, y, tol):
    """loss(x, y) and d/dx on the CPU and on the GPU (a deep copy of the module); compares them."""
    results = []
    for dev, loss in ((torch.device("cpu"), loss_cpu), (DEVICE, copy.deepcopy(loss_cpu).to(DEVICE))):
        xd = x.detach().to(dev).requires_grad_(True)
        value = loss(xd, y.to(dev)) if y is not None else loss(xd)
        (grad,) = torch.autograd.grad(value.sum(), xd)
        assert value.device.type == dev.type and grad.device.type == dev.type
        results.append((value.detach(), grad))
    (v_cpu, g_cpu), (v_gpu, g_gpu) = results
    assert torch.isfinite(v_gpu).all() and torch.isfinite(g_gpu).all()
    assert g_cpu.abs().max() > 0  # the gradient reaches the image
    # Relative errors of the whole value and gradient: sort orders of nearly tied features may differ
    # between devices, which moves single atoms' subgradients but not the sums.
    value_tol, grad_tol = tol
    assert _relative_error(v_gpu, v_cpu) < value_tol, (v_gpu, v_cpu)
    assert _relative_error(g_gpu, g_cpu) < grad_tol, _relative_error(g_gpu, g_cpu)


def _images(b, size, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, 3, size, size, generator=g, dtype=torch.float64).to(dtype)


# (value, gradient) relative errors: float32 features rounded differently can swap nearly tied atoms
# (and ReLU can zero one side's tiny value), which moves single p=1 subgradients of size 1/N.
LOSS_TOL = {torch.float64: (1e-9, 1e-8), torch.float32: (1e-4, 1e-2)}


@needs_gpu
@pytest.mark.gpu_losses
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("kwargs", [dict(), dict(normalize=True), dict(p=2, projection="channel"),
                                    dict(projection=8, normalize=True), dict(pixel_loss="l1")],
                         ids=["spatial", "normalized", "channel-p2", "sliced-normalized", "pixel-l1"])
def test_pdl_loss_on_cuda_matches_cpu(kwargs, dtype, exact_cuda_math):
    from pdl_ext.losses.pdl import PDLLoss

    torch.manual_seed(0)
    loss = PDLLoss(layers=("relu1_2", "relu2_2", "relu3_3", "relu4_3"), pretrained=False, **kwargs).to(dtype)
    _loss_on_both(loss, _images(2, 32, dtype, 1), _images(2, 32, dtype, 2), LOSS_TOL[dtype])


@needs_gpu
@pytest.mark.gpu_losses
@pytest.mark.parametrize("distance", ["mse", "pdl"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
def test_mdf_loss_on_cuda_matches_cpu(distance, dtype, exact_cuda_math):
    from pdl_ext.losses.mdf import MDFLoss

    torch.manual_seed(0)
    loss = MDFLoss(num_scales=3, distance=distance, reduction="none").to(dtype)
    with torch.no_grad():  # random BatchNorm statistics: the eval-mode normalization matters
        for name, t in loss.state_dict().items():
            if name.endswith("running_var"):
                t.uniform_(0.5, 1.5)
            elif name.endswith("running_mean"):
                t.uniform_(-0.2, 0.2)
    _loss_on_both(loss, _images(2, 40, dtype, 3), _images(2, 40, dtype, 4), LOSS_TOL[dtype])


@needs_gpu
@pytest.mark.gpu_losses
@pytest.mark.parametrize("fidelity", ["l1", None])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
def test_nima_loss_on_cuda_matches_cpu(fidelity, dtype, exact_cuda_math):
    from torch import nn

    from pdl_ext.losses.nima import NIMA, NIMALoss

    torch.manual_seed(0)
    backbone = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(),
                             nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU())
    loss = NIMALoss(NIMA(backbone, dropout=0.0), weight=0.5, fidelity=fidelity, reduction="none").to(dtype)
    y = _images(3, 32, dtype, 6) if fidelity else None
    _loss_on_both(loss, _images(3, 32, dtype, 5), y, LOSS_TOL[dtype])


@needs_gpu
@pytest.mark.gpu_losses
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bfloat16"])
@pytest.mark.parametrize("b,c,n,m", [(2, 64, 4096, 4096), (2, 128, 1024, 900), (1, 64, 16384, 16384)])
def test_normalized_op_at_feature_sizes_matches_cpu(b, c, n, m, dtype, cpu_kernel):
    # VGG-like feature sizes (relu1_2 of 64x64, relu3_3 of 128x128, relu1_2 of 128x128): the values,
    # norms and, per row, the sorted derivatives (norms rounded differently may swap near ties).
    g = torch.Generator().manual_seed(n + c)
    x = torch.relu(torch.randn(b, c, n, generator=g)).to(dtype)
    y = torch.relu(torch.randn(b, c, m, generator=g)).to(dtype)
    op = torch.ops.pdl_ext.normalized_wasserstein_1d_fwd
    w, dx, dy, nx, ny = op(x.to(DEVICE), y.to(DEVICE), 1, True, True)
    wc, dxc, dyc, nxc, nyc = op(x, y, 1, True, True)
    tol = cpu_kernel.TOL
    torch.testing.assert_close(w.cpu(), wc, **tol[dtype])
    torch.testing.assert_close(nx.cpu(), nxc, **tol[nxc.dtype])
    cpu_kernel.close_grad(torch.sort(dx.cpu(), -1).values, torch.sort(dxc, -1).values, dtype)
    cpu_kernel.close_grad(torch.sort(dy.cpu(), -1).values, torch.sort(dyc, -1).values, dtype)
