"""Timings of wasserstein_1d per shape (one pytest-benchmark group each): fused (on the best CPU path,
and capped to the AVX2 and portable radix paths where they run), pure PyTorch and POT (when installed),
forward alone and forward+backward (x requires grad, y does not).

    pytest benchmarks/ --benchmark-only              # the VGG16 feature-row table, timed
    pytest benchmarks/ --benchmark-disable           # smoke: small shapes, each case run once

Every case also checks its values against float64 sort-and-match, so a fast wrong kernel fails.
"""
from __future__ import annotations

from typing import Dict, Tuple

import pytest
import torch

from pdl_ext import extension_info
from pdl_ext.apps.bench import IMPLEMENTATIONS, make_inputs, pure_torch_wasserstein_1d, step

_expected: Dict[Tuple[int, int], torch.Tensor] = {}


def expected_values(rows: int, n: int) -> torch.Tensor:
    """W_1 of the benchmark inputs in float64, computed once per shape."""
    if (rows, n) not in _expected:
        x, y = make_inputs(rows, n, n, torch.float32)
        with torch.no_grad():
            _expected[(rows, n)] = pure_torch_wasserstein_1d(x.double(), y.double(), 1)
    return _expected[(rows, n)]


@pytest.mark.parametrize("mode", ["forward", "forward+backward"])
@pytest.mark.parametrize("impl", ["fused", "fused-avx2", "fused-radix", "torch", "pot"])
def test_wasserstein_1d(benchmark, monkeypatch, shape: Tuple[int, int], impl: str, mode: str) -> None:
    if impl == "pot":
        pytest.importorskip("ot", reason="POT is not installed")
    if impl.startswith("fused-"):  # a CPU path below the best one: PDL_EXT_CPU_PATH caps the choice
        path = impl.split("-", 1)[1]
        monkeypatch.setenv("PDL_EXT_CPU_PATH", path)
        if extension_info().get("cpu_path") != path:
            pytest.skip(f"the {path} CPU path does not run here")
    rows, n = shape
    fn = IMPLEMENTATIONS[impl.split("-")[0]][1]
    x, y = make_inputs(rows, n, n, torch.float32)
    if mode == "forward":
        x.requires_grad_(False)  # the loss value alone, as in evaluation

        def run() -> torch.Tensor:
            return fn(x, y, 1)
    else:

        def run() -> torch.Tensor:
            return step(fn, x, y, 1)

    benchmark.group = f"{rows}x{n}"
    benchmark.extra_info.update({"rows": rows, "n": n, "impl": impl, "mode": mode, "elements": rows * n})
    out = benchmark(run)
    if benchmark.stats is not None:  # None under --benchmark-disable
        benchmark.extra_info["melem_per_s"] = rows * n / benchmark.stats.stats.median / 1e6
    torch.testing.assert_close(out.double(), expected_values(rows, n), rtol=1e-4, atol=1e-6)
    if mode == "forward+backward":
        assert x.grad is not None and x.grad.shape == x.shape
