"""Test photographs by name: the natural images bundled with scikit-image, or any image file.

Training an MDF loss, the demo and the tests need real photographs without a download; scikit-image
ships a few dozen in its wheel. Grayscale ones are repeated to RGB so every caller gets (3, H, W).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Dict, Union

import numpy as np
import torch

# name -> scikit-image loader (`skimage.data.<loader>()`); all ship in the wheel, none downloads.
BUNDLED_IMAGES: Dict[str, str] = {
    "astronaut": "astronaut",
    "brick": "brick",
    "camera": "camera",
    "cat": "cat",
    "chelsea": "chelsea",
    "clock": "clock",
    "coffee": "coffee",
    "coins": "coins",
    "grass": "grass",
    "gravel": "gravel",
    "hubble_deep_field": "hubble_deep_field",
    "immunohistochemistry": "immunohistochemistry",
    "moon": "moon",
    "page": "page",
    "retina": "retina",
    "rocket": "rocket",
    "text": "text",
}


def _to_tensor(a: np.ndarray, source: str) -> torch.Tensor:
    if a.dtype == bool:
        a = a.astype(np.float32)
    elif np.issubdtype(a.dtype, np.integer):
        a = a.astype(np.float32) / float(np.iinfo(a.dtype).max)
    else:
        a = np.clip(a.astype(np.float32), 0.0, 1.0)
    if a.ndim == 2:
        a = np.repeat(a[..., None], 3, axis=2)
    if a.ndim != 3 or a.shape[2] not in (3, 4):
        raise ValueError(f"load_image: {source} is not an RGB or grayscale image, got array shape {a.shape}")
    return torch.from_numpy(np.ascontiguousarray(a[..., :3].transpose(2, 0, 1)))


def load_image(name_or_path: Union[str, os.PathLike]) -> torch.Tensor:
    """A bundled scikit-image photograph by name, or an image file, as RGB in [0, 1].

    Args:
        name_or_path: a key of ``BUNDLED_IMAGES`` (e.g. ``"astronaut"``, ``"coffee"``, ``"brick"``) or
            the path of an image file Pillow can read (alpha is dropped, grayscale repeated to RGB).

    Returns:
        ``(3, H, W)`` float32 tensor in [0, 1].

    Example:
        >>> from pdl_ext.train.images import load_image
        >>> load_image("brick").shape       # a grayscale photograph, repeated to RGB
        torch.Size([3, 512, 512])
    """
    if isinstance(name_or_path, str) and name_or_path in BUNDLED_IMAGES:
        from skimage import data  # optional dependency (the `demo` extra)

        return _to_tensor(getattr(data, BUNDLED_IMAGES[name_or_path])(), f"skimage.data.{name_or_path}()")
    if not isinstance(name_or_path, (str, os.PathLike)):
        raise TypeError(f"load_image: name_or_path must be a str or a path, got {type(name_or_path).__name__}")
    path = Path(name_or_path)
    if not path.is_file():
        raise FileNotFoundError(
            f"load_image: {str(name_or_path)!r} is neither a bundled image ({', '.join(BUNDLED_IMAGES)}) "
            "nor an existing file"
        )
    from PIL import Image

    with Image.open(path) as im:
        if im.mode not in ("L", "RGB"):
            im = im.convert("RGB")
        return _to_tensor(np.asarray(im), str(path))
