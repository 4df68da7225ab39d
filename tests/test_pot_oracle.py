"""POT (Python Optimal Transport, ``ot.wasserstein_1d``) as a peer oracle of ``pdl_ext.wasserstein_1d``.

POT's ``wasserstein_1d(u, v, p=p)`` integrates ``|F_u^-1(q) - F_v^-1(q)|^p`` over q in [0, 1], that is
W_p **raised to the power p** (its docs: "the p-Wasserstein distance raised to the power p"), which is
what ``pdl_ext.wasserstein_1d`` returns (W_1 for p=1, W_2^2 for p=2): no root is taken on either side.
POT's distributions run along dim 0, ours along the last dim. Values are computed by POT on NumPy
arrays (its own code, not torch); gradients by POT's torch backend through autograd.
Skipped when POT is not installed (``pip install pot``; ``.ci/setup.sh`` installs it).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

import pdl_ext

ot = pytest.importorskip("ot")

SIZES = [(64, 64), (50, 37), (7, 300), (1, 5), (33, 1)]  # N == M and N != M, either side longer, one atom


def _pot(x: np.ndarray, y: np.ndarray, p: int) -> np.ndarray:
    """W_p^p of each row of x (..., N) and y (..., M) by POT on NumPy (distributions along dim 0 there;
    POT batches over one trailing dim, so the leading dims are flattened and restored)."""
    lead = x.shape[:-1]
    cost = ot.wasserstein_1d(x.reshape(-1, x.shape[-1]).T, y.reshape(-1, y.shape[-1]).T, p=p)
    return np.asarray(cost).reshape(lead)


def _samples(lead, n: int, m: int, seed: int):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(*lead, n))
    y = rng.normal(0.5, 2.0, size=(*lead, m))
    return x, y


@pytest.mark.parametrize("p", [1, 2])
@pytest.mark.parametrize("n,m", SIZES)
def test_values_match_pot_float64(n, m, p):
    x, y = _samples((3, 4), n, m, seed=n * 1000 + m)
    got = pdl_ext.wasserstein_1d(torch.from_numpy(x), torch.from_numpy(y), p=p)
    want = _pot(x, y, p)
    assert got.shape == (3, 4) and want.shape == (3, 4)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("p", [1, 2])
@pytest.mark.parametrize("n,m", [(256, 256), (256, 100)])
def test_values_match_pot_float32(n, m, p):
    x, y = _samples((8,), n, m, seed=7)
    got = pdl_ext.wasserstein_1d(torch.from_numpy(x).float(), torch.from_numpy(y).float(), p=p)
    # POT in float64 on the float32-rounded samples: the op's own rounding is all that differs
    want = _pot(x.astype(np.float32).astype(np.float64), y.astype(np.float32).astype(np.float64), p)
    np.testing.assert_allclose(got.double().numpy(), want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("p", [1, 2])
@pytest.mark.parametrize("n,m", [(40, 40), (40, 29), (9, 64)])
def test_ties_match_pot(n, m, p):
    # integer-valued samples: many ties inside and across the two rows
    rng = np.random.default_rng(3)
    x = rng.integers(0, 5, size=(5, n)).astype(np.float64)
    y = rng.integers(1, 7, size=(5, m)).astype(np.float64)
    got = pdl_ext.wasserstein_1d(torch.from_numpy(x), torch.from_numpy(y), p=p)
    np.testing.assert_allclose(got.numpy(), _pot(x, y, p), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("p", [1, 2])
@pytest.mark.parametrize("n,m", [(50, 50), (50, 37), (7, 300)])
def test_gradients_match_pot(n, m, p):
    # continuous samples (no ties): the gradient with respect to x is unique
    x, y = _samples((6,), n, m, seed=11)
    ours = torch.tensor(x, requires_grad=True)
    pdl_ext.wasserstein_1d(ours, torch.from_numpy(y), p=p).sum().backward()
    theirs = torch.tensor(x, requires_grad=True)
    ot.wasserstein_1d(theirs.T, torch.from_numpy(y).T, p=p).sum().backward()
    torch.testing.assert_close(ours.grad, theirs.grad, rtol=1e-9, atol=1e-12)
