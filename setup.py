"""Build of pdl_ext._C: the C++ CPU kernels, plus the CUDA kernels when asked or when a GPU is there.

Environment:
  FORCE_CUDA=1        build the CUDA kernels (needs nvcc and a CUDA build of torch; no GPU needed)
  FORCE_CUDA=0        CPU only, even on a GPU machine
  (unset)             CUDA when torch has CUDA, nvcc is found and a GPU is visible
  TORCH_CUDA_ARCH_LIST  architectures to compile for; defaults to "8.0;9.0+PTX" when no GPU is visible
  PDL_EXT_DEBUG=1     -O0 -g; PDL_EXT_SANITIZE=1 adds AddressSanitizer + UBSan to the CPU build
"""
import glob
import os
import sys

from setuptools import setup
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

import torch

ROOT = os.path.dirname(os.path.abspath(__file__))


def _want_cuda() -> bool:
    force = os.environ.get("FORCE_CUDA")
    if force is not None and force != "":
        return force == "1"
    return torch.version.cuda is not None and CUDA_HOME is not None and torch.cuda.is_available()


def _nvidia_wheel_includes() -> list:
    # cuBLAS/cuSPARSE headers that ATen/cuda/CUDAContext.h includes ship in torch's nvidia wheels.
    out = []
    for path in sys.path:
        out += glob.glob(os.path.join(path, "nvidia", "*", "include"))
        out += glob.glob(os.path.join(path, "nvidia", "*", "*", "include"))
    return sorted(set(p for p in out if os.path.isdir(p)))


def extensions():
    debug = os.environ.get("PDL_EXT_DEBUG") == "1"
    sanitize = os.environ.get("PDL_EXT_SANITIZE") == "1"
    # -ffp-contract=off: no fused multiply-adds in the AVX2/AVX-512 files either, so every CPU path
    # rounds the gradients alike (bit-identical across paths).
    cxx = ["-std=c++20", "-fopenmp", "-fdiagnostics-color=always", "-ffp-contract=off"]
    cxx += ["-O0", "-g"] if debug else ["-O3"]
    link = ["-fopenmp"]
    if sanitize:
        flags = ["-fsanitize=address,undefined", "-fno-omit-frame-pointer", "-fno-sanitize-recover=undefined"]
        cxx += flags + ["-g"]
        link += flags
    sources = sorted(glob.glob("csrc/*.cpp") + glob.glob("csrc/cpu/*.cpp"))
    if not _want_cuda():
        return [CppExtension("pdl_ext._C", sources, extra_compile_args={"cxx": cxx},
                             extra_link_args=link, py_limited_api=False)]
    if CUDA_HOME is None:
        raise RuntimeError("pdl_ext: FORCE_CUDA=1 but no CUDA toolkit was found; set CUDA_HOME (e.g. /usr/local/cuda)")
    if not os.environ.get("TORCH_CUDA_ARCH_LIST") and not torch.cuda.is_available():
        # Without a visible GPU torch cannot pick the architectures itself and the build crashes;
        # the PTX of the newest lets later GPUs (sm_100, sm_120) JIT-compile the kernels.
        os.environ["TORCH_CUDA_ARCH_LIST"] = "8.0;9.0+PTX"
    includes = [os.path.join(CUDA_HOME, "include", "cccl")] + _nvidia_wheel_includes()
    nvcc = ["-std=c++20", "-O3", "--expt-relaxed-constexpr", "-lineinfo", "-DWITH_CUDA"]
    sources += sorted(glob.glob("csrc/cuda/*.cu"))
    return [CUDAExtension("pdl_ext._C", sources, include_dirs=includes,
                          extra_compile_args={"cxx": cxx + ["-DWITH_CUDA"], "nvcc": nvcc},
                          extra_link_args=link, py_limited_api=False)]


setup(ext_modules=extensions(), cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)})
