"""Task distortions against independent computations: Pillow, scipy, numpy loops and exact identities."""
import io

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import ndimage

from pdl_ext.train.degradations import (
    add_gaussian_noise,
    bayer_mosaic,
    degrade,
    demosaic_bilinear,
    downsample,
    jpeg_compress,
    upsample,
)


def _image(h=40, w=48, seed=0, batch=None):
    g = torch.Generator().manual_seed(seed)
    shape = (3, h, w) if batch is None else (batch, 3, h, w)
    return torch.rand(shape, generator=g, dtype=torch.float64)


def test_noise_has_the_requested_sigma_and_is_seeded():
    img = torch.full((3, 128, 128), 0.5, dtype=torch.float64)
    out = add_gaussian_noise(img, sigma=25, seed=3, clip=False)
    noise = (out - img) * 255
    assert abs(noise.std().item() - 25) < 0.5  # 49k samples: the std of the estimate is ~0.08
    assert abs(noise.mean().item()) < 0.5
    assert torch.equal(out, add_gaussian_noise(img, sigma=25, seed=3, clip=False))
    assert not torch.equal(out, add_gaussian_noise(img, sigma=25, seed=4, clip=False))
    g = torch.Generator().manual_seed(3)
    assert torch.equal(out, add_gaussian_noise(img, sigma=25, generator=g, clip=False))
    clipped = degrade(img, "denoise", sigma=50, seed=1)
    assert clipped.min() >= 0 and clipped.max() <= 1 and clipped.shape == img.shape


def test_downsample_matches_pillow_bicubic():
    img = _image(64, 48).float()
    lr = degrade(img[None], "sr", scale=4)
    assert lr.shape == (1, 3, 16, 12)
    for c in range(3):
        pil = Image.fromarray(img[c].numpy(), mode="F").resize((12, 16), Image.BICUBIC)
        # Pillow's result is not clamped; ours is: compare where Pillow stays in range.
        ref = np.clip(np.asarray(pil), 0, 1)
        np.testing.assert_allclose(lr[0, c].numpy(), ref, atol=2e-5)


def _cubic_resize_1d(a, out, axis):
    """Keys cubic convolution (a = -0.75, half-pixel centres, clamped borders) along one axis, in numpy."""
    n = a.shape[axis]

    def w(t):
        t = abs(t)
        return (1.25 * t - 2.25) * t * t + 1 if t <= 1 else ((-0.75 * t + 3.75) * t - 6) * t + 3 if t < 2 else 0.0

    m = np.zeros((out, n))
    for j in range(out):
        src = (j + 0.5) * n / out - 0.5
        i0 = int(np.floor(src))
        for i in range(i0 - 1, i0 + 3):
            m[j, min(max(i, 0), n - 1)] += w(src - i)
    return np.moveaxis(np.tensordot(m, np.moveaxis(a, axis, 0), axes=1), 0, axis)


def test_upsample_matches_cubic_convolution():
    const = torch.full((1, 3, 8, 10), 0.3, dtype=torch.float64)
    torch.testing.assert_close(upsample(const, size=(32, 40)), torch.full((1, 3, 32, 40), 0.3, dtype=torch.float64))
    img = _image(6, 5)
    ref = np.clip(_cubic_resize_1d(_cubic_resize_1d(img.numpy(), 24, 1), 20, 2), 0, 1)
    np.testing.assert_allclose(upsample(img, scale=4).numpy(), ref, atol=1e-12)


def test_jpeg_matches_a_pillow_round_trip_and_degrades_with_quality():
    img = _image(32, 40).float()
    out = degrade(img, "jpeg", quality=10)
    pixels = (img.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "JPEG", quality=10)
    ref = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB")).transpose(2, 0, 1) / 255
    np.testing.assert_allclose(out.numpy(), ref, atol=1e-6)
    smooth = torch.from_numpy(ndimage.gaussian_filter(_image(64, 64).numpy(), (0, 2, 2)))
    err = {q: (jpeg_compress(smooth, q) - smooth).pow(2).mean().item() for q in (10, 50, 95)}
    assert err[10] > err[50] > err[95]
    assert 10 * np.log10(1 / err[95]) > 35


def test_blur_matches_scipy():
    img = _image(30, 34)
    for sigma in (2.0, 1.5):
        out = degrade(img, "deblur", sigma=sigma)
        r = int(np.ceil(3 * sigma))
        ref = ndimage.gaussian_filter(img.numpy(), (0, sigma, sigma), mode="mirror", radius=(0, r, r))
        np.testing.assert_allclose(out.numpy(), ref, atol=1e-12)


def _demosaic_loops(raw):
    """Bilinear RGGB demosaicking written out per site, with mirrored borders."""
    h, w = raw.shape
    p = np.pad(raw, 1, mode="reflect")
    out = np.zeros((3, h, w))
    for i in range(h):
        for j in range(w):
            c = p[i + 1, j + 1]
            cross = (p[i, j + 1] + p[i + 2, j + 1] + p[i + 1, j] + p[i + 1, j + 2]) / 4
            diag = (p[i, j] + p[i, j + 2] + p[i + 2, j] + p[i + 2, j + 2]) / 4
            horiz = (p[i + 1, j] + p[i + 1, j + 2]) / 2
            vert = (p[i, j + 1] + p[i + 2, j + 1]) / 2
            if i % 2 == 0 and j % 2 == 0:  # red site
                out[:, i, j] = (c, cross, diag)
            elif i % 2 == 1 and j % 2 == 1:  # blue site
                out[:, i, j] = (diag, cross, c)
            elif i % 2 == 0:  # green in a red row
                out[:, i, j] = (horiz, c, vert)
            else:  # green in a blue row
                out[:, i, j] = (vert, c, horiz)
    return out


def test_bayer_mosaic_and_bilinear_demosaic_against_loops():
    img = _image(10, 12)
    raw = bayer_mosaic(img)[0].numpy()
    assert np.array_equal(raw[0::2, 0::2], img[0, 0::2, 0::2].numpy())
    assert np.array_equal(raw[1::2, 1::2], img[2, 1::2, 1::2].numpy())
    assert np.array_equal(raw[0::2, 1::2], img[1, 0::2, 1::2].numpy())
    assert np.array_equal(raw[1::2, 0::2], img[1, 1::2, 0::2].numpy())
    out = degrade(img[None], "demosaic")
    np.testing.assert_allclose(out[0].numpy(), _demosaic_loops(raw), atol=1e-12)
    flat = torch.full((3, 6, 8), 0.25, dtype=torch.float64) * torch.tensor([1.0, 2.0, 3.0]).view(3, 1, 1)
    torch.testing.assert_close(demosaic_bilinear(bayer_mosaic(flat)), flat.to(torch.float64))


def test_shapes_batch_and_gradients():
    img = _image(16, 16, batch=2).requires_grad_(True)
    for task in ("denoise", "sr", "deblur", "demosaic"):
        out = degrade(img, task)
        out.sum().backward()
    assert img.grad is not None and torch.isfinite(img.grad).all()
    assert degrade(img.detach(), "jpeg").shape == img.shape
    assert downsample(img.detach()[0], 2).shape == (3, 8, 8)


@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda: degrade(torch.rand(3, 8, 8), "blur"), ValueError, "task must be one of"),
        (lambda: degrade(torch.rand(3, 8, 8), "jpeg", sigma=3), TypeError, "takes quality, got unexpected sigma"),
        (lambda: degrade(torch.rand(1, 8, 8), "denoise"), ValueError,
         r"\(B, 3, H, W\) or \(3, H, W\), got shape \(1, 8, 8\)"),
        (lambda: degrade(torch.rand(3, 8, 8) + 1, "denoise"), ValueError, r"in \[0, 1\]"),
        (lambda: degrade(torch.zeros(3, 8, 8, dtype=torch.uint8), "denoise"), TypeError, "float"),
        (lambda: degrade(torch.rand(3, 8, 8), "jpeg", quality=0), ValueError, r"quality must be an int in \[1, 100\]"),
        (lambda: degrade(torch.rand(3, 8, 8), "sr", scale=0.5), ValueError, "scale must be >= 1"),
        (lambda: degrade(torch.rand(3, 8, 8), "sr", scale=16), ValueError, "too small for scale 16"),
        (lambda: degrade(torch.rand(3, 8, 8), "denoise", sigma=-1), ValueError, "sigma must be >= 0"),
        (lambda: degrade(torch.rand(3, 8, 8), "deblur", sigma=0), ValueError, "sigma must be > 0"),
        (lambda: upsample(torch.rand(3, 8, 8)), ValueError, "exactly one of scale and size"),
        (lambda: degrade([0.5], "denoise"), TypeError, "img must be a torch.Tensor"),
    ],
)
def test_bad_arguments(call, error, match):
    with pytest.raises(error, match=match):
        call()
