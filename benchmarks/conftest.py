"""pytest-benchmark suite of pdl_ext: which shapes to time.

Timed runs (`pytest benchmarks/ --benchmark-only`) use the VGG16 feature-row table; a smoke run
(`pytest benchmarks/ --benchmark-disable`) uses two small shapes, so CI only checks that it runs.
`--bench-shapes` chooses explicitly: full, quick, small, or ROWSxN[,ROWSxN...].
"""
from __future__ import annotations

from typing import List, Tuple

import pytest

from pdl_ext.apps.bench import FULL_SHAPES, QUICK_SHAPES, parse_shapes

SMALL_SHAPES: Tuple[Tuple[int, int], ...] = ((32, 1024), (256, 64))


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--bench-shapes", default=None,
        help="full (the VGG16 feature-row table, the default when timing), quick, small (the default with "
             "--benchmark-disable), or ROWSxN[,ROWSxN...]",
    )


def bench_shapes(config: pytest.Config) -> List[Tuple[int, int]]:
    choice = config.getoption("--bench-shapes")
    if choice is None:
        choice = "small" if config.getoption("benchmark_disable", default=False) else "full"
    named = {"full": FULL_SHAPES, "quick": QUICK_SHAPES, "small": SMALL_SHAPES}
    return list(named[choice]) if choice in named else parse_shapes(choice)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "shape" in metafunc.fixturenames:
        shapes = bench_shapes(metafunc.config)
        metafunc.parametrize("shape", shapes, ids=[f"{r}x{n}" for r, n in shapes])
