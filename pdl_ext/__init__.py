"""pdl-ext: perceptual training losses for image restoration, on a fused C++/CUDA 1D-Wasserstein op.

Import order matters: the extension registers the torch ops, ops.py attaches fakes and autograd.
"""
__version__ = "0.1.0"

from .extension import extension_info
from .ops import normalized_wasserstein_1d, wasserstein_1d
from .projection import projected_distance
from .losses.pdl import PDLLoss
from .losses.vgg import VGGFeatures
from .losses.nima import NIMA, EMDLoss, NIMALoss, emd_loss, mean_score, std_score
from .io.weights import load_state_dict, save_state_dict
from .losses.mdf import MDFLoss, mdf_loss
from . import functional

__all__ = [
    "__version__",
    "extension_info",
    "wasserstein_1d",
    "normalized_wasserstein_1d",
    "projected_distance",
    "PDLLoss",
    "VGGFeatures",
    "NIMA",
    "NIMALoss",
    "EMDLoss",
    "emd_loss",
    "mean_score",
    "std_score",
    "load_state_dict",
    "save_state_dict",
    "MDFLoss",
    "mdf_loss",
    "functional",
]
