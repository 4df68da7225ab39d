"""The enhancement tasks (dehaze, tonemap) and the offline quality model: the degradations against
independent computations, synthetic rating histograms, a tiny `train-nima --synthetic`, the demo's nima term
trained and cached without weights, and the task statistics against scipy/scikit-image."""
from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import ndimage

from pdl_ext.losses.nima import NIMA, mean_score
from pdl_ext.io.weights import save_state_dict
from pdl_ext.train.degradations import TASKS, add_haze, compress_tones, degrade, synthetic_depth
from pdl_ext.train import synthetic_ratings as sr
from pdl_ext.train.nima import read_csv_ratings


@pytest.fixture()
def one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def _image(h=40, w=48, seed=0, batch=None):
    g = torch.Generator().manual_seed(seed)
    shape = (3, h, w) if batch is None else (batch, 3, h, w)
    return torch.rand(shape, generator=g, dtype=torch.float64)


def _cli(argv):
    from pdl_ext.apps import cli

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(argv)
    return code, out.getvalue(), err.getvalue()


# ---------------------------------------------------------------- haze


def test_haze_is_the_scattering_formula_with_a_given_depth():
    j = _image(12, 10, batch=2).numpy()
    d = np.random.default_rng(0).uniform(0, 1, (12, 10))
    for beta, a in ((0.7, 0.9), (2.0, 1.0), (0.0, 0.5)):
        out = add_haze(torch.from_numpy(j), beta=beta, airlight=a, depth=torch.from_numpy(d)).numpy()
        t = np.exp(-beta * d)
        np.testing.assert_allclose(out, j * t + a * (1 - t), rtol=0, atol=1e-12)
    # a (3, H, W) image and a (1, H, W) depth give the same
    one = add_haze(torch.from_numpy(j[0]), beta=1.0, airlight=0.9, depth=torch.from_numpy(d)[None]).numpy()
    np.testing.assert_allclose(one, j[0] * np.exp(-d) + 0.9 * (1 - np.exp(-d)), atol=1e-12)


def test_random_haze_recovered_from_black_and_white_scenes():
    """Same seed on a black, a white and a random scene: t = I_white - I_black and A = I_black / (1 - t);
    then the random scene must be J t + A (1 - t) exactly, A within its range and grey, t = exp(-beta d)
    with beta d within [0, beta_max] and thicker haze at the top (far) than at the bottom (near)."""
    b, h, w = 4, 32, 24
    kw = dict(beta=(0.8, 1.8), airlight=(0.85, 1.0), seed=7)
    black = add_haze(torch.zeros(b, 3, h, w, dtype=torch.float64), **kw).numpy()
    white = add_haze(torch.ones(b, 3, h, w, dtype=torch.float64), **kw).numpy()
    j = _image(h, w, batch=b, seed=3)
    hazy = add_haze(j, **kw).numpy()
    t = white - black
    a = black / (1 - t)
    assert np.allclose(a, a[:, :1, :1, :1], atol=1e-9)  # one grey airlight per image
    assert (a[:, 0, 0, 0] >= 0.85 - 1e-9).all() and (a[:, 0, 0, 0] <= 1.0 + 1e-9).all()
    np.testing.assert_allclose(hazy, j.numpy() * t + a * (1 - t), atol=1e-9)
    optical = -np.log(t[:, 0])
    assert optical.min() >= -1e-12 and optical.max() <= 1.8 + 1e-9
    assert (optical[:, :4].mean((1, 2)) > optical[:, -4:].mean((1, 2))).all()
    # seeded: the same seed gives the same haze, another seed another one
    np.testing.assert_array_equal(add_haze(j, **kw).numpy(), hazy)
    assert not np.allclose(add_haze(j, beta=(0.8, 1.8), seed=8).numpy(), hazy)
    # degrade(..., "dehaze") is add_haze with the documented defaults
    np.testing.assert_array_equal(degrade(j, "dehaze", seed=7).numpy(), hazy)


def test_synthetic_depth_is_a_smooth_seeded_ramp():
    d = synthetic_depth(3, 64, 48, noise=0.35, seed=1).numpy()[:, 0]
    assert d.shape == (3, 64, 48) and d.min() >= 0 and d.max() <= 1
    ramp = np.linspace(1, 0, 64)[:, None]
    field = (d - 0.65 * ramp) / 0.35  # the low-frequency part, in [0, 1]
    assert field.min() >= -1e-6 and field.max() <= 1 + 1e-6
    # smooth: second differences tiny next to the values (a 4x4 grid upsampled bicubically to 64x48; those of
    # pixel-wise uniform noise would be about 0.4)
    assert np.abs(np.diff(d, 2, axis=1)).max() < 0.03 and np.abs(np.diff(d, 2, axis=2)).max() < 0.03
    np.testing.assert_array_equal(synthetic_depth(3, 64, 48, seed=1).numpy()[:, 0], d)
    assert not np.allclose(synthetic_depth(3, 64, 48, seed=2).numpy()[:, 0], d)
    np.testing.assert_allclose(synthetic_depth(1, 5, 4, noise=0.0).numpy()[0, 0], np.repeat(np.linspace(1, 0, 5)[:, None], 4, 1),
                               atol=1e-7)


# ---------------------------------------------------------------- tone compression


def _tones_numpy(x, exposure, k, local, sigma):
    y = np.minimum(x * 2.0 ** exposure, 1.0)
    y = y * (1 + k) / (1 + k * y)
    r = int(np.ceil(3 * sigma))
    base = ndimage.gaussian_filter(y, (0, sigma, sigma), mode="mirror", radius=(0, r, r))
    return base + (1 - local) * (y - base)


def test_compress_tones_against_numpy_and_scipy():
    x = _image(30, 34)
    for exposure, k, local, sigma in ((-1.0, 3.0, 0.5, 4.0), (-0.3, 0.0, 0.2, 1.5), (0.5, 1.0, 0.9, 2.0)):
        out = compress_tones(x, exposure=exposure, compression=k, local=local, sigma=sigma).numpy()
        np.testing.assert_allclose(out, _tones_numpy(x.numpy(), exposure, k, local, sigma), atol=1e-12)
        assert out.min() >= 0 and out.max() <= 1
    np.testing.assert_array_equal(compress_tones(x, exposure=0.0, compression=0.0, local=0.0).numpy(), x.numpy())
    np.testing.assert_array_equal(degrade(x, "tonemap").numpy(), compress_tones(x).numpy())


def test_compress_tones_flattens_a_photograph():
    from pdl_ext.apps.demo.report import rms_contrast, saturation
    from pdl_ext.train.images import load_image

    x = load_image("astronaut")[:, ::4, ::4]
    y = compress_tones(x)
    assert rms_contrast(y) < 0.75 * rms_contrast(x)
    assert saturation(y) < saturation(x)
    assert y.max() <= 0.8 + 1e-6  # white: exposure -1 gives 0.5, and c(0.5) = 0.5 * 4 / (1 + 1.5) = 0.8


def test_enhancement_tasks_shapes_gradients_and_errors():
    assert {"dehaze", "tonemap"} <= set(TASKS)
    img = _image(16, 16, batch=2).requires_grad_(True)
    for task in ("dehaze", "tonemap"):
        out = degrade(img, task)
        assert out.shape == img.shape
        out.sum().backward()
    assert torch.isfinite(img.grad).all()
    with pytest.raises(TypeError, match="task 'tonemap' takes exposure, compression, local, sigma, got unexpected beta"):
        degrade(img, "tonemap", beta=1)
    with pytest.raises(ValueError, match=r"add_haze: beta must be >= 0, or a \(low, high\) pair"):
        degrade(img, "dehaze", beta=(2, 1))
    with pytest.raises(ValueError, match=r"compress_tones: local must be in \[0, 1\], got 2"):
        compress_tones(img, local=2)


# ---------------------------------------------------------------- synthetic ratings


def test_rating_histograms_are_distributions_with_falling_means():
    s = np.linspace(0, 1, 21)
    hists = torch.stack([sr.rating_histogram(float(v)) for v in s]).double()
    assert (hists >= 0).all()
    torch.testing.assert_close(hists.sum(-1), torch.ones(21, dtype=torch.float64), rtol=0, atol=1e-6)
    means = mean_score(hists).numpy()
    assert (np.diff(means) < 0).all()
    assert means[0] > 7.5 and means[-1] < 3.0


def test_degradation_strength_is_monotone_for_every_kind():
    """The stronger the distortion, the farther from the clean crop (and the more of its own symptom)."""
    from pdl_ext.apps.demo.report import dark_channel, rms_contrast
    from pdl_ext.train.images import load_image

    x = load_image("astronaut")[:, 100:196, 100:196]
    for kind in sr.SYNTHETIC_KINDS:
        errs = [float((sr.degrade_by_strength(x, kind, s, torch.Generator().manual_seed(0)) - x).abs().mean())
                for s in (0.0, 0.3, 0.6, 1.0)]
        assert errs[0] == 0 and all(a < b for a, b in zip(errs, errs[1:])), (kind, errs)
    hazes = [dark_channel(sr.degrade_by_strength(x, "haze", s, torch.Generator().manual_seed(0))) for s in (0, 0.5, 1)]
    assert hazes[0] < hazes[1] < hazes[2]
    tones = [rms_contrast(sr.degrade_by_strength(x, "tone", s)) for s in (0, 0.5, 1)]
    assert tones[0] > tones[1] > tones[2]


def test_synthetic_rating_files_are_valid_and_monotone(tmp_path):
    csv = sr.make_synthetic_ratings(tmp_path, photos=("astronaut", "brick"), count=30, seed=0, size=32)
    items = read_csv_ratings(csv)
    assert len(items) == 30 and all(p.is_file() for p, _ in items)
    hists = torch.stack([h for _, h in items]).double()
    torch.testing.assert_close(hists.sum(-1), torch.ones(30, dtype=torch.float64), rtol=0, atol=1e-5)
    labels = [line.split(",") for line in (tmp_path / "labels.csv").read_text().splitlines()[1:]]
    assert [row[0] for row in labels] == [p.name for p, _ in items]
    assert {row[2] for row in labels} <= set(sr.SYNTHETIC_KINDS)
    strength = np.array([float(row[3]) for row in labels])
    means = mean_score(hists).numpy()
    order = np.argsort(strength)
    assert (np.diff(means[order]) <= 1e-5).all()  # stronger degradation, lower mean rating
    # the same seed writes the same set
    sr.make_synthetic_ratings(tmp_path / "again", photos=("astronaut", "brick"), count=30, seed=0, size=32)
    assert (tmp_path / "again" / "labels.csv").read_text() == (tmp_path / "labels.csv").read_text()


def test_loss_and_judge_photographs_are_disjoint_and_not_test_images():
    from pdl_ext.apps.demo.training import TEST_IMAGES

    loss, judge = set(sr.PHOTOS["loss"]), set(sr.PHOTOS["judge"])
    assert not loss & judge
    assert not (loss | judge) & (set(TEST_IMAGES) | {"cat", "chelsea"})
    assert sr.ROLE_SEED["loss"] != sr.ROLE_SEED["judge"]


def test_train_nima_synthetic_cli_tiny(tmp_path, one_thread):
    out = tmp_path / "synth.safetensors"
    code, stdout, stderr = _cli(["train-nima", "--synthetic", "--synthetic-count", "24", "--synthetic-epochs", "2",
                                 "--synthetic-photos", "astronaut,brick", "--out", str(out), "--no-progress"])
    assert code == 0, stderr
    report = json.loads(stdout[stdout.index("{"):])
    assert report["out"] == str(out) and report["metrics"]["n"] == 6
    assert {"emd", "lcc", "srcc", "accuracy"} <= set(report["metrics"])
    from safetensors import safe_open

    with safe_open(str(out), framework="pt") as f:
        meta = f.metadata()
    assert meta["backbone"] == "SmallIQANet" and meta["photos"] == "astronaut,brick" and meta["role"] == "loss"
    model = sr.load_nima_checkpoint(out)
    assert model.input_size == 48 and not model.training
    probs = model(torch.rand(2, 3, 48, 48))
    torch.testing.assert_close(probs.sum(-1), torch.ones(2))
    # neither or both sources: clear errors
    code, _, err = _cli(["train-nima", "--out", str(out)])
    assert code == 2 and "--ratings FILE" in err and "--synthetic" in err
    code, _, err = _cli(["train-nima", "--synthetic", "--ratings", "x.csv", "--out", str(out)])
    assert code == 2 and "not both" in err


def test_load_nima_checkpoint_reads_a_vgg_nima(tmp_path):
    torch.manual_seed(0)
    vgg = NIMA("vgg16", pretrained_backbone=False, dropout=0.0).eval()
    path = tmp_path / "nima_vgg16.pth"
    torch.save(vgg.state_dict(), path)
    loaded = sr.load_nima_checkpoint(path)
    x = torch.rand(1, 3, 64, 64)
    torch.testing.assert_close(loaded(x), vgg(x))
    assert getattr(loaded, "input_size", None) is None


# ---------------------------------------------------------------- task statistics


def test_task_statistics_against_independent_computations():
    from skimage.color import rgb2hsv

    from pdl_ext.apps.demo.report import dark_channel, rms_contrast, saturation

    x = _image(20, 26, seed=5)
    a = x.permute(1, 2, 0).numpy()
    dark = ndimage.minimum_filter(a.min(2), size=15, mode="nearest").mean()
    assert dark_channel(x) == pytest.approx(dark, abs=1e-12)
    luma = 0.299 * a[..., 0] + 0.587 * a[..., 1] + 0.114 * a[..., 2]
    assert rms_contrast(x) == pytest.approx(luma.std(), abs=1e-12)
    assert saturation(x) == pytest.approx(rgb2hsv(a)[..., 1].mean(), abs=1e-9)


# ---------------------------------------------------------------- the demo without NIMA weights


@pytest.fixture()
def tiny_recipe(monkeypatch):
    monkeypatch.setitem(sr.DEMO_RECIPE, "count", 24)
    monkeypatch.setitem(sr.DEMO_RECIPE, "val_count", 8)
    monkeypatch.setitem(sr.DEMO_RECIPE, "epochs", 1)


def _tiny_demo(out: Path, task: str, *extra: str):
    return _cli(["demo", "--task", task, "--steps", "2", "--crop", "24", "--batch", "2", "--width", "8", "--blocks", "1",
                 "--train-images", "astronaut,brick", "--test-images", "chelsea", "--eval-size", "64",
                 "--out", str(out), "--quiet", *extra])


def test_demo_nima_term_without_weights_trains_and_caches(tmp_path, tiny_recipe, one_thread):
    out = tmp_path / "demo"
    code, stdout, stderr = _tiny_demo(out, "tonemap")  # default losses: l1 vs l1+W*nima
    assert code == 0, stderr
    assert "no --nima-weights" in stdout and "trained here first on synthetic ratings" in stdout
    assert "judge: training a second synthetic-ratings NIMA" in stdout
    cached = sorted(p.name for p in out.glob("nima_synthetic_*.safetensors"))
    assert cached == ["nima_synthetic_judge_seed1_24x1_v1.safetensors", "nima_synthetic_loss_seed0_24x1_v1.safetensors"]
    data = json.loads((out / "metrics.json").read_text())
    assert list(data["losses"]) == ["l1", "l1+0.05*nima"]  # the W of the sweep
    assert any("synthetic ratings" in n and "--nima-weights" in n for n in data["notes"])
    for row in [data["input"], data["reference"]] + list(data["losses"].values()):
        assert {"judge_score", "loss_nima_score", "rms_contrast", "saturation"} <= set(row["mean"])
        assert 1 <= row["mean"]["judge_score"] <= 10
    md = (out / "metrics.md").read_text()
    assert "judge NIMA" in md and "| reference |" in md.replace("| chelsea | reference |", "")
    stamp = {p: p.stat().st_mtime_ns for p in out.glob("nima_synthetic_*.safetensors")}
    # a second run reuses both models
    code, stdout, stderr = _tiny_demo(out, "tonemap")
    assert code == 0, stderr
    assert "reusing the synthetic-ratings NIMA cached" in stdout and "reusing the synthetic-ratings judge" in stdout
    assert {p: p.stat().st_mtime_ns for p in out.glob("nima_synthetic_*.safetensors")} == stamp


def test_demo_nima_weights_replace_the_synthetic_model(tmp_path, tiny_recipe, one_thread):
    torch.manual_seed(0)
    model = sr.synthetic_nima(8)
    weights = save_state_dict(model.state_dict(), tmp_path / "given.safetensors",
                              metadata={"backbone": "SmallIQANet", "size": "48"})
    out = tmp_path / "demo"
    code, stdout, stderr = _tiny_demo(out, "dehaze", "--losses", "l1+0.1*nima", "--nima-weights", str(weights),
                                      "--judge-weights", str(weights))
    assert code == 0, stderr
    assert not list(out.glob("nima_synthetic_*"))  # nothing trained
    data = json.loads((out / "metrics.json").read_text())
    assert any("given.safetensors (--nima-weights)" in n for n in data["notes"])
    m = data["losses"]["l1+0.1*nima"]["mean"]
    assert m["judge_score"] == pytest.approx(m["loss_nima_score"])  # the same model twice
    assert "dark_channel" in m
    code, _, err = _tiny_demo(out, "dehaze", "--losses", "l1+0.1*nima", "--nima-weights", str(tmp_path / "no.pth"))
    assert code == 2 and "no.pth" in err
