"""MDF loss, converter and training: published figures, independent forward passes, the published
architecture as a stand-in, refusal of code in pickles, and a short training run that must learn."""
import copy
import math
import os
import sys
import textwrap

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, safe_open

from pdl_ext import reference
from pdl_ext.apps import cli
from pdl_ext.train.degradations import degrade
from pdl_ext.train.images import load_image
from pdl_ext.losses.mdf import (MDFDiscriminator, MDFLoss, discriminators_from_state_dict, mdf_loss, pretrained_path,
                                 save_discriminators)
from pdl_ext.io.mdf_pickle import UnsafePickleError, convert_mdf
from pdl_ext.train.mdf import pyramid_sizes, train_mdf

# The published discriminators bundled with the package (MDFLoss.from_pretrained): never absent.
WEIGHTS = pretrained_path("sisr").parent

# The weights folder's source README (shared/weights/mdf): figures computed with the published code (gfxdisp/mdf).
FIGURES = {"SISR": (5.0480574369e-01, 3.6133703431e-01), "JPEG": (5.5720901489e-01, 2.3279891845e-01)}


def _random_series(widths, seed=0, dtype=torch.float64):
    """A discriminator series with random weights and random BatchNorm statistics."""
    g = torch.Generator().manual_seed(seed)
    loss = MDFLoss(num_scales=len(widths), widths=widths).to(dtype)
    with torch.no_grad():
        for name, t in loss.state_dict().items():
            if t.is_floating_point():
                r = torch.rand(t.shape, generator=g, dtype=dtype)
                t.copy_(0.5 + r if name.endswith("running_var") else (r - 0.5) * (0.6 if "conv" in name else 1))
    return loss


def _reference_features(x, state, k):
    """Head, body and tail of discriminator k written with torch.nn.functional from the raw tensors."""

    def block(t, pre):
        t = F.conv2d(t, state[f"{pre}.conv.weight"], state[f"{pre}.conv.bias"])
        t = F.batch_norm(t, state[f"{pre}.norm.running_mean"], state[f"{pre}.norm.running_var"],
                         state[f"{pre}.norm.weight"], state[f"{pre}.norm.bias"], False, 0.0, 1e-5)
        return F.leaky_relu(t, 0.2)

    head = block(x, f"{k}.head")
    body = head
    for i in (1, 2, 3):
        body = block(body, f"{k}.body.block{i}")
    return head, body, F.conv2d(body, state[f"{k}.tail.weight"], state[f"{k}.tail.bias"])


def _reference_loss(x, y, state, num_scales, distance="mse", p=1):
    per_image = 0
    for k in range(num_scales):
        for a, b in zip(_reference_features(x, state, k), _reference_features(y, state, k)):
            if distance == "mse":
                per_image = per_image + ((a - b) ** 2).mean(dim=(1, 2, 3))
            else:
                n, c = a.shape[:2]
                per_image = per_image + reference.wasserstein_1d(a.reshape(n, c, -1), b.reshape(n, c, -1), p).mean(1)
    return per_image


def _chelsea_pair():
    import skimage.data as skimage_data  # a test dependency: the published figures must not skip
    y = torch.from_numpy(skimage_data.chelsea()[50:146, 100:196].astype(np.float64) / 255).permute(2, 0, 1)[None]
    noise = np.random.default_rng(7).normal(0, 0.05, size=tuple(y.shape))
    return (y + torch.from_numpy(noise)).clamp(0, 1), y


# ---------------------------------------------------------------- the loss


@pytest.mark.parametrize("name", sorted(FIGURES))
def test_reproduces_the_published_figures(name, one_thread):
    x, y = _chelsea_pair()
    x.requires_grad_(True)
    loss_fn = MDFLoss.from_file(WEIGHTS / f"Ds_{name}.safetensors").double()
    loss = loss_fn(x, y)
    (grad,) = torch.autograd.grad(loss, x)
    want_loss, want_grad = FIGURES[name]
    assert loss.item() == pytest.approx(want_loss, rel=1e-6)
    assert grad.norm().item() == pytest.approx(want_grad, rel=1e-6)


def test_published_widths_are_read_from_the_tensors():
    assert MDFLoss.from_file(WEIGHTS / "Ds_SISR.safetensors").widths == [32] * 4 + [64] * 4 + [128]
    assert MDFLoss.from_file(WEIGHTS / "Ds_JPEG.safetensors").widths == [32] * 4 + [64] * 4


@pytest.mark.parametrize("distance, p", [("mse", 1), ("pdl", 1), ("pdl", 2)])
def test_value_and_gradient_against_a_functional_reference(distance, p, one_thread):
    loss_fn = _random_series([4, 4, 8], seed=1)
    state = {k: v for k, v in loss_fn.discriminators.state_dict().items()}
    g = torch.Generator().manual_seed(2)
    x = torch.rand(2, 3, 19, 23, generator=g, dtype=torch.float64, requires_grad=True)
    y = torch.rand(2, 3, 19, 23, generator=g, dtype=torch.float64)
    for num_scales in (2, 3):
        fn = MDFLoss(num_scales, distance, p, "none", discriminators=loss_fn.discriminators)
        got = fn(x, y)
        want = _reference_loss(x, y, state, num_scales, distance, p)
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
        (g_got,) = torch.autograd.grad(got.sum(), x)
        (g_want,) = torch.autograd.grad(want.sum(), x)
        torch.testing.assert_close(g_got, g_want, rtol=1e-8, atol=1e-12)
    torch.testing.assert_close(mdf_loss(x, y, loss_fn.discriminators, 3, distance, p, "sum"), want.sum())
    torch.testing.assert_close(mdf_loss(x, y, loss_fn.discriminators, 3, distance, p), want.mean())


def test_pdl_distance_on_the_published_weights(one_thread):
    x, y = (t.float()[..., :40, :40] for t in _chelsea_pair())
    loss_fn = MDFLoss.from_file(WEIGHTS / "Ds_SISR.safetensors", distance="pdl")
    state = load_file(WEIGHTS / "Ds_SISR.safetensors")
    torch.testing.assert_close(loss_fn(x, y), _reference_loss(x, y, state, 8, "pdl").mean(), rtol=1e-4, atol=1e-6)


def test_discriminators_stay_frozen_in_eval_mode():
    loss_fn = _random_series([4, 4], dtype=torch.float32)
    before = {k: v.clone() for k, v in loss_fn.state_dict().items()}
    loss_fn.train()
    assert loss_fn.training and not any(m.training for m in loss_fn.discriminators.modules())
    assert not any(q.requires_grad for q in loss_fn.parameters())
    x = torch.rand(3, 3, 16, 16, requires_grad=True)
    loss_fn(x, torch.rand(3, 3, 16, 16)).backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    after = loss_fn.state_dict()  # running statistics untouched by a forward pass under .train()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert loss_fn(x[:1], x[:1]).item() == 0


def test_save_and_from_file_round_trip(tmp_path):
    loss_fn = _random_series([4, 8], dtype=torch.float32)
    save_discriminators(loss_fn.discriminators, tmp_path / "d.safetensors")
    back = MDFLoss.from_file(tmp_path / "d.safetensors", num_scales=2, reduction="none")
    assert back.widths == [4, 8]
    x, y = torch.rand(2, 3, 16, 16), torch.rand(2, 3, 16, 16)
    torch.testing.assert_close(back(x, y), mdf_loss(x, y, loss_fn.discriminators, 2, reduction="none"))


def test_default_num_scales_is_eight_or_all_of_a_shorter_series(tmp_path, one_thread):
    """num_scales=None (the default) means min(8, count): a saved series of 3 loads with the default
    and its loss is the functional reference over all 3; longer series use the paper's 8; explicit
    ints are still checked against the series."""
    series = _random_series([4, 4, 8], seed=3, dtype=torch.float32)
    save_discriminators(series.discriminators, tmp_path / "three.safetensors")
    loss_fn = MDFLoss.from_file(tmp_path / "three.safetensors", reduction="none")
    assert loss_fn.num_scales == 3
    x, y = torch.rand(2, 3, 16, 16), torch.rand(2, 3, 16, 16)
    want = _reference_loss(x, y, load_file(tmp_path / "three.safetensors"), 3)
    torch.testing.assert_close(loss_fn(x, y), want)
    torch.testing.assert_close(mdf_loss(x, y, loss_fn.discriminators), want.mean())
    assert MDFLoss(discriminators=series.discriminators).num_scales == 3
    assert MDFLoss(widths=[4] * 9).num_scales == 8
    assert MDFLoss().num_scales == len(MDFLoss().discriminators) == 8
    with pytest.raises(ValueError, match=r"num_scales must be an int in \[1, 3\] \(the discriminators held\), got 8"):
        MDFLoss.from_file(tmp_path / "three.safetensors", num_scales=8)
    with pytest.raises(ValueError, match=r"num_scales must be an int in \[1, 3\] \(the discriminators given\), got 4"):
        mdf_loss(x, y, loss_fn.discriminators, num_scales=4)
    with pytest.raises(ValueError, match=r"num_scales must be an int in \[1, 3\] .*got 0"):
        MDFLoss.from_file(tmp_path / "three.safetensors", num_scales=0)


def test_bad_inputs(tmp_path):
    loss_fn = _random_series([4, 4], dtype=torch.float32)
    img = torch.rand(2, 3, 16, 16)
    with pytest.raises(ValueError, match=r"MDFLoss: x must be \(B, 3, H, W\), got shape \(2, 1, 16, 16\)"):
        loss_fn(torch.rand(2, 1, 16, 16), img)
    with pytest.raises(ValueError, match=r"at least 11x11 .*receptive field.*got 10x16"):
        loss_fn(torch.rand(2, 3, 10, 16), torch.rand(2, 3, 10, 16))
    with pytest.raises(ValueError, match="same shape"):
        loss_fn(img, torch.rand(2, 3, 16, 17))
    with pytest.raises(TypeError, match="dtype of x"):
        loss_fn(img, img.double())
    with pytest.raises(TypeError, match=r"discriminators hold torch.float32.*\.to\(x\)"):
        loss_fn(img.double(), img.double())
    with pytest.raises(ValueError, match=r"num_scales must be an int in \[1, 2\]"):
        MDFLoss(num_scales=3, discriminators=loss_fn.discriminators)
    with pytest.raises(ValueError, match=r"MDFLoss: widths must be a non-empty list of positive ints, got \[32, 0\]"):
        MDFLoss(num_scales=1, widths=[32, 0])
    with pytest.raises(ValueError, match="MDFDiscriminator: width must be a positive int, got 0"):
        MDFDiscriminator(0)
    with pytest.raises(ValueError, match="distance must be 'mse' or 'pdl'"):
        MDFLoss(distance="l1")
    with pytest.raises(ValueError, match="p must be 1 or 2"):
        MDFLoss(distance="pdl", p=3)
    with pytest.raises(ValueError, match="reduction must be"):
        MDFLoss(reduction="avg")
    with pytest.raises(FileNotFoundError, match="MDFLoss.from_file: no such file"):
        MDFLoss.from_file(tmp_path / "missing.safetensors")
    (tmp_path / "Ds.pth").write_bytes(b"PK\x03\x04 not safetensors")
    with pytest.raises(ValueError, match="not a safetensors file.*convert-mdf"):
        MDFLoss.from_file(tmp_path / "Ds.pth")
    from safetensors.torch import save_file

    save_file({"0.head.conv.weight": torch.zeros(4, 3, 3, 3)}, str(tmp_path / "partial.safetensors"))
    with pytest.raises(ValueError, match="does not have the MDF layout: missing"):
        MDFLoss.from_file(tmp_path / "partial.safetensors", num_scales=1)


# ---------------------------------------------------------------- the converter

# The published architecture (gfxdisp/mdf SinGAN/models.py), under its class paths, as the stand-in.
_STANDIN = textwrap.dedent(
    """
    import torch.nn as nn

    class ConvBlock(nn.Sequential):
        def __init__(self, in_channel, out_channel, ker_size, padd, stride):
            super(ConvBlock, self).__init__()
            self.add_module('conv', nn.Conv2d(in_channel, out_channel, kernel_size=ker_size, stride=stride,
                                              padding=padd))
            self.add_module('norm', nn.BatchNorm2d(out_channel))
            self.add_module('LeakyRelu', nn.LeakyReLU(0.2, inplace=True))

    class WDiscriminator(nn.Module):
        def __init__(self, opt):
            super(WDiscriminator, self).__init__()
            self.is_cuda = False
            N = int(opt.nfc)
            self.head = ConvBlock(opt.nc_im, N, opt.ker_size, opt.padd_size, 1)
            self.body = nn.Sequential()
            for i in range(opt.num_layer - 2):
                N = int(opt.nfc / pow(2, (i + 1)))
                block = ConvBlock(max(2 * N, opt.min_nfc), max(N, opt.min_nfc), opt.ker_size, opt.padd_size, 1)
                self.body.add_module('block%d' % (i + 1), block)
            self.tail = nn.Conv2d(max(N, opt.min_nfc), 1, kernel_size=opt.ker_size, stride=1, padding=opt.padd_size)

        def forward(self, x, is_loss=False):
            x1 = self.head(x)
            x2 = self.body(x1)
            x = self.tail(x2)
            if is_loss:
                return [x1, x2, x]
            return x
    """
)


@pytest.fixture
def published_files(tmp_path):
    """Pickles a stand-in WDiscriminator list in both torch.save formats; the classes are then made
    unimportable, so the converter cannot lean on them. Returns (paths, state dict, published loss)."""
    from types import SimpleNamespace

    pkg = tmp_path / "authors"
    (pkg / "SinGAN").mkdir(parents=True)
    (pkg / "SinGAN" / "__init__.py").write_text("")
    (pkg / "SinGAN" / "models.py").write_text(_STANDIN)
    sys.path.insert(0, str(pkg))
    try:
        from SinGAN.models import WDiscriminator

        g = torch.Generator().manual_seed(0)
        ds = []
        for nfc in (32, 32, 64):
            opt = SimpleNamespace(nfc=nfc, min_nfc=nfc, nc_im=3, ker_size=3, padd_size=0, num_layer=5)
            d = WDiscriminator(opt)
            for m in d.modules():
                if isinstance(m, torch.nn.BatchNorm2d):
                    m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                    m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                    m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                    m.num_batches_tracked.fill_(123)
            ds.append(d.eval())
        zip_path, legacy_path = tmp_path / "Ds.pth", tmp_path / "Ds_legacy.pth"
        torch.save(ds, zip_path)
        torch.save(ds, legacy_path, _use_new_zipfile_serialization=False)
        state = {f"{k}.{n}": t.clone() for k, d in enumerate(ds) for n, t in d.state_dict().items()}
        # The published loss (gfxdisp/mdf mdfloss.py) with the authors' forward, as the oracle.
        x = torch.rand(2, 3, 24, 24, generator=g)
        y = torch.rand(2, 3, 24, 24, generator=g)
        with torch.no_grad():
            loss = torch.zeros(2)
            for d in ds:
                for a, b in zip(d(x, is_loss=True), d(y, is_loss=True)):
                    loss += ((a - b) ** 2).mean(dim=(1, 2, 3))
        padded = WDiscriminator(SimpleNamespace(nfc=32, min_nfc=32, nc_im=3, ker_size=3, padd_size=1, num_layer=5))
        torch.save([padded], tmp_path / "padded.pth")
    finally:
        sys.path.remove(str(pkg))
        for name in ("SinGAN", "SinGAN.models"):
            sys.modules.pop(name, None)
    return {"zip": zip_path, "legacy": legacy_path, "padded": tmp_path / "padded.pth"}, state, (x, y, loss.mean())


@pytest.mark.parametrize("fmt", ["zip", "legacy"])
def test_converter_round_trip(published_files, tmp_path, fmt):
    paths, state, (x, y, published_loss) = published_files
    assert "SinGAN.models" not in sys.modules
    out = tmp_path / f"{fmt}.safetensors"
    convert_mdf(paths[fmt], out)
    back = load_file(out)
    assert set(back) == set(state)
    for k, v in state.items():
        assert torch.equal(back[k], v), k
    loss_fn = MDFLoss.from_file(out, num_scales=3)
    assert loss_fn.widths == [32, 32, 64]
    torch.testing.assert_close(loss_fn(x, y), published_loss, rtol=1e-5, atol=1e-7)


def test_converter_cli_and_architecture_check(published_files, tmp_path, capsys):
    paths, _, _ = published_files
    assert cli.main(["convert-mdf", str(paths["zip"]), str(tmp_path / "cli.safetensors")]) == 0
    assert "wrote 3 discriminators (widths [32, 32, 64])" in capsys.readouterr().out
    with pytest.raises(ValueError, match=r"padding=\(1, 1\); MDF needs \(0, 0\)"):
        convert_mdf(paths["padded"], tmp_path / "padded.safetensors")
    with pytest.raises(FileNotFoundError):
        convert_mdf(tmp_path / "nothing.pth", tmp_path / "x.safetensors")
    (tmp_path / "junk.pth").write_bytes(b"\x00not a pickle at all")
    with pytest.raises(ValueError, match="not a torch.save file"):
        convert_mdf(tmp_path / "junk.pth", tmp_path / "x.safetensors")


class _RunsShell:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class _Execs:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').close()",))


@pytest.mark.parametrize("payload", [_RunsShell, _Execs])
@pytest.mark.parametrize("legacy", [False, True])
def test_converter_refuses_a_pickle_that_runs_code(tmp_path, payload, legacy, capsys):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pth"
    torch.save([payload(marker)], evil, _use_new_zipfile_serialization=not legacy)
    with pytest.raises(UnsafePickleError, match="refusing to call (posix|os|nt).system|refusing to call builtins.exec"):
        convert_mdf(evil, tmp_path / "evil.safetensors")
    assert cli.main(["convert-mdf", str(evil), str(tmp_path / "evil.safetensors")]) == 2  # a user error
    assert "refusing to call" in capsys.readouterr().err
    assert not marker.exists()
    assert not (tmp_path / "evil.safetensors").exists()


# ---------------------------------------------------------------- training


def _singan_scale_count(h, w, min_size=25, max_size=250, factor=0.75):
    """Transcribed from SinGAN's functions.adjust_scales2image: stop_scale + 1."""
    num_scales = math.ceil(math.log(min_size / min(h, w), factor)) + 1
    scale2stop = math.ceil(math.log(min(max_size, max(h, w)) / max(h, w), factor))
    return num_scales - scale2stop + 1


def test_pyramid_follows_singan():
    for h, w in [(300, 451), (512, 512), (427, 640), (400, 600), (190, 120), (872, 1000)]:
        sizes = pyramid_sizes(h, w)
        assert len(sizes) == _singan_scale_count(h, w), (h, w)
        assert max(sizes[-1]) == min(250, max(h, w)) and min(sizes[0]) == 25
        ratios = [b[0] / a[0] for a, b in zip(sizes[1:], sizes[:-1])]
        assert all(0.72 <= r <= 0.82 for r in ratios), (h, w, ratios)
    assert pyramid_sizes(300, 451)[-1] == (166, 250)
    assert pyramid_sizes(36, 36, min_size=28, max_size=36) == [(28, 28), (32, 32), (36, 36)]
    assert pyramid_sizes(20, 30, min_size=25) == [(20, 30)]


def test_short_training_critics_prefer_clean_crops_of_an_unseen_image(one_thread):
    """Trained for denoising on a 20x20 crop of `astronaut` (scales 16, 18, 20; 150 iterations),
    the finer critics must score 32 crops of `coffee` above the same crops distorted and restored the
    way their training fakes are made: downscaled to the coarser scale, upsampled, noised, and passed
    through that scale's generator. Critics are scored as trained (per-image BatchNorm statistics).
    Mutations checked when writing this: critic loss sign flipped, or critic never stepped -> fails."""
    nets = {}
    state = train_mdf(load_image("astronaut")[:, 100:120, 200:220], "denoise", sigma=25, iters=150, min_size=16,
                      max_size=20, progress=False, seed=0, on_scale_end=lambda k, info: nets.__setitem__(k, info))
    assert [(nets[k]["height"], nets[k]["width"]) for k in sorted(nets)] == [(16, 16), (18, 18), (20, 20)]
    for k, saved in enumerate(discriminators_from_state_dict(state)):  # the file holds these critics
        trained = nets[k]["critic"].state_dict()
        assert all(torch.equal(t, trained[name]) for name, t in saved.state_dict().items())
    coffee = load_image("coffee")
    g = torch.Generator().manual_seed(0)
    corners = torch.stack([torch.randint(0, s - 32, (32,), generator=g) for s in coffee.shape[1:]], 1)
    clean = torch.stack([coffee[:, i:i + 32, j:j + 32] for i, j in corners.tolist()])
    margin = torch.zeros(len(clean))
    with torch.no_grad():
        for k in (1, 2):
            critic = copy.deepcopy(nets[k]["critic"]).train()
            low = F.interpolate(clean, scale_factor=nets[k - 1]["height"] / nets[k]["height"], mode="bicubic",
                                antialias=True).clamp(0, 1)
            prev = F.interpolate(low, size=clean.shape[-2:], mode="bicubic").clamp(0, 1)
            noisy = degrade(prev, "denoise", sigma=25, seed=1)
            fake = nets[k]["generator"](noisy, prev)
            margin += torch.stack([critic(a[None]).mean() - critic(b[None]).mean() for a, b in zip(clean, fake)])
    t = margin.mean() / margin.std() * len(margin) ** 0.5
    assert t > 2.5, f"critics do not prefer clean crops: t = {t:.2f}, margins {margin.tolist()}"


def test_train_cli_writes_a_loadable_series(tmp_path, one_thread, capsys):
    from PIL import Image

    crop = (load_image("coffee")[:, 50:80, 60:92].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    Image.fromarray(crop).save(tmp_path / "crop.png")
    out = tmp_path / "mdf.safetensors"
    argv = ["train-mdf", "--image", str(tmp_path / "crop.png"), "--task", "jpeg", "--quality", "20",
            "--iters", "2", "--min-size", "24", "--out", str(out), "--quiet"]
    assert cli.main(argv) == 0
    assert "wrote 3 discriminators" in capsys.readouterr().out
    loss_fn = MDFLoss.from_file(out)  # the default num_scales takes all of a series shorter than 8
    assert loss_fn.num_scales == 3
    with safe_open(str(out), "pt") as f:
        meta = f.metadata()
    assert meta["task"] == "jpeg" and meta["sizes"] == "24x26;27x29;30x32"
    # the key layout of the published files
    published = {k for k in load_file(WEIGHTS / "Ds_JPEG.safetensors") if k.split(".")[0] in ("0", "1", "2")}
    assert set(load_file(out)) == published
    x = torch.rand(1, 3, 24, 24, requires_grad=True)
    loss_fn(x, torch.rand(1, 3, 24, 24)).backward()
    assert torch.isfinite(x.grad).all()
    # Denoising draws fresh noise through the coarser generators; three scales exercise that path.
    state = train_mdf(load_image("brick")[:, :40, :40], "denoise", sigma=30, iters=2, min_size=20, progress=False)
    assert len({k.split(".")[0] for k in state}) == len(pyramid_sizes(40, 40, min_size=20)) == 5


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(task="deblur"), ValueError, "task must be one of 'sr', 'denoise', 'jpeg'"),
        (dict(task="sr", iters=0), ValueError, "iters must be a positive int"),
        (dict(task="sr", min_size=8), ValueError, "min_size must be an int >= 11"),
        (dict(task="jpeg", quality=101), ValueError, r"quality must be an int in \[1, 100\]"),
        (dict(task="denoise", sigma=0), ValueError, "sigma must be a number > 0"),
        (dict(task="sr", image=torch.rand(3, 20, 20)), ValueError, r"H, W >= min_size \(25\)"),
        (dict(task="sr", image=torch.rand(1, 40, 40)), ValueError, r"must be \(3, H, W\)"),
        (dict(task="sr", image="no_such_picture"), FileNotFoundError, "neither a bundled image"),
    ],
)
def test_train_bad_arguments(kwargs, error, match):
    kwargs = {"image": torch.rand(3, 40, 40), **kwargs}
    with pytest.raises(error, match=match):
        train_mdf(kwargs.pop("image"), kwargs.pop("task"), progress=False, **kwargs)
