"""The CUDA kernels (csrc/cuda/) against the CPU kernel, the pure-PyTorch reference and float64.

Two tests run everywhere (no GPU): the sort-key bits the CUDA radix sorts skip for float16/bfloat16
rows, and merge_atom_f64 (csrc/cuda/device_math.h, the unequal-size gradient summed in double)
compiled for the host. The others need a GPU and pdl_ext._C built with CUDA; they skip otherwise.

Gradient bits: the CUDA kernels round every product and sum of the gradients as the CPU build does
(-ffp-contract=off), so for float32 and float64 they promise the CPU kernel's gradient bits when
both sort alike: equal sizes, and unequal sizes where the CPU sums each atom's gradient as
merge_atom_f64 documents (tests marked "parity").
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import pdl_ext
from pdl_ext import extension, reference

ROOT = Path(__file__).resolve().parents[1]
CUDA_SRC = ROOT / "csrc" / "cuda" / "wasserstein_1d_cuda.cu"
DEVICE = torch.device("cuda")
GPU = torch.cuda.is_available() and extension.has_kernel("wasserstein_1d_fwd", "CUDA")
needs_gpu = pytest.mark.skipif(not GPU, reason="needs a GPU and pdl_ext._C built with CUDA (FORCE_CUDA=1)")
requires_ext = pytest.mark.skipif(not extension.COMPILED, reason="C++ extension not built")

TOL = {
    torch.float64: dict(rtol=1e-10, atol=1e-12),
    torch.float32: dict(rtol=1e-4, atol=1e-6),
    torch.float16: dict(rtol=2e-3, atol=1e-5),
    torch.bfloat16: dict(rtol=1.6e-2, atol=1e-5),
}


def fwd(x, y, p, grad_x=True, grad_y=True):
    return torch.ops.pdl_ext.wasserstein_1d_fwd(x, y, p, grad_x, grad_y)


def nfwd(x, y, p, grad_x=True, grad_y=True):
    return torch.ops.pdl_ext.normalized_wasserstein_1d_fwd(x, y, p, grad_x, grad_y)


def _rows(lead, n, m, dtype, seed=0):
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


def _features(b, c, n, dtype, seed):
    """ReLU-like features (b, c, n) with all-zero positions (norm 0) every 7th position."""
    g = torch.Generator().manual_seed(seed)
    f = torch.relu(torch.randn(b, c, n, generator=g, dtype=torch.float64))
    f[:, :, ::7] = 0.0
    return f.to(dtype)


def _exact_norm_features(b, n, dtype, seed):
    """(b, 3, n) features whose channel norms every summation order gets exactly (Pythagorean
    quadruples scaled by powers of 2), so both devices scale by the same bits."""
    quads = torch.tensor([[1, 2, 2], [2, 3, 6], [1, 4, 8], [4, 4, 7], [2, 6, 9], [6, 6, 7], [3, 4, 12], [2, 10, 11],
                          [0, 3, 4], [0, 0, 1]], dtype=torch.float64)
    g = torch.Generator().manual_seed(seed)
    v = quads[torch.randint(len(quads), (b, n), generator=g)]
    v = torch.gather(v, 2, torch.argsort(torch.rand(b, n, 3, generator=g), dim=2))
    v = v * torch.pow(2.0, torch.randint(-3, 4, (b, n, 1), generator=g).double())
    v[:, ::11] = 0.0
    return v.transpose(1, 2).contiguous().to(dtype)


def _close(actual, expected, dtype, scale_rtol=1e-6):
    """assert_close with an absolute tolerance relative to the largest expected value (sums of terms
    of both signs lose relative precision, whatever the device)."""
    actual, expected = actual.cpu(), expected.cpu()
    scale = expected.double().abs().nan_to_num(0.0, 0.0, 0.0).max().item() if expected.numel() else 0.0
    tol = TOL[dtype]
    torch.testing.assert_close(actual, expected.to(actual.dtype), rtol=tol["rtol"],
                               atol=max(tol["atol"], scale_rtol * scale), equal_nan=True)


def _bits_equal(actual, expected):
    """Bitwise equality, NaN payloads aside."""
    actual, expected = actual.cpu(), expected.cpu()
    assert actual.dtype == expected.dtype and actual.shape == expected.shape
    both_nan = torch.isnan(actual) & torch.isnan(expected)
    diff = (actual != expected) & ~both_nan
    assert not diff.any(), f"{int(diff.sum())} of {diff.numel()} differ, first at {diff.nonzero()[0].tolist()}: " \
                           f"{actual[diff][0].item()!r} vs {expected[diff][0].item()!r}"
    # -0.0 vs +0.0 compare equal above: check the sign bits too.
    assert torch.equal(torch.signbit(actual) | both_nan, torch.signbit(expected) | both_nan)


# ----------------------------------------------------------------------------------------------
# Sort-key bits of float16 / bfloat16 rows (no GPU needed)


def _float32_keys(v: torch.Tensor) -> torch.Tensor:
    """KeyTraits<float>::to_key (csrc/wasserstein_math.h) of v widened to float32, as int64:
    -0.0 folded onto +0.0, then every bit flipped for a negative value, the sign bit for another."""
    u = (v.float() + 0.0).view(torch.int32).to(torch.int64) & 0xFFFFFFFF
    mask = torch.where(u >= 0x80000000, 0xFFFFFFFF, 0x80000000)
    return u ^ mask


def _begin_bit_in_source(dtype) -> int:
    """The begin_bit sort_begin_bit (csrc/cuda/wasserstein_1d_cuda.cu) chooses for unscaled rows."""
    name = {torch.float16: "at::Half", torch.bfloat16: "at::BFloat16"}[dtype]
    found = re.search(re.escape(f"std::is_same_v<scalar_t, {name}>") + r"\)\s*\{\s*return (\d+);", CUDA_SRC.read_text())
    assert found, f"sort_begin_bit for {name} not found in {CUDA_SRC}"
    return int(found.group(1))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_narrow_keys_sort_by_their_high_bits(dtype):
    # The CUDA radix sorts of unscaled float16 / bfloat16 rows look at key bits [begin_bit, 32)
    # only. That is exact when those bits determine the key: below begin_bit a key holds only zeros
    # (a non-negative value: the widened float32 has zero low bits) or only ones (a negative value,
    # whose bits the key flips). Checked over all 65536 bit patterns.
    begin = _begin_bit_in_source(dtype)
    v = torch.arange(-(2**15), 2**15, dtype=torch.int32).to(torch.int16).view(dtype)
    nan = torch.isnan(v)
    keys = _float32_keys(v)
    low = keys & ((1 << begin) - 1)
    k, lo = keys[~nan], low[~nan]
    negative = k < 0x80000000
    assert (lo[~negative] == 0).all()
    assert (lo[negative] == (1 << begin) - 1).all()
    # Hence equal high bits <=> equal keys, and the order of the high bits is the order of the keys.
    distinct = torch.unique(k)  # sorted
    assert (torch.diff(distinct >> begin) > 0).all()
    # begin_bit is the highest that works: one bit more merges neighbouring values.
    assert not (torch.diff(distinct >> (begin + 1)) > 0).all()
    # -0.0 and +0.0 are one key; NaN keys sort above +inf or below -inf in the high bits too (also
    # the canonical NaN 0x7fffffff a device conversion may produce), so they stay at the row ends.
    zeros = torch.tensor([0.0, -0.0], dtype=dtype)
    assert _float32_keys(zeros).unique().numel() == 1
    inf = _float32_keys(torch.tensor([float("inf"), -float("inf")], dtype=dtype)) >> begin
    nan_high = torch.cat([keys[nan], torch.tensor([0xFFFFFFFF])]) >> begin
    assert ((nan_high > inf[0]) | (nan_high < inf[1])).all()


# ----------------------------------------------------------------------------------------------
# merge_atom_f64 on the host (no GPU needed)

_MERGE_ATOM_F64_MAIN = r"""
#include "cuda/device_math.h"
#include <cstdio>
#include <cstdlib>
#include <vector>

// "f"/"d": stdin n m p, then the sorted x and y (hex); stdout: each x atom's then each y atom's
// gradient g * (1 / (n m)) (rounded to A), then the loss from the x atoms and from the y atoms.
template <typename A> int rows(long n, long m, int p) {
  std::vector<A> x(n), y(m);
  char buf[64];
  for (auto& v : x) { if (std::scanf("%63s", buf) != 1) return 1; v = static_cast<A>(std::strtod(buf, nullptr)); }
  for (auto& v : y) { if (std::scanf("%63s", buf) != 1) return 1; v = static_cast<A>(std::strtod(buf, nullptr)); }
  const double inv = 1.0 / (static_cast<double>(n) * static_cast<double>(m));
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
  std::printf("%a\n%a\n", cost_x * inv, cost_y * inv);
  return 0;
}

// "ratio m": x = {0} against y = {-m, ..., -1} (float), p = 1: prints dW/dx, dW/dy[0] and W.
int ratio(long m) {
  const double inv = 1.0 / static_cast<double>(m);
  double cost = 0.0;
  const double gx = pdl_ext::merge_atom_f64<true>(0, 0.0f, 1, m, 1, [&](int64_t j) { return static_cast<float>(j - m); }, cost);
  double unused = 0.0;
  const double gy = pdl_ext::merge_atom_f64<false>(0, static_cast<float>(-m), m, 1, 1, [](int64_t) { return 0.0f; }, unused);
  std::printf("%a\n%a\n%a\n", static_cast<double>(static_cast<float>(gx * inv)),
              static_cast<double>(static_cast<float>(gy * inv)), cost * inv);
  return 0;
}

int main(int argc, char** argv) {
  if (argc >= 3 && argv[1][0] == 'r') return ratio(std::atol(argv[2]));
  long n, m;
  int p;
  if (argc < 2 || std::scanf("%ld %ld %d", &n, &m, &p) != 3) return 2;
  return argv[1][0] == 'd' ? rows<double>(n, m, p) : rows<float>(n, m, p);
}
"""


@pytest.fixture(scope="module")
def merge_atom_f64_exe(tmp_path_factory):
    cxx = shutil.which("c++") or shutil.which("g++")
    if cxx is None:
        pytest.skip("no C++ compiler")
    d = tmp_path_factory.mktemp("merge_atom_f64")
    (d / "main.cpp").write_text(_MERGE_ATOM_F64_MAIN)
    exe = d / "merge_atom_f64"
    # As the CPU build: no FMA contraction (the device code rounds every step explicitly).
    subprocess.run([cxx, "-std=c++17", "-O2", "-ffp-contract=off", f"-I{ROOT / 'csrc'}", str(d / "main.cpp"),
                    "-o", str(exe)], check=True, capture_output=True, timeout=120)
    return exe


def _f32(v: float) -> float:
    # Rounding a double result of float32 operands to float32 is the float32 operation's rounding
    # (53 >= 2 * 24 + 2 bits), for +, - and *.
    return torch.tensor(v, dtype=torch.float64).float().item()


def _formula(x, y, p, dtype):
    """The documented merge_atom_f64 arithmetic in Python floats (doubles), atom by atom."""
    n, m = len(x), len(y)
    narrow = dtype == torch.float32
    rnd = _f32 if narrow else (lambda v: v)
    cost_fn = (lambda d: abs(d)) if p == 1 else (lambda d: rnd(d * d))
    grad_fn = (lambda d: float((d > 0) - (d < 0))) if p == 1 else (lambda d: 2.0 * d)
    inv = 1.0 / (float(n) * float(m))

    def atom(a, na, nb, value, other, of_x):
        lo, hi = a * nb, a * nb + nb
        g = cost = 0.0
        b = lo // na
        while b * na < hi:
            seg = float(min((b + 1) * na, hi) - max(b * na, lo))
            d = rnd(value - other[b]) if of_x else rnd(other[b] - value)
            cost = cost + seg * cost_fn(d)
            t = grad_fn(d) * seg
            g = g + t if of_x else g - t
            b += 1
        return rnd(g * inv), cost

    gx = [atom(i, n, m, x[i], y, True) for i in range(n)]
    gy = [atom(j, m, n, y[j], x, False) for j in range(m)]
    return [g for g, _ in gx] + [g for g, _ in gy], sum(c for _, c in gx) * inv, sum(c for _, c in gy) * inv


@pytest.mark.parametrize("n,m", [(1, 5), (5, 1), (3, 7), (7, 3), (6, 4), (100, 37), (37, 100), (64, 63)])
@pytest.mark.parametrize("p", [1, 2])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_merge_atom_f64_is_the_documented_formula(merge_atom_f64_exe, n, m, p, dtype):
    g = torch.Generator().manual_seed(7 * n + m)
    x = torch.sort((torch.randint(-4, 5, (n,), generator=g) / 4 + torch.randn(n, generator=g) * (torch.rand(n, generator=g) < 0.5)).to(dtype)).values
    y = torch.sort((torch.randint(-4, 5, (m,), generator=g) / 4 + torch.randn(m, generator=g) * 0.3).to(dtype)).values
    text = f"{n} {m} {p}\n" + "\n".join(float(v).hex() for v in torch.cat([x, y]).tolist()) + "\n"
    kind = "d" if dtype == torch.float64 else "f"
    out = subprocess.run([str(merge_atom_f64_exe), kind], input=text, capture_output=True, text=True, check=True, timeout=60)
    vals = [float.fromhex(t) for t in out.stdout.split()]
    assert len(vals) == n + m + 2
    grads, loss_x, loss_y = _formula(x.tolist(), y.tolist(), p, dtype)
    assert vals[:n + m] == grads  # bitwise
    # Each segment's cost is counted by both sides here; the kernels count it on the longer side.
    assert vals[n + m] == pytest.approx(loss_x, rel=1e-12) and vals[n + m + 1] == pytest.approx(loss_y, rel=1e-12)
    torch.testing.assert_close(torch.tensor(vals[n + m], dtype=torch.float64),
                               reference.wasserstein_1d(x.double(), y.double(), p), rtol=1e-6, atol=1e-9)
    if dtype == torch.float64 and extension.COMPILED:
        # The CPU kernel's float64 walk sums in this order and precision too: the same bits.
        _, dx, dy = fwd(x[None], y[None], p)
        assert dx[0].tolist() == grads[:n] and dy[0].tolist() == grads[n:]


def test_merge_atom_f64_long_against_short(merge_atom_f64_exe):
    # One atom against 2^25: a float sum of 2^25 ones stops at 2^24 (gradient 0.5); double is exact.
    m = 2**25
    out = subprocess.run([str(merge_atom_f64_exe), "r", str(m)], capture_output=True, text=True, check=True, timeout=120)
    gx, gy, loss = [float.fromhex(t) for t in out.stdout.split()]
    assert gx == 1.0
    assert gy == _f32(-1.0 / m)
    assert loss == (m + 1) / 2  # mean of 1 .. m, exact in double


_ROW_MATCH_MAIN = r"""
#include "cuda/device_math.h"
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <numeric>
#include <vector>

// The CUDA kernels' matching on the host: one row pair sorted as the kernels sort (KeyTraits keys,
// ties by position), then RowMatch::rank over every rank, as the threads of a block take them.
// argv: f|d gx gy; stdin: n m p, then x and y (hex). stdout: the loss, dx (n values when gx), dy.
template <typename A> int run(int gx, int gy) {
  long n, m;
  int p;
  if (std::scanf("%ld %ld %d", &n, &m, &p) != 3) return 2;
  std::vector<A> x(n), y(m);
  char buf[64];
  for (auto& v : x) { if (std::scanf("%63s", buf) != 1) return 1; v = static_cast<A>(std::strtod(buf, nullptr)); }
  for (auto& v : y) { if (std::scanf("%63s", buf) != 1) return 1; v = static_cast<A>(std::strtod(buf, nullptr)); }
  using KT = pdl_ext::KeyTraits<A>;
  auto sorted = [](const std::vector<A>& v, std::vector<int32_t>& pos, std::vector<A>& val) {
    pos.resize(v.size());
    std::iota(pos.begin(), pos.end(), 0);
    std::stable_sort(pos.begin(), pos.end(), [&](int32_t a, int32_t b) { return KT::to_key(v[a]) < KT::to_key(v[b]); });
    val.resize(v.size());
    for (size_t r = 0; r < v.size(); ++r) val[r] = KT::from_key(KT::to_key(v[pos[r]]));
  };
  std::vector<int32_t> px, py;
  std::vector<A> sx, sy;
  sorted(x, px, sx);
  sorted(y, py, sy);
  std::vector<A> dx(n), dy(m);
  const pdl_ext::RowMatch<A, A> match(n, m, p, gx ? dx.data() : nullptr, gy ? dy.data() : nullptr);
  double sum = 0.0;
  for (long r = 0; r < std::max(n, m); ++r) {
    sum += match.rank(r, r < n ? sx[r] : A(0), r < n ? px[r] : 0, r < m ? sy[r] : A(0), r < m ? py[r] : 0,
                      [&](int64_t i) { return sx[i]; }, [&](int64_t j) { return sy[j]; });
  }
  std::printf("%a\n", static_cast<double>(match.loss(sum)));
  for (long i = 0; gx && i < n; ++i) std::printf("%a\n", static_cast<double>(dx[i]));
  for (long j = 0; gy && j < m; ++j) std::printf("%a\n", static_cast<double>(dy[j]));
  return 0;
}

int main(int argc, char** argv) {
  if (argc < 4) return 2;
  const int gx = std::atoi(argv[2]), gy = std::atoi(argv[3]);
  return argv[1][0] == 'd' ? run<double>(gx, gy) : run<float>(gx, gy);
}
"""


@pytest.fixture(scope="module")
def row_match_exe(tmp_path_factory):
    cxx = shutil.which("c++") or shutil.which("g++")
    if cxx is None:
        pytest.skip("no C++ compiler")
    d = tmp_path_factory.mktemp("row_match")
    (d / "main.cpp").write_text(_ROW_MATCH_MAIN)
    exe = d / "row_match"
    subprocess.run([cxx, "-std=c++17", "-O2", "-ffp-contract=off", f"-I{ROOT / 'csrc'}", str(d / "main.cpp"),
                    "-o", str(exe)], check=True, capture_output=True, timeout=120)
    return exe


@pytest.mark.parametrize("n,m", [(1, 1), (1, 9), (9, 1), (7, 7), (100, 37), (37, 100), (256, 255), (300, 1000)])
@pytest.mark.parametrize("p", [1, 2])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("grad_x,grad_y", [(True, True), (True, False), (False, True), (False, False)])
def test_row_match_on_the_host(row_match_exe, n, m, p, dtype, grad_x, grad_y):
    # RowMatch (both CUDA kernels' matching) with rows that tie (+-0.0 too): every rank's gradient is
    # merge_atom_f64's (or, for N = M, the CPU kernel's), at the right position, and the loss counts
    # every segment once whichever gradients are wanted.
    x, y = _rows((2,), n, m, dtype, seed=n * m + p)
    x, y = x[1], y[1]  # the row with ties
    text = f"{n} {m} {p}\n" + "\n".join(float(v).hex() for v in torch.cat([x, y]).tolist()) + "\n"
    out = subprocess.run([str(row_match_exe), "d" if dtype == torch.float64 else "f", str(int(grad_x)), str(int(grad_y))],
                         input=text, capture_output=True, text=True, check=True, timeout=60)
    vals = [float.fromhex(t) for t in out.stdout.split()]
    assert len(vals) == 1 + (n if grad_x else 0) + (m if grad_y else 0)
    loss = torch.tensor(vals[0], dtype=dtype)
    dx = torch.tensor(vals[1:1 + n] if grad_x else [], dtype=torch.float64).to(dtype)
    dy = torch.tensor(vals[1 + n if grad_x else 1:], dtype=torch.float64).to(dtype)
    torch.testing.assert_close(loss, reference.wasserstein_1d(x, y, p), **TOL[dtype])
    # The expected gradients, by rank: the CPU kernel's arithmetic for N = M, the documented formula else.
    ox, oy = torch.sort(x + 0.0, stable=True), torch.sort(y + 0.0, stable=True)
    if n == m:
        d = ox.values - oy.values
        g = (torch.sign(d) if p == 1 else 2 * d) * torch.tensor(1.0 / n, dtype=torch.float64).to(dtype)
        gx_rank, gy_rank = g, -g
    else:
        grads, _, _ = _formula(ox.values.tolist(), oy.values.tolist(), p, dtype)
        gx_rank = torch.tensor(grads[:n], dtype=torch.float64).to(dtype)
        gy_rank = torch.tensor(grads[n:], dtype=torch.float64).to(dtype)
    if grad_x:
        _bits_equal(dx, torch.empty_like(x).index_put_((ox.indices,), gx_rank))
    if grad_y:
        _bits_equal(dy, torch.empty_like(y).index_put_((oy.indices,), gy_rank))
    if extension.COMPILED and (n == m or dtype == torch.float64):
        w, dxc, dyc = fwd(x[None], y[None], p, grad_x, grad_y)
        torch.testing.assert_close(loss, w[0], rtol=1e-6 if dtype == torch.float32 else 1e-13, atol=1e-12)
        if grad_x:
            _bits_equal(dx, dxc[0])
        if grad_y:
            _bits_equal(dy, dyc[0])


# ----------------------------------------------------------------------------------------------
# Gradient precision for N != M (double sums) against float64


@needs_gpu
@pytest.mark.parametrize("n,m", [(1, 2**25), (2**25, 1), (3, 2**24 + 5), (1000, 2**22 + 1)])
@pytest.mark.parametrize("p", [1, 2])
def test_unequal_sizes_precision_against_float64(n, m, p):
    g = torch.Generator(device=DEVICE).manual_seed(n + m + p)
    x = torch.randn(2, n, generator=g, device=DEVICE)
    y = torch.randn(2, m, generator=g, device=DEVICE)
    x[0] += 10.0  # row 0: x above all of y, p = 1: dW/dx = 1 / n and dW/dy = -1 / m (rounded once)
    y[0] -= 10.0
    w, dx, dy = fwd(x, y, p)
    xd = x.double().requires_grad_(True)
    yd = y.double().requires_grad_(True)
    wr = reference.wasserstein_1d(xd, yd, p)
    gx, gy = torch.autograd.grad(wr.sum(), (xd, yd))
    torch.testing.assert_close(w.double(), wr.detach(), rtol=2e-6, atol=0.0)
    _close(dx, gx, torch.float32)
    _close(dy, gy, torch.float32)
    if p == 1:
        assert (dx[0] == _f32(1.0 / n)).all()
        assert (dy[0] == _f32(-1.0 / m)).all()


# ----------------------------------------------------------------------------------------------
# Gradient bits: CUDA == CPU for float32 / float64 (parity)

PARITY_SHAPES = [
    ((3,), 7, 7),
    ((3,), 1, 9),
    ((3,), 100, 37),
    ((2,), 256, 255),
    ((2,), 1000, 1024),
    ((2,), 2048, 700),
    ((2,), 3000, 4096),
    ((2,), 5000, 3001),
    ((2,), 4097, 70),
    ((2,), 70000, 65536),
]


@needs_gpu
@pytest.mark.parametrize("lead,n,m", PARITY_SHAPES)
@pytest.mark.parametrize("p", [1, 2])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("grad_y", [True, False])
def test_gradient_bits_match_cpu(lead, n, m, p, dtype, grad_y):
    x, y = _rows(lead, n, m, dtype, seed=n * 31 + m)
    w, dx, dy = fwd(x.to(DEVICE), y.to(DEVICE), p, True, grad_y)
    wc, dxc, dyc = fwd(x, y, p, True, grad_y)
    _bits_equal(dx, dxc)
    if grad_y:
        _bits_equal(dy, dyc)
    # The loss is summed in double on both devices, in different orders.
    torch.testing.assert_close(w.cpu(), wc, rtol=1e-6 if dtype == torch.float32 else 1e-13, atol=1e-12)


@needs_gpu
@pytest.mark.parametrize("n,m", [(50, 50), (300, 200), (5000, 4100)])
@pytest.mark.parametrize("p", [1, 2])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_normalized_gradient_bits_match_cpu(n, m, p, dtype):
    # Features with exact channel norms: both devices scale by the same bits (parity).
    x, y = _exact_norm_features(2, n, dtype, seed=n), _exact_norm_features(2, m, dtype, seed=m + 1)
    _, dx, dy, _, _ = nfwd(x.to(DEVICE), y.to(DEVICE), p)
    _, dxc, dyc, _, _ = nfwd(x, y, p)
    _bits_equal(dx, dxc)
    _bits_equal(dy, dyc)


# ----------------------------------------------------------------------------------------------
# Block tiles (128, 256, 512, 1024, 2048, 4096), gradient flags, float16 / bfloat16 keys


@needs_gpu
@pytest.mark.parametrize("n,m", [(255, 255), (256, 256), (257, 257), (256, 100), (1023, 1023), (1024, 1024),
                                 (1025, 1025), (1024, 513), (129, 256), (4096, 4096)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("grad_x,grad_y", [(True, True), (True, False), (False, True), (False, False)])
def test_tiles_and_gradient_flags_match_cpu(n, m, dtype, grad_x, grad_y):
    x, y = _rows((4,), n, m, dtype, seed=n + 3 * m)
    w, dx, dy = fwd(x.to(DEVICE), y.to(DEVICE), 2, grad_x, grad_y)
    wc, dxc, dyc = fwd(x, y, 2, grad_x, grad_y)
    torch.testing.assert_close(w.cpu(), wc, **TOL[dtype])
    assert dx.numel() == (dxc.numel() if grad_x else 0) and dy.numel() == (dyc.numel() if grad_y else 0)
    for got, want in ((dx, dxc), (dy, dyc)):
        if got.numel() == 0:
            continue
        if n == m or dtype in (torch.float32, torch.float64):
            _bits_equal(got, want)
        else:
            _close(got, want, dtype)


@needs_gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("n", [4096, 70000])
def test_every_narrow_value_sorts_as_on_cpu(dtype, n):
    # All finite float16 / bfloat16 values (both zeros), shuffled, against random ones: the radix
    # sorts on the high key bits order them as the CPU does (same gradients, bitwise).
    v = torch.arange(-(2**15), 2**15, dtype=torch.int32).to(torch.int16).view(dtype)
    v = v[torch.isfinite(v)]
    g = torch.Generator().manual_seed(n)
    rows = -(-v.numel() // n)
    x = torch.cat([v, torch.randn(rows * n - v.numel(), generator=g).to(dtype)])
    x = x[torch.randperm(x.numel(), generator=g)].reshape(rows, n)
    y = (torch.randn(rows, n, generator=g) * 1e3).to(dtype)
    for p in (1, 2):
        w, dx, dy = fwd(x.to(DEVICE), y.to(DEVICE), p)
        wc, dxc, dyc = fwd(x, y, p)
        _bits_equal(dx, dxc)
        _bits_equal(dy, dyc)
        torch.testing.assert_close(w.cpu(), wc, **TOL[dtype], equal_nan=True)


# ----------------------------------------------------------------------------------------------
# NaN and infinities


@needs_gpu
@pytest.mark.parametrize("n,m", [(20, 20), (20, 13), (2000, 2048), (3000, 3000), (5000, 3001)])
@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_nan_and_inf_match_cpu(n, m, dtype):
    x, y = _rows((6,), n, m, dtype, seed=n + m)
    x[0, n // 2] = float("nan")
    y[1, m - 1] = -float("nan")
    x[2, 0] = float("inf")
    y[2, m // 3] = -float("inf")
    x[3, -1], y[3, 0] = -float("inf"), -float("inf")  # -inf - -inf = NaN at that pair
    x[4, :] = float("inf")
    w, dx, dy = fwd(x.to(DEVICE), y.to(DEVICE), 1)
    wc, dxc, dyc = fwd(x, y, 1)
    assert torch.isnan(w[:2]).all() and torch.isnan(dx[:2]).all() and torch.isnan(dy[:2]).all()
    torch.testing.assert_close(w.cpu(), wc, **TOL[dtype], equal_nan=True)
    _close(dx, dxc, dtype)
    _close(dy, dyc, dtype)
    if n == m:
        _bits_equal(dx, dxc)
        _bits_equal(dy, dyc)
    if dtype == torch.float64:
        torch.testing.assert_close(w[5:], reference.wasserstein_1d(x[5:].to(DEVICE), y[5:].to(DEVICE), 1),
                                   **TOL[dtype])


# ----------------------------------------------------------------------------------------------
# Streams: the kernels run on the current stream


@needs_gpu
@pytest.mark.parametrize("n,m", [(300, 300), (300, 200), (5000, 5000), (5000, 3001)])
def test_waits_for_inputs_written_on_the_current_stream(n, m):
    xc, yc = _rows((16,), n, m, torch.float32, seed=n + m)
    src_x, src_y = xc.to(DEVICE), yc.to(DEVICE)
    x, y = torch.full_like(src_x, float("nan")), torch.full_like(src_y, float("nan"))
    torch.cuda.synchronize()
    side = torch.cuda.Stream()
    with torch.cuda.stream(side):
        torch.cuda._sleep(100_000_000)  # tens of ms on the side stream before the inputs are written
        x.copy_(src_x)
        y.copy_(src_y)
        # A kernel on another stream would read the NaN still there and return NaN.
        got = [t.cpu() for t in fwd(x, y, 2)]
    want = fwd(xc, yc, 2)
    torch.testing.assert_close(got[0], want[0], **TOL[torch.float32])
    for a, e in zip(got[1:], want[1:]):
        if n == m:
            _bits_equal(a, e)
        else:
            _close(a, e, torch.float32)


@needs_gpu
def test_normalized_ops_wait_for_inputs_on_the_current_stream():
    fc = _features(2, 8, 3000, torch.float32, seed=1)
    gc = _features(2, 8, 2000, torch.float32, seed=2)
    src_f, src_g = fc.to(DEVICE), gc.to(DEVICE)
    f, g = torch.full_like(src_f, float("nan")), torch.full_like(src_g, float("nan"))
    grad = torch.linspace(0.5, 2.0, 16).reshape(2, 8)
    torch.cuda.synchronize()
    side = torch.cuda.Stream()
    with torch.cuda.stream(side):
        torch.cuda._sleep(100_000_000)
        f.copy_(src_f)
        g.copy_(src_g)
        w, dx, _, nx, _ = nfwd(f, g, 2, True, False)
        gx = torch.ops.pdl_ext.normalized_wasserstein_1d_bwd(grad.to(DEVICE), dx, f, nx)
        got = [t.cpu() for t in (w, nx, gx)]
    wc, dxc, _, nxc, _ = nfwd(fc, gc, 2, True, False)
    gxc = torch.ops.pdl_ext.normalized_wasserstein_1d_bwd(grad, dxc, fc, nxc)
    torch.testing.assert_close(got[0], wc, **TOL[torch.float32])
    torch.testing.assert_close(got[1], nxc, rtol=1e-6, atol=0.0)
    _close(got[2], gxc, torch.float32, scale_rtol=1e-5)


# ----------------------------------------------------------------------------------------------
# Shapes: rows tiny against long, more rows than a grid's y/z limit


@needs_gpu
@pytest.mark.parametrize("n,m", [(1, 5000), (7, 70000), (5000, 7), (70000, 7)])
@pytest.mark.parametrize("p", [1, 2])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_tiny_against_long_rows(n, m, p, dtype):
    x, y = _rows((3,), n, m, dtype, seed=n + 7 * m)
    w, dx, dy = fwd(x.to(DEVICE), y.to(DEVICE), p)
    wc, dxc, dyc = fwd(x, y, p)
    torch.testing.assert_close(w.cpu(), wc, **TOL[dtype])
    _close(dx, dxc, dtype)
    _close(dy, dyc, dtype)
    if dtype != torch.bfloat16:
        wr = reference.wasserstein_1d(x.to(DEVICE), y.to(DEVICE), p)
        torch.testing.assert_close(w, wr, **TOL[dtype])


def _gpu_gib() -> float:
    return torch.cuda.get_device_properties(0).total_memory / 2**30 if GPU else 0.0


@needs_gpu
@pytest.mark.parametrize("n,m,dtype", [(10, 7, torch.float32), (300, 300, torch.float16), (130, 100, torch.float64),
                                       (4200, 4100, torch.float32)])
def test_more_than_65535_rows(n, m, dtype):
    rows = 70000
    if n > 4096 and _gpu_gib() < 40:
        pytest.skip("needs about 16 GiB of GPU memory")
    g = torch.Generator(device=DEVICE).manual_seed(n)
    x = torch.randn(rows, n, generator=g, device=DEVICE).to(dtype)
    y = torch.randn(rows, m, generator=g, device=DEVICE).to(dtype)
    w, dx, dy = fwd(x, y, 1)
    # Rows are independent: check the ends, both sides of 65535 and of the first chunk, and a sample.
    chunk = (1 << 28) // max(n, m)
    sample = torch.randint(rows, (8,), generator=torch.Generator().manual_seed(rows)).tolist()
    pick = torch.tensor(sorted({0, 1, 65534, 65535, 65536, chunk - 1, chunk, rows - 2, rows - 1} | set(sample)))
    pick = pick[pick < rows]
    wc, dxc, dyc = fwd(x[pick.to(DEVICE)].cpu(), y[pick.to(DEVICE)].cpu(), 1)
    torch.testing.assert_close(w[pick.to(DEVICE)].cpu(), wc, **TOL[dtype])
    _close(dx[pick.to(DEVICE)], dxc, dtype)
    _close(dy[pick.to(DEVICE)], dyc, dtype)


# ----------------------------------------------------------------------------------------------
# The chunking of long rows (PDL_EXT_CUDA_MAX_SORT_ITEMS), in fresh processes (read once)

_CHUNK_SCRIPT = textwrap.dedent(
    r"""
    import sys, torch, pdl_ext

    def check(got, want, exact, tol):
        for a, e in zip(got, want):
            a = a.cpu()
            if exact:
                assert torch.equal(a, e), (a - e).abs().max()
            else:
                torch.testing.assert_close(a, e, **tol)

    g = torch.Generator().manual_seed(0)
    results = []
    cases = [(7, 5000, 4500, torch.float32), (5, 4097, 4097, torch.float16), (5, 3000, 2100, torch.float64),
             (4, 70000, 65536, torch.bfloat16)]
    for rows, n, m, dtype in cases:
        x = torch.randn(rows, n, generator=g).to(dtype)
        y = torch.randn(rows, m, generator=g).to(dtype)
        tol = dict(rtol=1.6e-2, atol=1e-5) if dtype == torch.bfloat16 else dict(rtol=2e-3, atol=1e-6)
        for gx, gy in ((True, True), (True, False), (False, False)):
            got = torch.ops.pdl_ext.wasserstein_1d_fwd(x.cuda(), y.cuda(), 2, gx, gy)
            want = torch.ops.pdl_ext.wasserstein_1d_fwd(x, y, 2, gx, gy)
            torch.testing.assert_close(got[0].cpu(), want[0], **tol)
            check(got[1:], want[1:], n == m, tol)
            results += [t.cpu() for t in got]
    # Normalized: rows of a chunk belong to different batch items (scale rows (r / C)).
    x = torch.relu(torch.randn(3, 3, 5000, generator=g))
    y = torch.relu(torch.randn(3, 3, 4100, generator=g))
    got = torch.ops.pdl_ext.normalized_wasserstein_1d_fwd(x.cuda(), y.cuda(), 1, True, True)
    want = torch.ops.pdl_ext.normalized_wasserstein_1d_fwd(x, y, 1, True, True)
    torch.testing.assert_close(got[0].cpu(), want[0], rtol=1e-4, atol=1e-6)
    for a, e in zip(got[1:3], want[1:3]):
        torch.testing.assert_close(torch.sort(a.cpu(), -1).values, torch.sort(e, -1).values, rtol=1e-4, atol=1e-7)
    results += [t.cpu() for t in got]
    torch.save(results, sys.argv[1])
    print("ok")
    """
)


def _run_with_env(script: str, *args, **env):
    """Runs `python -c script *args` with this pdl_ext, PDL_EXT_CUDA_MAX_SORT_ITEMS as given (or unset)."""
    full = {k: v for k, v in os.environ.items() if k != "PDL_EXT_CUDA_MAX_SORT_ITEMS"}
    full.update(env)
    pkg_root = str(Path(pdl_ext.__file__).resolve().parents[1])
    full["PYTHONPATH"] = os.pathsep.join([pkg_root] + [p for p in full.get("PYTHONPATH", "").split(os.pathsep) if p])
    return subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, env=full, timeout=600)


@pytest.fixture(scope="module")
def unchunked_results(tmp_path_factory):
    path = tmp_path_factory.mktemp("chunks") / "default.pt"
    out = _run_with_env(_CHUNK_SCRIPT, str(path))
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-4000:]
    return torch.load(path)


@needs_gpu
@pytest.mark.parametrize("limit", ["1", "9000", "12001", "100000"])
def test_chunked_long_rows_match_cpu_and_unchunked(limit, unchunked_results, tmp_path):
    # 1: a row per chunk; 9000 / 12001: chunks of 1 or 2 rows and a shorter last chunk; 100000:
    # a row per chunk for the 70000-long rows, one chunk for the others. Rows are independent: the
    # chunked results are the unchunked ones, bitwise.
    path = tmp_path / "chunked.pt"
    out = _run_with_env(_CHUNK_SCRIPT, str(path), PDL_EXT_CUDA_MAX_SORT_ITEMS=limit)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-4000:]
    chunked = torch.load(path)
    assert len(chunked) == len(unchunked_results)
    for a, e in zip(chunked, unchunked_results):
        _bits_equal(a, e)


@needs_gpu
@pytest.mark.parametrize("limit", ["0", "-3", "abc", "12x", "3000000000"])
def test_bad_max_sort_items_is_an_error(limit):
    script = textwrap.dedent(
        """
        import torch, pdl_ext
        try:
            torch.ops.pdl_ext.wasserstein_1d_fwd(torch.randn(2, 5000, device="cuda"), torch.randn(2, 5000, device="cuda"), 1, True, True)
        except RuntimeError as e:
            assert "PDL_EXT_CUDA_MAX_SORT_ITEMS" in str(e), e
            print("ok")
        """
    )
    out = _run_with_env(script, PDL_EXT_CUDA_MAX_SORT_ITEMS=limit)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stdout + out.stderr[-4000:]


# ----------------------------------------------------------------------------------------------
# Channel norms and the normalization's backward (channel_norm.cu)


@needs_gpu
@pytest.mark.parametrize("b,c,n", [(8, 512, 256), (2, 64, 6000), (3, 5, 700), (2, 31, 1000), (2, 33, 100), (1, 1, 5)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_channel_norms_match_cpu_and_float64(b, c, n, dtype):
    x = _features(b, c, n, dtype, seed=c + n)
    x[0, 0, 1] = float("inf")
    _, _, _, nx, _ = nfwd(x.to(DEVICE), x[..., :50].to(DEVICE), 1, False, False)
    _, _, _, nxc, _ = nfwd(x, x[..., :50], 1, False, False)
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    assert nx.dtype == acc and nx.shape == (b, n)
    exact = torch.linalg.vector_norm(x.double(), dim=1).to(acc)
    rtol = 1e-13 if dtype == torch.float64 else 1.2e-7  # double sums in another order: a float32 ulp at most
    torch.testing.assert_close(nx.cpu(), exact, rtol=rtol, atol=0.0)
    torch.testing.assert_close(nx.cpu(), nxc, rtol=rtol, atol=0.0)
    assert nx[0, 1].item() == float("inf") and (nx[:, ::7] == 0).all()


def _bwd_inputs(b, c, n, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    f = _features(b, c, n, dtype, seed=seed + 1)
    d = torch.randn(b, c, n, generator=g).to(dtype)
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    norm = torch.linalg.vector_norm(f.to(acc), dim=1)
    grad = torch.randn(b, c, generator=g, dtype=acc)
    return grad, d, f, norm


def _bwd(grad, d, f, norm, device):
    return torch.ops.pdl_ext.normalized_wasserstein_1d_bwd(grad.to(device), d.to(device), f.to(device), norm.to(device))


@needs_gpu
@pytest.mark.parametrize("b,c,n", [(3, 5, 700), (2, 31, 1000), (1, 1, 33)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_normalized_bwd_bits_match_cpu_below_32_channels(b, c, n, dtype):
    # Fewer than 32 channels: one channel group, the CPU's summation order: the same bits (parity).
    grad, d, f, norm = _bwd_inputs(b, c, n, dtype, seed=c)
    _bits_equal(_bwd(grad, d, f, norm, DEVICE), _bwd(grad, d, f, norm, "cpu"))


@needs_gpu
@pytest.mark.parametrize("b,c,n", [(8, 512, 256), (2, 64, 6000), (4, 32, 257), (2, 100, 1000)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
def test_normalized_bwd_matches_cpu(b, c, n, dtype):
    grad, d, f, norm = _bwd_inputs(b, c, n, dtype, seed=c + n)
    got = _bwd(grad, d, f, norm, DEVICE)
    want = _bwd(grad, d, f, norm, "cpu")
    assert got.dtype == dtype and got.shape == f.shape
    assert (got[:, :, ::7] == 0).all()  # all-zero positions: gradient 0
    # The channel sum runs in groups on the GPU: another summation order.
    _close(got, want, dtype, scale_rtol=1e-5 if dtype != torch.float64 else 1e-13)


@needs_gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_normalized_autograd_512_channels_matches_reference(dtype):
    from pdl_ext.ops import normalized_wasserstein_1d

    x = _features(2, 512, 196, dtype, seed=1).to(DEVICE).requires_grad_(True)
    y = _features(2, 512, 196, dtype, seed=2).to(DEVICE)
    weights = torch.linspace(0.5, 2.0, 2 * 512, device=DEVICE).reshape(2, 512).to(dtype)
    w = normalized_wasserstein_1d(x, y, 2)
    (gx,) = torch.autograd.grad(w, x, weights)
    xr = x.detach().float().requires_grad_(True)
    wr = reference.normalized_wasserstein_1d(xr, y.float(), 2)
    (gr,) = torch.autograd.grad(wr, xr, weights.float())
    torch.testing.assert_close(w.float(), wr, **TOL[dtype])
    # Sorted per row: near-ties may swap between float32 and the dtype's values.
    _close(torch.sort(gx.float(), -1).values, torch.sort(gr, -1).values, dtype, scale_rtol=2e-2 if dtype == torch.bfloat16 else 1e-5)
