"""Shared fixtures of the test-suite: the devices the op tests run on, thread settings, DDP launching.

Devices (the pytorch_scatter / extension-cpp pattern):

- ``DEVICES``: the devices usable here, ``["cpu"]`` plus ``"cuda"`` when torch sees a GPU.
- ``device``: a fixture parametrized over ``"cpu"`` and ``"cuda"`` (test ids ``[cpu]``, ``[cuda]``).
  The ``cuda`` case is always generated, so the suite collects the same tests everywhere and
  ``pytest -k cuda`` selects the GPU half on a GPU machine; it skips cleanly (one reason, listed by
  ``-ra``) without a GPU or without a CUDA build of ``pdl_ext._C``.
- ``cuda_device``: the ``cuda`` case alone, for checks that only mean something on a GPU (the CUDA
  kernel against the CPU kernel, bit for bit where docs/op.md promises it).
- ``cpu_kernel``: helpers comparing an op's results on the GPU with the CPU kernel's.

Threads and processes: ``restore_threads`` (torch.set_num_threads restored after the test),
``one_thread`` (one intra-op thread for the test), ``free_port()`` and ``ddp_spawn`` (gloo DDP
workers; they call ``dist.init_process_group("gloo", rank=rank, world_size=world)``, env:// init).
"""
from __future__ import annotations

import socket
from typing import Any, Callable, Dict, Optional, Tuple

import pytest
import torch

from pdl_ext import extension

# ----------------------------------------------------------------------------------------------
# Devices

CUDA_AVAILABLE = torch.cuda.is_available()
CUDA_KERNELS = extension.has_kernel("wasserstein_1d_fwd", "CUDA")
DEVICES = ["cpu"] + (["cuda"] if CUDA_AVAILABLE else [])


def cuda_skip_reason() -> Optional[str]:
    """Why the ``cuda`` cases cannot run here (None when they can)."""
    if not CUDA_AVAILABLE:
        return "no GPU visible (torch.cuda.is_available() is False)"
    if not CUDA_KERNELS:
        return "pdl_ext._C was built without its CUDA kernels (FORCE_CUDA=1 builds them)"
    return None


_CUDA_SKIP = cuda_skip_reason()
_CUDA_PARAM = pytest.param("cuda", id="cuda", marks=pytest.mark.skipif(_CUDA_SKIP is not None,
                                                                       reason=f"cuda: {_CUDA_SKIP}"))
DEVICE_PARAMS = [pytest.param("cpu", id="cpu"), _CUDA_PARAM]


@pytest.fixture(params=DEVICE_PARAMS)
def device(request) -> str:
    """"cpu", then "cuda" (skipped without a GPU and a CUDA build)."""
    return request.param


@pytest.fixture(params=[_CUDA_PARAM])
def cuda_device(request) -> str:
    """"cuda" only: for checks of the CUDA kernels against the CPU kernel."""
    return request.param


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "gpu_losses: the losses on cuda against the CPU (.ci/gpu_check.sh stage 2)")


# Tolerances of GPU results against the CPU kernel's, per dtype (values: sums in another order).
TOL: Dict[torch.dtype, Dict[str, float]] = {
    torch.float64: dict(rtol=1e-10, atol=1e-12),
    torch.float32: dict(rtol=1e-4, atol=1e-6),
    torch.float16: dict(rtol=2e-3, atol=1e-5),
    torch.bfloat16: dict(rtol=1.6e-2, atol=1e-5),
}


class CpuKernel:
    """Comparisons of results computed on a GPU with the CPU kernel's on the same inputs.

    docs/op.md: both devices sort with ties broken by position and do the same per-pair arithmetic,
    so with N == M the per-element derivatives are the same bits; values are sums in another order
    (close), and N != M derivatives are sums of several terms that FMA may round differently (close).
    """

    TOL = TOL

    @staticmethod
    def close_grad(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype) -> None:
        scale = expected.double().abs().max().item() if expected.numel() else 0.0
        tol = TOL[dtype]
        torch.testing.assert_close(actual, expected, rtol=tol["rtol"], atol=max(tol["atol"], 1e-6 * scale),
                                   equal_nan=True)

    @classmethod
    def check_fwd(cls, x: torch.Tensor, y: torch.Tensor, p: int, grad_x: bool = True, grad_y: bool = True,
                  normalized: bool = False) -> Tuple[torch.Tensor, ...]:
        """Runs ``wasserstein_1d_fwd`` (or the normalized one) on x's device and on the CPU and
        compares: values close, derivatives bitwise when N == M (else close), norms close. Returns
        the device's outputs. On the CPU itself there is nothing to compare: returns its outputs."""
        op = torch.ops.pdl_ext.normalized_wasserstein_1d_fwd if normalized else torch.ops.pdl_ext.wasserstein_1d_fwd
        x, y = x.detach(), y.detach()
        got = op(x, y, p, grad_x, grad_y)
        if x.device.type == "cpu":
            return got
        want = op(x.cpu(), y.cpu(), p, grad_x, grad_y)
        dtype = x.dtype
        assert all(g.device == x.device for g in got)
        torch.testing.assert_close(got[0].cpu(), want[0], equal_nan=True, **TOL[dtype])
        equal = x.shape[-1] == y.shape[-1]
        for g, w in zip(got[1:3], want[1:3]):
            assert g.shape == w.shape and g.dtype == w.dtype
            if equal and not normalized:
                assert torch.equal(g.cpu().isnan(), w.isnan()) and torch.equal(g.cpu().nan_to_num(), w.nan_to_num())
            else:
                cls.close_grad(g.cpu(), w, dtype)
        for g, w in zip(got[3:], want[3:]):  # the norms of the normalized op
            torch.testing.assert_close(g.cpu(), w, **TOL[w.dtype])
        return got


@pytest.fixture
def cpu_kernel() -> type:
    """CpuKernel: compare GPU results with the CPU kernel (see its docstring)."""
    return CpuKernel


# ----------------------------------------------------------------------------------------------
# Threads


@pytest.fixture
def restore_threads():
    """torch.set_num_threads as it was before the test, whatever the test sets."""
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.fixture
def one_thread():
    """One intra-op thread for this test only: on shared, busy cores OpenMP's spinning threads slow
    small convolutions down tenfold."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ----------------------------------------------------------------------------------------------
# DDP


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def ddp_spawn(monkeypatch) -> Callable[..., None]:
    """``ddp_spawn(worker, *args, world=2)`` runs ``worker(rank, world, *args)`` in ``world`` spawned
    processes with MASTER_ADDR / MASTER_PORT set (a fresh free port), and waits for them.

    ``worker`` must be a module-level function of the test module (spawn pickles it by name); it
    initialises its group itself: ``dist.init_process_group("gloo", rank=rank, world_size=world)``
    (and ``torch.set_num_threads(1)`` on a shared machine), and destroys it at the end.
    """

    def spawn(worker: Callable[..., Any], *args: Any, world: int = 2) -> None:
        import torch.multiprocessing as mp

        monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
        monkeypatch.setenv("MASTER_PORT", str(free_port()))
        mp.spawn(worker, args=(world, *args), nprocs=world, join=True)

    return spawn
