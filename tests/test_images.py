"""Bundled photographs and image files, against scikit-image and Pillow directly."""
import numpy as np
import pytest
import torch
from PIL import Image

skimage_data = pytest.importorskip("skimage.data")

from pdl_ext.train.images import BUNDLED_IMAGES, load_image  # noqa: E402


def test_rgb_photograph_matches_skimage():
    img = load_image("astronaut")
    ref = skimage_data.astronaut().transpose(2, 0, 1) / 255.0
    assert img.dtype == torch.float32 and img.shape == (3, 512, 512)
    np.testing.assert_allclose(img.numpy(), ref, atol=1e-7)


def test_grayscale_photograph_is_repeated_to_rgb():
    img = load_image("camera")
    ref = skimage_data.camera() / 255.0
    for c in range(3):
        np.testing.assert_allclose(img[c].numpy(), ref, atol=1e-7)


def test_every_bundled_name_loads_as_rgb_in_unit_range():
    for name in BUNDLED_IMAGES:
        img = load_image(name)
        assert img.dim() == 3 and img.shape[0] == 3 and min(img.shape[1:]) >= 100, name
        assert 0 <= img.min() and img.max() <= 1 and img.max() > 0.5, name


def test_files_rgb_rgba_and_gray(tmp_path):
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    np.testing.assert_allclose(load_image(tmp_path / "rgb.png").numpy(), rgb.transpose(2, 0, 1) / 255, atol=1e-7)
    rgba = np.concatenate([rgb, np.full((20, 30, 1), 7, np.uint8)], axis=2)
    Image.fromarray(rgba).save(tmp_path / "rgba.png")
    np.testing.assert_allclose(load_image(str(tmp_path / "rgba.png")).numpy(), rgb.transpose(2, 0, 1) / 255, atol=1e-7)
    Image.fromarray(rgb[..., 0]).save(tmp_path / "gray.png")
    gray = load_image(tmp_path / "gray.png")
    assert gray.shape == (3, 20, 30) and torch.equal(gray[0], gray[2])


def test_unknown_name_or_missing_file():
    with pytest.raises(FileNotFoundError, match="neither a bundled image .*astronaut.* nor an existing file"):
        load_image("no_such_picture")
    with pytest.raises(TypeError, match="name_or_path must be a str or a path"):
        load_image(3)
