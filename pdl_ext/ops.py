"""The Python face of the registered ops: a typed wrapper per op, its fake kernel and its autograd.

The ops themselves are declared once, in csrc/wasserstein_1d.cpp:

    pdl_ext::wasserstein_1d(Tensor x, Tensor y, int p) -> Tensor
    pdl_ext::wasserstein_1d_fwd(Tensor x, Tensor y, int p, bool grad_x, bool grad_y) -> (Tensor, Tensor, Tensor)
    pdl_ext::wasserstein_1d_bwd(Tensor grad, Tensor d) -> Tensor
"""
from __future__ import annotations

import torch

from . import extension, reference
from ._checks import check_wasserstein_1d_inputs


def wasserstein_1d(x: torch.Tensor, y: torch.Tensor, p: int = 1) -> torch.Tensor:
    r"""Exact 1D Wasserstein distance :math:`W_p^p` between the rows of ``x`` and ``y``.

    Each row is an empirical distribution with uniform weights. With equal row lengths this is the
    sort-and-match formula ``mean(|sort(x)_i - sort(y)_i|^p)``; with unequal lengths the two quantile
    functions are compared exactly on their merged grid. It is the quantity of POT's
    ``ot.wasserstein_1d`` (and, for ``p=1``, of ``scipy.stats.wasserstein_distance``).

    Args:
        x: ``(..., N)`` float16, bfloat16, float32 or float64; any layout.
        y: ``(..., M)`` with the leading shape, dtype and device of ``x``.
        p: 1 or 2. The result is :math:`W_p^p` (no root), which is what a loss wants.

    Returns:
        ``(...)``, the dtype of ``x`` (float16/bfloat16 are accumulated in float32).

    Gradients flow to ``x`` and ``y``; the ``y`` side is only computed when ``y`` requires grad.
    For ``p=1`` the subgradient at a zero difference is 0. Ties are broken by position, so results
    are deterministic. A NaN anywhere in a row pair makes that row's value (and gradient) NaN.
    Double backward is not supported.

    Example:
        >>> import torch, pdl_ext
        >>> x = torch.tensor([[0.0, 1.0, 3.0]], requires_grad=True)
        >>> y = torch.tensor([[5.0, 1.0, 2.0]])
        >>> w = pdl_ext.wasserstein_1d(x, y, p=1)   # sorted: (0,1,3) vs (1,2,5) -> (1 + 1 + 2) / 3
        >>> round(w.item(), 4)
        1.3333
        >>> w.sum().backward(); x.grad
        tensor([[-0.3333, -0.3333, -0.3333]])
    """
    p = check_wasserstein_1d_inputs(x, y, p)
    if extension.COMPILED:
        return torch.ops.pdl_ext.wasserstein_1d(x, y, p)
    extension.warn_fallback()
    return reference.wasserstein_1d(x, y, p)


if extension.COMPILED:

    @torch.library.register_fake("pdl_ext::wasserstein_1d_fwd")
    def _wasserstein_1d_fwd_fake(x, y, p, grad_x, grad_y):
        torch._check(p == 1 or p == 2, lambda: f"wasserstein_1d: p must be 1 or 2, got {p}")
        torch._check(x.shape[:-1] == y.shape[:-1], lambda: "wasserstein_1d: leading shapes differ")
        loss = x.new_empty(x.shape[:-1])
        dx = x.new_empty(x.shape) if grad_x else x.new_empty(0)
        dy = y.new_empty(y.shape) if grad_y else y.new_empty(0)
        return loss, dx, dy

    def _wasserstein_1d_fwd_setup(ctx, inputs, output):
        _, _, _, grad_x, grad_y = inputs
        _, dx, dy = output
        ctx.grad_x, ctx.grad_y = grad_x, grad_y
        ctx.mark_non_differentiable(dx, dy)
        ctx.save_for_backward(dx, dy)

    def _wasserstein_1d_fwd_backward(ctx, grad_loss, _grad_dx, _grad_dy):
        if torch.is_grad_enabled() and not torch.compiler.is_compiling():
            # create_graph=True: the saved derivatives carry no graph, so a second derivative would
            # silently miss the p=2 curvature. Refuse rather than return something wrong.
            raise RuntimeError("pdl_ext: double backward of wasserstein_1d is not supported")
        dx, dy = ctx.saved_tensors
        gx = gy = None
        if ctx.needs_input_grad[0]:
            if not ctx.grad_x:
                raise RuntimeError("wasserstein_1d_fwd: x requires grad but the op ran with grad_x=False")
            gx = torch.ops.pdl_ext.wasserstein_1d_bwd(grad_loss, dx)
        if ctx.needs_input_grad[1]:
            if not ctx.grad_y:
                raise RuntimeError("wasserstein_1d_fwd: y requires grad but the op ran with grad_y=False")
            gy = torch.ops.pdl_ext.wasserstein_1d_bwd(grad_loss, dy)
        return gx, gy, None, None, None

    torch.library.register_autograd(
        "pdl_ext::wasserstein_1d_fwd", _wasserstein_1d_fwd_backward, setup_context=_wasserstein_1d_fwd_setup
    )

    @torch.library.register_fake("pdl_ext::wasserstein_1d_bwd")
    def _wasserstein_1d_bwd_fake(grad, d):
        return d.new_empty(d.shape)

    def _wasserstein_1d_bwd_setup(ctx, inputs, output):
        pass

    def _wasserstein_1d_bwd_backward(ctx, _grad):
        raise RuntimeError("pdl_ext: double backward of wasserstein_1d is not supported")

    torch.library.register_autograd(
        "pdl_ext::wasserstein_1d_bwd", _wasserstein_1d_bwd_backward, setup_context=_wasserstein_1d_bwd_setup
    )
