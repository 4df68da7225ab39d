"""pdl-ext: perceptual training losses for image restoration, on a fused C++/CUDA 1D-Wasserstein op.

Import order matters: the extension registers the torch ops, ops.py attaches fakes and autograd.
"""
__version__ = "0.1.0"

from .extension import extension_info
from .ops import wasserstein_1d
from .projection import projected_distance

__all__ = ["__version__", "extension_info", "projected_distance", "wasserstein_1d"]
