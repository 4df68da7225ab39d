"""Loading of the compiled extension pdl_ext._C, and what it holds."""
from __future__ import annotations

import warnings
from typing import Any, Dict, Optional

import torch

try:
    from . import _C  # noqa: F401  (loading the library registers the torch.ops.pdl_ext ops)

    COMPILED = True
    _LOAD_ERROR: Optional[str] = None
except ImportError as exc:  # not built: the pure-PyTorch reference serves instead
    COMPILED = False
    _LOAD_ERROR = str(exc)

_warned = False


def warn_fallback() -> None:
    """Warns once per process that the pure-PyTorch reference runs in place of the C++ ops."""
    global _warned
    if not _warned:
        _warned = True
        warnings.warn(
            "pdl_ext: the C++ extension pdl_ext._C is not built "
            f"({_LOAD_ERROR}); using the slower pure-PyTorch reference. "
            "Build it with `pip install --no-build-isolation -e .`.",
            RuntimeWarning,
            stacklevel=3,
        )


def has_kernel(op: str, dispatch_key: str) -> bool:
    """True when the registered op `pdl_ext::<op>` has a kernel for `dispatch_key` ("CPU", "CUDA")."""
    if not COMPILED:
        return False
    return bool(torch._C._dispatch_has_kernel_for_dispatch_key(f"pdl_ext::{op}", dispatch_key))


def extension_info() -> Dict[str, Any]:
    """What this installation of pdl_ext holds.

    Returns:
        dict with ``compiled`` (the C++ extension is loaded), ``cuda`` (CUDA kernels were compiled
        in), ``cuda_available`` (torch sees a GPU), ``version``, ``torch``, ``openmp``,
        ``num_threads``, ``cpu_sort`` (the sort of the CPU kernels for float32 rows: ``"avx512"`` on
        processors with AVX-512, else ``"radix"``; ``PDL_EXT_CPU_SORT=radix`` forces the radix sort)
        and, when not compiled, ``load_error``.

    Example:
        >>> import pdl_ext
        >>> sorted(k for k in pdl_ext.extension_info() if k in ("compiled", "cuda"))
        ['compiled', 'cuda']
    """
    from . import __version__

    info: Dict[str, Any] = {
        "compiled": COMPILED,
        "cuda": has_kernel("wasserstein_1d_fwd", "CUDA"),
        "cuda_available": torch.cuda.is_available(),
        "version": __version__,
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "openmp": torch.backends.openmp.is_available(),
        "num_threads": torch.get_num_threads(),
    }
    if COMPILED:
        info["cpu_sort"] = _C.cpu_sort()
    else:
        info["load_error"] = _LOAD_ERROR
    return info
