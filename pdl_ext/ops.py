"""The Python face of the registered ops: a typed wrapper per op, its fake kernel and its autograd.

The ops themselves are declared once, in csrc/wasserstein_1d.cpp:

    pdl_ext::wasserstein_1d(Tensor x, Tensor y, int p) -> Tensor
    pdl_ext::wasserstein_1d_fwd(Tensor x, Tensor y, int p, bool grad_x, bool grad_y) -> (Tensor, Tensor, Tensor)
    pdl_ext::wasserstein_1d_bwd(Tensor grad, Tensor d) -> Tensor
    pdl_ext::normalized_wasserstein_1d(Tensor x, Tensor y, int p) -> Tensor
    pdl_ext::normalized_wasserstein_1d_fwd(Tensor x, Tensor y, int p, bool grad_x, bool grad_y)
        -> (Tensor, Tensor, Tensor, Tensor, Tensor)
    pdl_ext::normalized_wasserstein_1d_bwd(Tensor grad, Tensor g, Tensor f, Tensor norm) -> Tensor

The composites (wasserstein_1d, normalized_wasserstein_1d) pick which derivatives the _fwd ops make
(those autograd will ask for, or that a forward-mode tangent needs); the _fwd ops return the values,
the derivatives and (normalized) the per-position channel norms; the _bwd ops are the whole backward.
This module registers their fake kernels and their autograd (reverse and forward mode).
"""
from __future__ import annotations

import torch

from . import extension, reference
from ._checks import MAX_ROW_LENGTH, check_wasserstein_1d_inputs


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
    Forward mode (``torch.func.jvp``, ``torch.autograd.forward_ad``, ``jacfwd``) and
    ``torch.func.grad``/``vjp``/``jacrev`` work; second derivatives (double backward, ``hessian``,
    nested grad/jvp transforms) raise an error.

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


def normalized_wasserstein_1d(x: torch.Tensor, y: torch.Tensor, p: int = 1) -> torch.Tensor:
    r"""Per-channel :math:`W_p^p` over positions of features L2-normalized over channels, fused.

    Each position's channel vector is scaled to unit L2 norm (``f / (||f|| + 1e-10)``, as LPIPS) on
    the fly inside the kernel, then channel ``c`` of ``x`` is compared with channel ``c`` of ``y`` as
    distributions over positions. No normalized copy of the features is stored.

    Args:
        x: ``(B, C, N)`` features (e.g. a ``(B, C, H, W)`` map reshaped), float dtypes as
            :func:`wasserstein_1d`.
        y: ``(B, C, M)``, same B, C, dtype and device.
        p: 1 or 2.

    Returns:
        ``(B, C)``.

    The gradient at an all-zero position is taken as 0 (for ReLU features it is zero there anyway).
    Non-finite features: where the float64 sum of squares over a position's channels is not finite
    (an inf or NaN feature there, in ``x`` or ``y``), that position's normalized features are NaN in
    every channel; every channel row of the sample passes through it, so all ``C`` values of that
    sample are NaN, and so are its gradients (all of them, with respect to ``x`` and ``y``). Other
    samples are unaffected.

    Example:
        >>> import torch, pdl_ext
        >>> x, y = torch.rand(2, 16, 100), torch.rand(2, 16, 81)
        >>> pdl_ext.ops.normalized_wasserstein_1d(x, y).shape
        torch.Size([2, 16])
    """
    fn = "normalized_wasserstein_1d"
    for name, t, shape in (("x", x, "(B, C, N)"), ("y", y, "(B, C, M)")):
        if isinstance(t, torch.Tensor) and t.dim() != 3:
            raise ValueError(f"{fn}: {name} must be {shape}, got shape {tuple(t.shape)}")
    p = check_wasserstein_1d_inputs(x, y, p, fn)
    if extension.COMPILED:
        return torch.ops.pdl_ext.normalized_wasserstein_1d(x, y, p)
    extension.warn_fallback()
    return reference.normalized_wasserstein_1d(x, y, p)


def _refuse_double_backward(ctx) -> None:
    # torch.func.grad and torch.func.vjp run every backward with create_graph=True: a second derivative
    # is still refused there, when it is taken (the backward ops' autograd raises).
    if torch.is_grad_enabled() and not torch.compiler.is_compiling() and not ctx.under_functorch:
        # create_graph=True: the saved derivatives carry no graph, so a second derivative would
        # silently miss the curvature. Refuse rather than return something wrong.
        raise RuntimeError("pdl_ext: double backward of the wasserstein ops is not supported")


def _check_fake_row_length(x: torch.Tensor, y: torch.Tensor, fn: str) -> None:
    # The fake/meta kernels refuse what the C++ kernels refuse (ValueError, the same message).
    n, m = x.shape[-1], y.shape[-1]

    def message() -> str:
        return f"{fn}: rows must hold at most 2^31 - 1 = {MAX_ROW_LENGTH} items, got x rows of N = {n} and y rows of M = {m}"

    torch._check_value(n <= MAX_ROW_LENGTH, message)
    torch._check_value(m <= MAX_ROW_LENGTH, message)


def _tangent_part(d, t, computed: bool, op: str, name: str):
    if t is None:
        return None
    if not computed:
        raise RuntimeError(f"{op}: {name} has a forward-mode tangent but the op ran with grad_{name}=False")
    acc = torch.float64 if d.dtype == torch.float64 else torch.float32
    return (d.to(acc) * t.to(acc)).sum(-1)


def _sum_tangents(parts, like: torch.Tensor):
    parts = [t for t in parts if t is not None]
    if not parts:
        return None
    total = parts[0] if len(parts) == 1 else parts[0] + parts[1]
    return total.to(like.dtype)


def _normalized_tangent(g: torch.Tensor, f: torch.Tensor, tf: torch.Tensor, norm: torch.Tensor) -> torch.Tensor:
    """sum_n dW/du[b, c, n] du[b, c, n] for the tangent tf of the features f, u = f / (||f|| + eps).

    du = tf / (r + eps) - f (f . tf) / (r (r + eps)^2) with r = ||f|| over channels: the Jacobian the
    backward (normalize_grad) transposes, 0 at all-zero positions like it.
    """
    acc = norm.dtype
    g, f, tf = g.to(acc), f.to(acc), tf.to(acc)
    r = norm.unsqueeze(1)
    a = 1.0 / (r + reference.NORM_EPS)
    q = (f * tf).sum(1, keepdim=True)
    zero = r == 0
    du = tf * a - (f / torch.where(zero, torch.ones_like(r), r)) * (q * a * a)
    du = torch.where(zero, torch.zeros_like(du), du)
    return (g * du).sum(-1)


def _refuse_nested_derivatives(name: str) -> None:
    """Two torch.func grad/jvp levels (hessian, jacfwd(jacrev), grad(grad)) would differentiate the
    saved derivatives, which carry no graph: a silent zero curvature. Refused, as double backward."""
    from torch._functorch.pyfunctorch import TransformType, retrieve_all_functorch_interpreters

    levels = [i.key() for i in retrieve_all_functorch_interpreters()]
    if sum(k in (TransformType.Grad, TransformType.Jvp) for k in levels) > 1:
        raise RuntimeError(f"pdl_ext::{name}: second derivatives of the wasserstein ops are not supported "
                           "(nested torch.func grad/jvp transforms such as hessian, jacfwd(jacrev(f)) or grad(grad(f)))")


def _register_autograd(name: str, setup_context, backward, jvp) -> None:
    """Autograd of the fused op pdl_ext::<name>, reverse and forward mode.

    torch.library.register_autograd makes a backward only, and its function defines no
    setup_context of its own: forward-mode AD then drops the tangents (a silent zero) and torch.func
    transforms refuse it. This registers a function with setup_context, backward and jvp as the op's
    Autograd kernel instead, with the same fast path: below autograd when no input needs a
    derivative and no forward-mode level is open.
    """

    from torch._functorch.autograd_function import enable_single_level_autograd_function

    op = getattr(torch.ops.pdl_ext, name).default

    def forward(*args):
        with torch._C._AutoDispatchBelowAutograd():
            return op(*args)

    def setup(ctx, inputs, output):
        ctx.under_functorch = torch._C._are_functorch_transforms_active()
        setup_context(ctx, inputs, output)

    # This kernel runs at the Autograd key: for torch.func transforms, inside the processing of one
    # of their levels, with that level's wrapped tensors. A single-level function records the graph
    # (or the tangents) for that level alone, as autograd records an ATen op's; its forward then goes
    # below autograd to the lower levels, through the wrappers.
    Function = type(f"{name}_autograd", (torch.autograd.function._SingleLevelFunction,), {
        "forward": staticmethod(forward),
        "setup_context": staticmethod(setup),
        "backward": staticmethod(backward),
        "jvp": staticmethod(jvp),
    })

    def kernel(*args):
        if torch._C._are_functorch_transforms_active():
            _refuse_nested_derivatives(name)
        if ((torch.is_grad_enabled() and any(isinstance(a, torch.Tensor) and a.requires_grad for a in args))
                or torch.autograd.forward_ad._current_level >= 0):
            with enable_single_level_autograd_function():
                return Function.apply(*args)
        return forward(*args)

    _AUTOGRAD_LIB.impl(name, kernel, "Autograd")


if extension.COMPILED:
    _AUTOGRAD_LIB = torch.library.Library("pdl_ext", "IMPL")  # holds the Autograd kernels' registrations

    @torch.library.register_fake("pdl_ext::wasserstein_1d_fwd")
    def _wasserstein_1d_fwd_fake(x, y, p, grad_x, grad_y):
        torch._check(p == 1 or p == 2, lambda: f"wasserstein_1d: p must be 1 or 2, got {p}")
        torch._check(x.shape[:-1] == y.shape[:-1], lambda: "wasserstein_1d: leading shapes differ")
        _check_fake_row_length(x, y, "wasserstein_1d")
        loss = x.new_empty(x.shape[:-1])
        dx = x.new_empty(x.shape) if grad_x else x.new_empty(0)
        dy = y.new_empty(y.shape) if grad_y else y.new_empty(0)
        return loss, dx, dy

    def _wasserstein_1d_fwd_setup(ctx, inputs, output):
        _, _, _, grad_x, grad_y = inputs
        _, dx, dy = output
        ctx.grad_x, ctx.grad_y = grad_x, grad_y
        ctx.mark_non_differentiable(dx, dy)
        ctx.set_materialize_grads(False)  # no zero-filled x-sized gradients for dx and dy
        ctx.save_for_backward(dx, dy)
        ctx.save_for_forward(dx, dy)

    def _wasserstein_1d_fwd_jvp(ctx, tx, ty, *_unused):
        # Forward mode: the tangent of W is sum_i dW/dx_i tx_i + sum_j dW/dy_j ty_j, from the
        # derivatives the forward made (the composite asks for them when an input has a tangent).
        dx, dy = ctx.saved_tensors
        parts = [_tangent_part(d, t, ctx.grad_x if i == 0 else ctx.grad_y, "wasserstein_1d_fwd", "xy"[i])
                 for i, (d, t) in enumerate(((dx, tx), (dy, ty)))]
        return _sum_tangents(parts, dx), None, None

    def _wasserstein_1d_fwd_backward(ctx, grad_loss, _grad_dx, _grad_dy):
        _refuse_double_backward(ctx)
        if grad_loss is None:
            return None, None, None, None, None
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

    _register_autograd("wasserstein_1d_fwd", _wasserstein_1d_fwd_setup, _wasserstein_1d_fwd_backward,
                       _wasserstein_1d_fwd_jvp)

    @torch.library.register_fake("pdl_ext::wasserstein_1d_bwd")
    def _wasserstein_1d_bwd_fake(grad, d):
        return d.new_empty(d.shape)

    @torch.library.register_fake("pdl_ext::normalized_wasserstein_1d_fwd")
    def _normalized_fwd_fake(x, y, p, grad_x, grad_y):
        torch._check(x.dim() == 3 and y.dim() == 3, lambda: "normalized_wasserstein_1d: x, y must be (B, C, N)")
        torch._check(x.shape[:2] == y.shape[:2], lambda: "normalized_wasserstein_1d: (B, C) differ")
        _check_fake_row_length(x, y, "wasserstein_1d")
        acc = torch.float64 if x.dtype == torch.float64 else torch.float32
        loss = x.new_empty(x.shape[:2])
        dx = x.new_empty(x.shape) if grad_x else x.new_empty(0)
        dy = y.new_empty(y.shape) if grad_y else y.new_empty(0)
        norm_x = x.new_empty((x.shape[0], x.shape[2]), dtype=acc)
        norm_y = y.new_empty((y.shape[0], y.shape[2]), dtype=acc)
        return loss, dx, dy, norm_x, norm_y

    def _normalized_fwd_setup(ctx, inputs, output):
        x, y, _, grad_x, grad_y = inputs
        _, dx, dy, norm_x, norm_y = output
        ctx.grad_x, ctx.grad_y = grad_x, grad_y
        ctx.mark_non_differentiable(dx, dy, norm_x, norm_y)
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(x if grad_x else None, y if grad_y else None, dx, dy, norm_x, norm_y)
        ctx.save_for_forward(x if grad_x else None, y if grad_y else None, dx, dy, norm_x, norm_y)

    def _normalized_fwd_jvp(ctx, tx, ty, *_unused):
        x, y, dx, dy, norm_x, norm_y = ctx.saved_tensors
        parts = []
        for i, (f, g, norm, t) in enumerate(((x, dx, norm_x, tx), (y, dy, norm_y, ty))):
            if t is None:
                continue
            if not (ctx.grad_x if i == 0 else ctx.grad_y):
                raise RuntimeError(f"normalized_wasserstein_1d_fwd: {'xy'[i]} has a forward-mode tangent but the "
                                   f"op ran with grad_{'xy'[i]}=False")
            parts.append(_normalized_tangent(g, f, t, norm))
        return _sum_tangents(parts, dx), None, None, None, None

    def _normalized_fwd_backward(ctx, grad_loss, *_unused):
        _refuse_double_backward(ctx)
        if grad_loss is None:
            return None, None, None, None, None
        x, y, dx, dy, norm_x, norm_y = ctx.saved_tensors
        gx = gy = None
        if ctx.needs_input_grad[0]:
            if not ctx.grad_x:
                raise RuntimeError("normalized_wasserstein_1d_fwd: x requires grad but the op ran with grad_x=False")
            gx = torch.ops.pdl_ext.normalized_wasserstein_1d_bwd(grad_loss, dx, x, norm_x)
        if ctx.needs_input_grad[1]:
            if not ctx.grad_y:
                raise RuntimeError("normalized_wasserstein_1d_fwd: y requires grad but the op ran with grad_y=False")
            gy = torch.ops.pdl_ext.normalized_wasserstein_1d_bwd(grad_loss, dy, y, norm_y)
        return gx, gy, None, None, None

    _register_autograd("normalized_wasserstein_1d_fwd", _normalized_fwd_setup, _normalized_fwd_backward,
                       _normalized_fwd_jvp)

    @torch.library.register_fake("pdl_ext::normalized_wasserstein_1d_bwd")
    def _normalized_bwd_fake(grad, g, f, norm):
        return g.new_empty(g.shape)

    def _no_double_backward(ctx, *grads):
        raise RuntimeError("pdl_ext: double backward of the wasserstein ops is not supported")

    def _no_second_derivative_jvp(ctx, *tangents):
        raise RuntimeError("pdl_ext: second derivatives of the wasserstein ops are not supported (a forward-mode "
                           "derivative of their backward, e.g. torch.func.jacfwd(torch.func.jacrev(...)))")

    for _name in ("wasserstein_1d_bwd", "normalized_wasserstein_1d_bwd"):
        _register_autograd(_name, lambda ctx, inputs, output: None, _no_double_backward, _no_second_derivative_jvp)
