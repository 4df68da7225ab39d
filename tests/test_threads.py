"""Concurrency and determinism on the CPU: calls from several Python threads at once, and under other
torch.set_num_threads settings, give the bits of serial calls; the same inputs give the same bits
whatever the layout, the batch they sit in, or the thread count. Also a smoke run of benchmarks/soak.py.
(`restore_threads` is the fixture of tests/conftest.py. The GPU's determinism is tested through the
`device` fixture in test_wasserstein_1d.py.)
"""
from __future__ import annotations

import importlib.util
import random
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import pytest
import torch

from pdl_ext import extension, ops
from pdl_ext.losses.pdl import PDLLoss
from pdl_ext.projection import projected_distance

pytestmark = pytest.mark.skipif(not extension.COMPILED, reason="C++ extension not built")

_INT_OF = {torch.float64: torch.int64, torch.float32: torch.int32, torch.float16: torch.int16,
           torch.bfloat16: torch.int16}


def _bits(t: torch.Tensor) -> torch.Tensor:
    """The raw bits (NaN payloads and the sign of zero included)."""
    return t.detach().contiguous().view(_INT_OF[t.dtype])


def _assert_same_bits(a: Tuple[torch.Tensor, ...], b: Tuple[torch.Tensor, ...], what: str) -> None:
    assert len(a) == len(b)
    for i, (u, v) in enumerate(zip(a, b)):
        assert u.shape == v.shape and u.dtype == v.dtype, f"{what}[{i}]: {u.shape}/{u.dtype} vs {v.shape}/{v.dtype}"
        assert torch.equal(_bits(u), _bits(v)), f"{what}[{i}]: bits differ"


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _with_specials(x: torch.Tensor, seed: int) -> torch.Tensor:
    """Ties, -0.0, an infinity and a NaN row, so that every branch of the kernels runs."""
    g = _gen(seed)
    x = x.clone()
    x[..., ::5] = torch.randint(-2, 3, x[..., ::5].shape, generator=g).to(x.dtype)
    x[..., 1::9] = -0.0
    x.view(-1, x.shape[-1])[0, 0] = float("inf")
    x.view(-1, x.shape[-1])[1, 2] = float("nan")
    return x


def _forward_backward(fn: Callable, x: torch.Tensor, y: torch.Tensor, grad_y: bool,
                      up: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, ...]:
    x = x.detach().requires_grad_(True)
    y = y.detach().requires_grad_(grad_y)
    w = fn(x, y)
    if up is None:
        up = torch.linspace(0.5, 1.5, w.numel(), dtype=torch.float64).reshape(w.shape)
    up = up.to(w.dtype)
    grads = torch.autograd.grad(w, (x, y) if grad_y else (x,), up)
    return (w.detach(), *grads)


def _workloads() -> Dict[str, Callable[[], Tuple[torch.Tensor, ...]]]:
    """Independent jobs over fixed inputs; each returns its value and gradients."""
    g = _gen(0)
    x32 = _with_specials(torch.randn(64, 700, generator=g), 1)
    y32 = _with_specials(torch.randn(64, 700, generator=g), 2)
    x64 = torch.randn(16, 1000, generator=g, dtype=torch.float64)
    y64 = torch.randn(16, 777, generator=g, dtype=torch.float64)
    xbf = torch.randn(300, 20, generator=g).bfloat16()  # short rows: several rows share one sort
    ybf = torch.randn(300, 13, generator=g).bfloat16()
    fx = torch.relu(torch.randn(2, 16, 20, 25, generator=g))
    fy = torch.relu(torch.randn(2, 16, 15, 20, generator=g))
    return {
        "w1d float32 ties/inf/nan, p=1": lambda: _forward_backward(lambda a, b: ops.wasserstein_1d(a, b, 1), x32, y32, True),
        "w1d float64 unequal, p=2": lambda: _forward_backward(lambda a, b: ops.wasserstein_1d(a, b, 2), x64, y64, False),
        "w1d bfloat16 short rows": lambda: _forward_backward(lambda a, b: ops.wasserstein_1d(a, b, 1), xbf, ybf, True),
        "normalized": lambda: _forward_backward(
            lambda a, b: ops.normalized_wasserstein_1d(a, b, 1), fx.flatten(2), fy.flatten(2), True),
        "projected sliced": lambda: _forward_backward(
            lambda a, b: projected_distance(a, b, 2, 8, normalize=True), fx, fy, False),
    }


def _run_concurrently(jobs: Dict[str, Callable], workers: int, repeats: int, seed: int) -> List[Tuple[str, tuple]]:
    order = [name for name in jobs for _ in range(repeats)]
    random.Random(seed).shuffle(order)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = [(name, pool.submit(jobs[name])) for name in order]
        return [(name, f.result(timeout=120)) for name, f in futures]


def test_threads_give_the_bits_of_serial_calls(restore_threads):
    jobs = _workloads()
    serial = {name: job() for name, job in jobs.items()}
    # the same bits again (determinism), then from 4 Python threads at once under 3 thread settings
    for name, job in jobs.items():
        _assert_same_bits(job(), serial[name], f"{name} (repeat)")
    for threads in (1, 3, 2):
        torch.set_num_threads(threads)
        for name, out in _run_concurrently(jobs, workers=4, repeats=3, seed=threads):
            _assert_same_bits(out, serial[name], f"{name} ({threads} intra-op threads, 4 Python threads)")


def test_pdl_loss_from_threads_matches_serial(restore_threads):
    # One shared module (its sliced directions are cached lazily: the first calls race to fill it).
    loss = PDLLoss(layers=("relu1_2", "relu2_1"), pretrained=False, projection=8, normalize=True)
    g = _gen(3)
    images = [(torch.rand(1, 3, s, s, generator=g), torch.rand(1, 3, s, s, generator=g)) for s in (12, 16, 20)]

    def job(i: int) -> Tuple[torch.Tensor, ...]:
        x, y = images[i]
        return _forward_backward(loss, x, y, False)

    torch.set_num_threads(2)
    loss._directions.clear()
    jobs = {str(i): (lambda i=i: job(i)) for i in range(len(images))}
    concurrent = _run_concurrently(jobs, workers=3, repeats=2, seed=0)
    serial = {name: j() for name, j in jobs.items()}
    for name, out in concurrent:
        _assert_same_bits(out, serial[name], f"PDLLoss image {name}")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("n,m", [(20, 20), (20, 13), (3000, 2000)])
def test_same_bits_whatever_the_layout_batch_and_threads(dtype, n, m, restore_threads):
    g = _gen(n + m)
    x = _with_specials(torch.randn(6, 5, n, generator=g, dtype=torch.float64), 4).to(dtype)
    y = _with_specials(torch.randn(6, 5, m, generator=g, dtype=torch.float64) * 2, 5).to(dtype)

    up = torch.linspace(0.5, 1.5, 30, dtype=torch.float64).reshape(6, 5)

    def run(a: torch.Tensor, b: torch.Tensor, rows=(slice(None), slice(None))) -> Tuple[torch.Tensor, ...]:
        return _forward_backward(lambda u, v: ops.wasserstein_1d(u, v, 2), a, b, True, up[rows])

    want = run(x, y)
    # another memory layout of the same values
    xt = x.transpose(0, 1).contiguous().transpose(0, 1)
    yt = torch.empty(6, 5, 2 * m, dtype=dtype)[..., ::2].copy_(y)
    _assert_same_bits(run(xt, yt), want, "transposed/strided")
    # each row alone, or in another batch: the same bits (rows are independent, also when grouped)
    for i, j in ((0, 0), (0, 4), (3, 0), (3, 4)):
        rows = (slice(i, i + 1), slice(j, j + 1))
        _assert_same_bits(run(x[rows], y[rows], rows), tuple(t[rows] for t in want), f"row ({i}, {j}) alone")
    rows = (slice(2, None), slice(None))
    _assert_same_bits(run(x[rows], y[rows], rows), tuple(t[rows] for t in want), "a sub-batch")
    # other thread counts
    for threads in (1, 2, 3):
        torch.set_num_threads(threads)
        _assert_same_bits(run(x, y), want, f"{threads} threads")


def test_soak_smoke():
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "soak.py"
    spec = importlib.util.spec_from_file_location("pdl_soak", path)
    soak = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(soak)
    for name in soak.WORKLOADS:
        calls = 30 if name == "pdl_loss" else 60
        r = soak.soak_one(name, calls=calls, seed=1, warmup=calls // 2)
        assert r["calls"] == calls and r["seconds"] > 0
        assert r["end_peak_rss_mb"] >= r["warmup_peak_rss_mb"] > 0
        # a few calls cannot prove a leak's absence; they do catch a gross one (MiBs per call)
        assert r["peak_growth_mb"] < 64, r
    assert soak.main(["--calls", "4", "--warmup", "2", "--workloads", "wasserstein_1d", "--quiet"]) == 0


def _ddp_worker(rank: int, world: int, x: torch.Tensor, y: torch.Tensor, out: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)  # env:// (MASTER_ADDR/PORT from ddp_spawn)
    try:
        rows = x.shape[0] // world
        xs = x[rank * rows:(rank + 1) * rows].clone().requires_grad_(True)
        w = ops.wasserstein_1d(xs, y[rank * rows:(rank + 1) * rows], 1)
        w.sum().backward()
        values = [torch.empty_like(w) for _ in range(world)]
        grads = [torch.empty_like(xs) for _ in range(world)]
        dist.all_gather(values, w.detach())
        dist.all_gather(grads, xs.grad)
        if rank == 0:
            torch.save((torch.cat(values), torch.cat(grads)), out)
    finally:
        dist.destroy_process_group()


def test_two_processes_give_the_bits_of_one(tmp_path, ddp_spawn):
    # Each gloo process computes its half of the rows: together the bits of one process on all of them.
    x = _with_specials(torch.randn(8, 700, generator=_gen(7)), 8)
    y = torch.randn(8, 500, generator=_gen(9))
    ddp_spawn(_ddp_worker, x, y, str(tmp_path / "ddp.pt"), world=2)
    values, grads = torch.load(tmp_path / "ddp.pt", weights_only=True)
    want = _forward_backward(lambda a, b: ops.wasserstein_1d(a, b, 1), x, y, False, torch.ones(8, dtype=torch.float64))
    _assert_same_bits((values, grads), want, "2 gloo processes")
