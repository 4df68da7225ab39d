"""What the fused ops promise beyond their values: the errors they raise and the resources they take.

- A row longer than the kernels take (2^31 - 1 items, int32 positions) is a ValueError that names the
  limit, from the Python checks, the C++ op and the fake/meta kernels alike (tested on expanded and
  meta tensors: nothing of that size is allocated).
- A scratch allocation the machine cannot serve is a torch.OutOfMemoryError (a RuntimeError) naming
  the bytes asked for, the buffer and the shapes, not a bare std::bad_alloc.
"""
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import pdl_ext
from pdl_ext import extension

requires_ext = pytest.mark.skipif(not extension.COMPILED, reason="C++ extension not built")
ROOT = Path(__file__).resolve().parents[1]
TOO_LONG = 2**31
LIMIT_MESSAGE = r"rows must hold at most 2\^31 - 1 = 2147483647 items, got x rows of N = {} and y rows of M = {}"


# Under AddressSanitizer (.ci/sanitize.sh preloads it) the allocator's own reservations and quarantine
# make RLIMIT_AS and resident-size measurements meaningless.
UNDER_ASAN = "asan" in os.environ.get("LD_PRELOAD", "")
no_asan = pytest.mark.skipif(UNDER_ASAN, reason="address-space and RSS measurements are meaningless under ASan")


def _long(*lead):
    return torch.zeros(*lead, 1).expand(*lead, TOO_LONG)  # stride 0: no memory


@pytest.mark.parametrize("long_side", ["x", "y"])
def test_python_check_names_the_row_limit(long_side):
    x, y = (_long(2), torch.zeros(2, 3)) if long_side == "x" else (torch.zeros(2, 3), _long(2))
    n, m = x.shape[-1], y.shape[-1]
    with pytest.raises(ValueError, match="wasserstein_1d: " + LIMIT_MESSAGE.format(n, m)):
        pdl_ext.wasserstein_1d(x, y)
    with pytest.raises(ValueError, match="normalized_wasserstein_1d: " + LIMIT_MESSAGE.format(n, m)):
        pdl_ext.ops.normalized_wasserstein_1d(x.unsqueeze(0), y.unsqueeze(0))


@requires_ext
@pytest.mark.parametrize("long_side", ["x", "y"])
def test_registered_ops_raise_the_same_value_error(long_side):
    x, y = (_long(2), torch.zeros(2, 3)) if long_side == "x" else (torch.zeros(2, 3), _long(2))
    match = "wasserstein_1d: " + LIMIT_MESSAGE.format(x.shape[-1], y.shape[-1])
    with pytest.raises(ValueError, match=match):
        torch.ops.pdl_ext.wasserstein_1d(x, y, 1)
    with pytest.raises(ValueError, match=match):
        torch.ops.pdl_ext.wasserstein_1d_fwd(x, y, 2, True, True)
    with pytest.raises(ValueError, match=match):
        torch.ops.pdl_ext.normalized_wasserstein_1d_fwd(x.unsqueeze(0), y.unsqueeze(0), 1, True, False)


@requires_ext
def test_meta_kernels_raise_the_same_value_error():
    x = torch.empty(2, TOO_LONG, device="meta")
    y = torch.empty(2, 5, device="meta")
    match = "wasserstein_1d: " + LIMIT_MESSAGE.format(TOO_LONG, 5)
    with pytest.raises(ValueError, match=match):
        torch.ops.pdl_ext.wasserstein_1d_fwd(x, y, 1, True, False)
    with pytest.raises(ValueError, match=match):
        torch.ops.pdl_ext.normalized_wasserstein_1d_fwd(x.unsqueeze(0), y.unsqueeze(0), 1, False, False)
    # the longest row allowed still gets its shapes
    ok = torch.empty(1, TOO_LONG - 1, device="meta")
    loss, dx, dy = torch.ops.pdl_ext.wasserstein_1d_fwd(ok, y[:1], 1, True, False)
    assert loss.shape == (1,) and dx.shape == ok.shape and dy.numel() == 0


_OOM_SCRIPT = textwrap.dedent(
    """
    import re, resource, sys
    import torch, pdl_ext
    torch.set_num_threads(1)
    rows, n = 4, 2**18
    x = torch.randn(rows, n)
    y = torch.randn(rows, n)
    torch.ops.pdl_ext.wasserstein_1d_fwd(x[:, :5000], y[:, :5000], 1, True, False)  # lazy initialisation
    with open("/proc/self/status") as f:
        vm = int(re.search(r"VmSize:\\s+(\\d+) kB", f.read()).group(1)) * 1024
    # room for the outputs (dx is x-sized) and a little more, not for the kernel's sort buffers
    resource.setrlimit(resource.RLIMIT_AS, (vm + x.numel() * 4 + 256 * 1024, resource.RLIM_INFINITY))
    try:
        torch.ops.pdl_ext.wasserstein_1d_fwd(x, y, 1, True, False)
        print("NO ERROR")
    except BaseException as e:
        print("ERROR", type(e).__module__, type(e).__name__, isinstance(e, RuntimeError), str(e).splitlines()[0])
    """
)


@requires_ext
@no_asan
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs Linux /proc and RLIMIT_AS")
def test_scratch_out_of_memory_is_a_torch_error_with_the_size():
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-c", _OOM_SCRIPT], capture_output=True, text=True, env=env, timeout=300)
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith(("ERROR", "NO ERROR"))), proc.stderr[-2000:])
    assert line.startswith("ERROR torch OutOfMemoryError True "), line
    assert "wasserstein_1d: out of memory: could not allocate" in line and " bytes of CPU scratch (" in line, line
    assert "for x rows 4 x 262144, y rows 4 x 262144, Float" in line, line


# ---------------------------------------------------------------------------------------------
# Long rows (from 2^22 items) are sorted in windows of consecutive ranks, a fraction of the row each,
# so that one long row takes the extra memory many short ones take: x.grad and the op's saved dx,
# 8 B per float32 element (16 B per float64 one), not two or three sorted copies of the row.
# ---------------------------------------------------------------------------------------------
WINDOWED = 2**22


def _grads(op, x, y, p, grad_x, grad_y):
    x = x.detach().clone().requires_grad_(grad_x)
    y = y.detach().clone().requires_grad_(grad_y)
    w = op(x, y, p)
    up = torch.linspace(0.5, 1.5, w.numel(), dtype=torch.float64).reshape(w.shape).to(w.dtype)
    return (w.detach(), *torch.autograd.grad(w, [t for t in (x, y) if t.requires_grad], up))


def _check_long(x, y, p, grad_x, grad_y, exact=False, rtol=1e-6):
    got = _grads(torch.ops.pdl_ext.wasserstein_1d, x, y, p, grad_x, grad_y)
    want = _grads(pdl_ext.reference.wasserstein_1d, x.double(), y.double(), p, grad_x, grad_y)
    torch.testing.assert_close(got[0].double(), want[0], rtol=rtol, atol=1e-12, equal_nan=True)
    for g, gw in zip(got[1:], want[1:]):
        if exact:  # p = 1, equal lengths 2^k: +-1 / n exactly, at the positions the stable order gives
            assert torch.equal(g.double(), gw)
        else:
            torch.testing.assert_close(g.double(), gw, rtol=rtol, atol=rtol * 1e-3 * gw.abs().max().item(), equal_nan=True)


def _gen(seed):
    return torch.Generator().manual_seed(seed)


@requires_ext
def test_long_row_normal_data():
    g = _gen(0)
    _check_long(torch.randn(1, WINDOWED, generator=g), torch.randn(1, WINDOWED, generator=g) * 1.5, 2, True, False)


@requires_ext
def test_long_row_heavy_ties_are_split_by_position():
    # 5 distinct values in 2^22 items: runs of one key longer than a window, split by position; a
    # wrong order among ties would move +-1/n gradients to other positions.
    g = _gen(1)
    x = torch.randint(-2, 3, (1, WINDOWED), generator=g).float() * 0.5
    y = torch.randint(-1, 2, (1, WINDOWED), generator=g).float() + 0.25 * (torch.rand(1, WINDOWED, generator=g) < 0.3)
    x[0, ::7] = -0.0
    _check_long(x, y, 1, True, True, exact=True)
    _check_long(x[:, 5:], y[:, :-3], 2, True, True)


@requires_ext
@pytest.mark.slow
@pytest.mark.parametrize("p", [1, 2])
def test_long_rows_unequal_lengths_both_gradients(p):
    g = _gen(2)
    _check_long(torch.randn(2, WINDOWED + 3, generator=g), torch.randn(2, 3 * 2**20 + 1, generator=g) * 2, p, True, True)


@requires_ext
@pytest.mark.slow
def test_long_row_against_a_short_one():
    g = _gen(3)
    _check_long(torch.randn(1, 1000, generator=g), torch.randn(1, WINDOWED, generator=g), 2, True, True)


@requires_ext
@pytest.mark.slow
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_long_row_concentrated_values_refine_the_histogram(dtype):
    # Every value shares its top 16 key bits (float32) or more (float64): the windows come from the
    # next digits of the keys.
    g = _gen(4)
    x = 1 + torch.rand(1, WINDOWED, generator=g, dtype=torch.float64) * 2**-10
    y = 1 + torch.rand(1, WINDOWED, generator=g, dtype=torch.float64) * 2**-9
    if dtype == torch.float64:
        x = 1 + (x - 1) * 1e-6  # top 28 bits of the float64 keys alike
        x[0, ::3] = 1.0  # and long runs of one value
    _check_long(x.to(dtype), y.to(dtype), 2, True, True, rtol=1e-6 if dtype == torch.float32 else 1e-12)


@requires_ext
@pytest.mark.slow
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_long_row_half_types(dtype):
    g = _gen(5)
    x = torch.randn(1, WINDOWED, generator=g).to(dtype)
    y = torch.randn(1, WINDOWED // 2 + 1, generator=g).to(dtype)
    got = _grads(torch.ops.pdl_ext.wasserstein_1d, x, y, 1, True, False)
    want = _grads(pdl_ext.reference.wasserstein_1d, x.double(), y.double(), 1, True, False)
    torch.testing.assert_close(got[0].double(), want[0], rtol=1e-3, atol=1e-6)
    # sign(d) len / (N M) rounded to dtype (float16: subnormal, steps of 2^-24)
    torch.testing.assert_close(got[1].double(), want[1], rtol=1e-2, atol=2**-24)


@requires_ext
@pytest.mark.slow
def test_long_rows_nan_poisons_only_its_row():
    g = _gen(6)
    x = torch.randn(2, WINDOWED, generator=g)
    y = torch.randn(2, WINDOWED, generator=g)
    y[1, 12345] = float("nan")
    w, gx = _grads(torch.ops.pdl_ext.wasserstein_1d, x, y, 1, True, False)
    assert torch.isnan(w[1]) and torch.isnan(gx[1]).all() and torch.isfinite(gx[0]).all()
    _check_long(x[:1], y[:1], 1, True, False, exact=True)


@requires_ext
@pytest.mark.slow
def test_long_rows_normalized_op():
    g = _gen(7)
    x = torch.rand(1, 3, WINDOWED, generator=g, dtype=torch.float64)
    y = torch.rand(1, 3, WINDOWED // 4, generator=g, dtype=torch.float64)
    got = _grads(torch.ops.pdl_ext.normalized_wasserstein_1d, x, y, 2, True, True)
    want = _grads(pdl_ext.reference.normalized_wasserstein_1d, x, y, 2, True, True)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12 * b.abs().max().item())


_MEMORY_SCRIPT = textwrap.dedent(
    """
    import gc, re, sys
    import torch, pdl_ext
    torch.set_num_threads(2)
    rows, n, dtype = int(sys.argv[1]), int(sys.argv[2]), getattr(torch, sys.argv[3])

    def rss(key):
        with open("/proc/self/status") as f:
            return int(re.search(key + r":\\s+(\\d+) kB", f.read()).group(1)) * 1024

    def step(x, y):
        x.grad = None
        pdl_ext.wasserstein_1d(x, y, 1).sum().backward()

    step(torch.randn(4, 64, dtype=dtype, requires_grad=True), torch.randn(4, 64, dtype=dtype))
    x = torch.randn(rows, n, dtype=dtype, requires_grad=True)
    y = torch.randn(rows, n, dtype=dtype)
    gc.collect()
    before = rss("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    step(x, y)
    print("PEAK", (rss("VmHWM") - before) / x.numel())
    """
)


@requires_ext
@no_asan
@pytest.mark.skipif(not os.access("/proc/self/clear_refs", os.W_OK), reason="needs Linux /proc/self/clear_refs")
@pytest.mark.parametrize("rows,n,dtype,limit", [(1, WINDOWED, "float32", 8.5), (1, WINDOWED + 5, "float64", 16.5),
                                                (64, 2**16, "float32", 8.5)])
def test_extra_peak_memory_per_element(rows, n, dtype, limit):
    # The README's extra peak memory: x.grad and the saved dx, for one long row as for many rows
    # (a long row took 60 B per float32 element, 104 B per float64 one).
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536",
               PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-c", _MEMORY_SCRIPT, str(rows), str(n), dtype], capture_output=True,
                          text=True, env=env, timeout=600)
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("PEAK")), proc.stderr[-2000:])
    per_elem = float(line.split()[1])
    assert per_elem <= limit, f"{rows} x {n} {dtype}: {per_elem:.2f} B per element of extra peak memory"


# ---------------------------------------------------------------------------------------------
# normalized_wasserstein_1d with non-finite features: where the float64 sum of squares over a
# position's channels is not finite (an inf or NaN feature, in x or y), that position's normalized
# features are NaN in every channel. Every channel row of the sample passes through it, so all C
# values of the sample are NaN, and all its gradients (x and y, all-zero positions included); the
# other samples are untouched. The same in the kernel and the reference.
# ---------------------------------------------------------------------------------------------
def _normalized_grads(op, x, y, p=1):
    return _grads(op, x, y, p, True, True)


@requires_ext
@pytest.mark.parametrize("where,value", [("x", float("inf")), ("x", float("-inf")), ("y", float("inf")),
                                         ("x", float("nan")), ("y", float("nan"))])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("p", [1, 2])
def test_normalized_non_finite_feature_poisons_its_sample(where, value, dtype, p):
    g = _gen(3)
    x = torch.rand(3, 4, 9, generator=g, dtype=torch.float64)
    y = torch.rand(3, 4, 6, generator=g, dtype=torch.float64)
    x[1, :, 4] = 0.0  # an all-zero position in the poisoned sample: its gradient is NaN too
    (x if where == "x" else y)[1, 2, 3] = value
    x, y = x.to(dtype), y.to(dtype)
    for op in (torch.ops.pdl_ext.normalized_wasserstein_1d, pdl_ext.reference.normalized_wasserstein_1d):
        w, gx, gy = _normalized_grads(op, x, y, p)
        name = getattr(op, "__name__", str(op))
        assert torch.isnan(w[1]).all(), f"{name}: every value of the sample is NaN, got {w[1]}"
        assert torch.isnan(gx[1]).all() and torch.isnan(gy[1]).all(), f"{name}: every gradient of the sample is NaN"
        keep = [0, 2]
        assert torch.isfinite(w[keep]).all() and torch.isfinite(gx[keep]).all() and torch.isfinite(gy[keep]).all()
    got = _normalized_grads(torch.ops.pdl_ext.normalized_wasserstein_1d, x[[0, 2]], y[[0, 2]], p)
    want = _normalized_grads(pdl_ext.reference.normalized_wasserstein_1d, x[[0, 2]].double(), y[[0, 2]].double(), p)
    tol = dict(rtol=1e-5, atol=1e-6) if dtype in (torch.float32, torch.float64) else dict(rtol=2e-2, atol=2e-3)
    for a, b in zip(got, want):
        torch.testing.assert_close(a.double(), b, **tol)


@requires_ext
def test_normalized_float64_squares_beyond_double_range_are_non_finite():
    # 1e200 squared overflows float64: that position's norm is not finite, as the rule says.
    x = torch.rand(2, 3, 5, dtype=torch.float64)
    y = torch.rand(2, 3, 4, dtype=torch.float64)
    x[0, 1, 1] = 1e200
    for op in (torch.ops.pdl_ext.normalized_wasserstein_1d, pdl_ext.reference.normalized_wasserstein_1d):
        w, gx, gy = _normalized_grads(op, x, y)
        assert torch.isnan(w[0]).all() and torch.isnan(gx[0]).all() and torch.isfinite(w[1]).all()


@requires_ext
def test_normalized_large_finite_float32_features_stay_finite():
    # float32 features near the float32 limit: finite float64 sums, finite values (the norm itself may
    # round to inf in float32, which makes the normalized features of that position 0, as before).
    x = torch.rand(1, 3, 5) * 1e38
    y = torch.rand(1, 3, 4)
    w = torch.ops.pdl_ext.normalized_wasserstein_1d(x, y, 1)
    assert torch.isfinite(w).all()
    torch.testing.assert_close(w, pdl_ext.reference.normalized_wasserstein_1d(x, y, 1))


@requires_ext
@pytest.mark.parametrize("n,m", [(8, 8), (8, 5)])
def test_reference_follows_the_nan_policy_on_gradients(n, m):
    # The documented policy, in the oracle too: a NaN in a row pair makes every gradient of the pair NaN.
    g = _gen(9)
    x = torch.randn(3, n, generator=g, dtype=torch.float64)
    y = torch.randn(3, m, generator=g, dtype=torch.float64)
    x[1, 2] = float("nan")
    y[2, 0] = float("inf")  # an infinity is not a NaN: IEEE arithmetic
    for op in (torch.ops.pdl_ext.wasserstein_1d, pdl_ext.reference.wasserstein_1d):
        w, gx, gy = _grads(op, x, y, 2, True, True)
        assert torch.isnan(w[1]) and torch.isnan(gx[1]).all() and torch.isnan(gy[1]).all()
        assert torch.isfinite(gx[0]).all() and torch.isfinite(w[0])
    got, want = (_grads(op, x[[0, 2]], y[[0, 2]], 2, True, True)
                 for op in (torch.ops.pdl_ext.wasserstein_1d, pdl_ext.reference.wasserstein_1d))
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, equal_nan=True)


# ---------------------------------------------------------------------------------------------
# The CPU path: PDL_EXT_CPU_PATH and extension_info()["cpu_path"] name it; the former names
# PDL_EXT_CPU_SORT (read when PDL_EXT_CPU_PATH is unset, with a DeprecationWarning) and
# extension_info()["cpu_sort"] still work.
# ---------------------------------------------------------------------------------------------
@requires_ext
def test_cpu_path_variable_and_key(monkeypatch):
    monkeypatch.delenv("PDL_EXT_CPU_SORT", raising=False)
    monkeypatch.setenv("PDL_EXT_CPU_PATH", "radix")
    info = pdl_ext.extension_info()
    assert info["cpu_path"] == info["cpu_sort"] == pdl_ext._C.cpu_path() == pdl_ext._C.cpu_sort() == "radix"
    monkeypatch.setenv("PDL_EXT_CPU_PATH", "auto")
    assert pdl_ext.extension_info()["cpu_path"] in ("avx512", "avx2", "radix")
    monkeypatch.setenv("PDL_EXT_CPU_PATH", "sse")
    with pytest.raises(RuntimeError, match="PDL_EXT_CPU_PATH must be auto, avx512, avx2 or radix, got 'sse'"):
        pdl_ext.wasserstein_1d(torch.rand(2, 3), torch.rand(2, 3))


@requires_ext
def test_former_variable_still_picks_the_path_with_a_deprecation_warning(monkeypatch):
    monkeypatch.delenv("PDL_EXT_CPU_PATH", raising=False)
    monkeypatch.setenv("PDL_EXT_CPU_SORT", "radix")
    with pytest.warns(DeprecationWarning, match="PDL_EXT_CPU_SORT is deprecated.*PDL_EXT_CPU_PATH"):
        info = pdl_ext.extension_info()
    assert info["cpu_path"] == info["cpu_sort"] == "radix"
    monkeypatch.setenv("PDL_EXT_CPU_SORT", "fastest")
    with pytest.raises(RuntimeError, match="PDL_EXT_CPU_SORT must be auto, avx512, avx2 or radix, got 'fastest'"):
        pdl_ext.wasserstein_1d(torch.rand(2, 3), torch.rand(2, 3))
    # the new name wins, silently
    monkeypatch.setenv("PDL_EXT_CPU_PATH", "radix")
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert pdl_ext.extension_info()["cpu_path"] == "radix"


@requires_ext
def test_former_variable_warns_at_import():
    env = dict(os.environ, PDL_EXT_CPU_SORT="radix",
               PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    env.pop("PDL_EXT_CPU_PATH", None)
    proc = subprocess.run([sys.executable, "-W", "always::DeprecationWarning", "-c", "import pdl_ext"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "PDL_EXT_CPU_SORT is deprecated" in proc.stderr
