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
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs Linux /proc and RLIMIT_AS")
def test_scratch_out_of_memory_is_a_torch_error_with_the_size():
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-c", _OOM_SCRIPT], capture_output=True, text=True, env=env, timeout=300)
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith(("ERROR", "NO ERROR"))), proc.stderr[-2000:])
    assert line.startswith("ERROR torch OutOfMemoryError True "), line
    assert "wasserstein_1d: out of memory: could not allocate" in line and " bytes of CPU scratch (" in line, line
    assert "for x rows 4 x 262144, y rows 4 x 262144, Float" in line, line
