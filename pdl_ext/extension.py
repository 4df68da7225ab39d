"""Loading of the compiled extension pdl_ext._C, and what it holds."""
from __future__ import annotations

import os
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


def warn_deprecated_env() -> None:
    """DeprecationWarning when the CPU path is chosen by PDL_EXT_CPU_SORT (PDL_EXT_CPU_PATH unset)."""
    if os.environ.get("PDL_EXT_CPU_SORT") and not os.environ.get("PDL_EXT_CPU_PATH"):
        warnings.warn(
            "pdl_ext: the environment variable PDL_EXT_CPU_SORT is deprecated (it still picks the CPU path "
            "for now); set PDL_EXT_CPU_PATH instead",
            DeprecationWarning,
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
        in), ``cuda_available`` (torch sees a GPU), ``version``, ``torch``, ``torch_cuda``,
        ``openmp``, ``num_threads``, ``cpu_path`` (the path of the CPU kernels: ``"avx512"`` on
        processors with AVX-512 (F, BW, DQ, VL), ``"avx2"`` on those with AVX2 and F16C, else the
        portable ``"radix"``; the environment variable ``PDL_EXT_CPU_PATH=auto|avx512|avx2|radix``
        caps it), ``cpu_sort`` (the same, its former name) and, when not compiled, ``load_error``.
        ``PDL_EXT_CPU_SORT``, the variable's former name, is still read when ``PDL_EXT_CPU_PATH`` is
        not set, with a DeprecationWarning.

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
        warn_deprecated_env()
        info["cpu_path"] = info["cpu_sort"] = _C.cpu_path()
    else:
        info["load_error"] = _LOAD_ERROR
    return info


if COMPILED:
    warn_deprecated_env()  # the variable is read on every call; this names it once at import
