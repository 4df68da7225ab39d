"""`pdl-ext demo`: loss-spec parsing, a tiny end-to-end run checked against independent computations,
Ctrl-C keeping finished work, and the DDP training path with two gloo processes."""
from __future__ import annotations

import contextlib
import io
import json
import math
import os

import numpy as np
import pytest
import torch

from pdl_ext.apps import cli, demo
from pdl_ext.apps.loss_spec import TERMS, LossTerm, WeightedSumLoss, parse_loss_spec, parse_loss_specs
from pdl_ext.losses.mdf import MDFDiscriminator, save_discriminators

# ---------------------------------------------------------------------------------------------------
# Loss specs


@pytest.mark.parametrize("text, want", [
    ("l1", [("l1", 1.0)]),
    ("l1+0.1*pdl", [("l1", 1.0), ("pdl", 0.1)]),
    (" L1 + 2.5 * MDF ", [("l1", 1.0), ("mdf", 2.5)]),
    ("1e-2*pdl+charbonnier+3*l2", [("pdl", 0.01), ("charbonnier", 1.0), ("l2", 3.0)]),
    ("nima", [("nima", 1.0)]),
])
def test_parse_valid_specs(text, want):
    spec = parse_loss_spec(text)
    assert spec.terms == tuple(LossTerm(n, w) for n, w in want)
    assert parse_loss_spec(str(spec)) == spec  # the canonical text parses back to the same spec


def test_parse_spec_list():
    specs = parse_loss_specs("l1, l1+0.1*pdl ,mdf")
    assert [str(s) for s in specs] == ["l1", "l1+0.1*pdl", "mdf"]
    assert [s.is_pixel_only for s in specs] == [True, False, False]


@pytest.mark.parametrize("text", ["vgg", "l1+0.1*lpips", "l1+ssim"])
def test_unknown_term_names_the_valid_ones(text):
    with pytest.raises(ValueError, match="unknown term") as e:
        parse_loss_spec(text)
    for name in TERMS:
        assert name in str(e.value)


@pytest.mark.parametrize("text, match", [
    ("abc*pdl", "not a number"),
    ("*pdl", "not a number"),
    ("0*pdl", "> 0"),
    ("-0.1*pdl", "> 0"),
    ("inf*pdl", "finite"),
    ("nan*l1", "finite"),
    ("pdl*0.1", "weight first"),
    ("2*3*l1", "TERM or WEIGHT"),
    ("l1++pdl", "empty term"),
    ("l1+", "empty term"),
    ("", "empty"),
    ("l1+0.5*l1", "twice"),
])
def test_bad_specs(text, match):
    with pytest.raises(ValueError, match=match):
        parse_loss_spec(text)


@pytest.mark.parametrize("text, match", [("l1,,pdl", "empty entry"), ("l1, L1", "twice"), ("l1,bogus", "unknown term")])
def test_bad_spec_lists(text, match):
    with pytest.raises(ValueError, match=match):
        parse_loss_specs(text)


def test_weighted_sum_matches_direct_formula():
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(2, 3, 8, 8, generator=g), torch.rand(2, 3, 8, 8, generator=g)
    fns = {"l1": lambda a, b: (a - b).abs().mean(), "l2": lambda a, b: ((a - b) ** 2).mean()}
    got = WeightedSumLoss("l1+0.25*l2", fns)(x, y)
    d = (x - y).double().numpy()
    want = np.abs(d).mean() + 0.25 * (d ** 2).mean()
    assert math.isclose(float(got), want, rel_tol=1e-6)
    with pytest.raises(ValueError, match="no function"):
        WeightedSumLoss("l1+pdl", fns)


def _cli(argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(argv)
    return code, out.getvalue(), err.getvalue()


def test_cli_reports_bad_specs_and_missing_weights(tmp_path):
    code, _, err = _cli(["demo", "--losses", "l1,l1+0.1*vgg", "--out", str(tmp_path)])
    assert code == 2 and "unknown term 'vgg'" in err and "charbonnier" in err
    # without --nima-weights the nima term trains a synthetic-ratings NIMA (tests/test_enhancement.py); a wrong path
    code, _, err = _cli(["demo", "--losses", "l1+0.1*nima", "--nima-weights", str(tmp_path / "no_nima.pth"),
                         "--out", str(tmp_path)])
    assert code == 2 and "--nima-weights" in err and "no_nima.pth" in err
    missing = tmp_path / "nope.safetensors"
    code, _, err = _cli(["demo", "--losses", "mdf", "--mdf-weights", str(missing), "--train-images", "brick",
                         "--test-images", "gravel", "--out", str(tmp_path)])
    assert code == 2 and str(missing) in err
    assert not (tmp_path / "metrics.json").exists()


# ---------------------------------------------------------------------------------------------------
# A tiny end-to-end run

TEST_IMAGE, EVAL = "chelsea", 48
LOSSES = ["l1", "l1+0.1*pdl"]


@pytest.fixture(scope="module")
def tiny_mdf(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("mdf") / "tiny.safetensors"
    save_discriminators([MDFDiscriminator(8).eval() for _ in range(2)], path)
    return path


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, tiny_mdf):
    out = tmp_path_factory.mktemp("demo")
    mp = pytest.MonkeyPatch()
    mp.setenv("TORCH_HOME", str(out / "no_hub"))  # no VGG weights anywhere: pdl must fall back to MDF features
    try:
        code, stdout, stderr = _cli([
            "demo", "--losses", ",".join(LOSSES), "--steps", "3", "--crop", "24", "--batch", "2", "--width", "8",
            "--blocks", "1", "--train-images", "astronaut,brick", "--test-images", TEST_IMAGE, "--eval-size", str(EVAL),
            "--mdf-weights", str(tiny_mdf), "--out", str(out), "--quiet"])
    finally:
        mp.undo()
    return {"code": code, "stdout": stdout, "stderr": stderr, "out": out,
            "data": json.loads((out / "metrics.json").read_text())}


def test_run_writes_files_and_table(tiny_run):
    out, text, data = tiny_run["out"], tiny_run["stdout"], tiny_run["data"]
    assert tiny_run["code"] == 0, tiny_run["stderr"]
    for name in ("metrics.json", "metrics.md", f"grid_{TEST_IMAGE}.png"):
        assert (out / name).is_file()
    assert list(data["losses"]) == LOSSES and not data["interrupted"]
    md = (out / "metrics.md").read_text()
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("loss") and "PSNR" in line)
    table = lines[start + 2:start + 2 + 1 + len(LOSSES)]
    assert [line.split()[0] for line in table] == ["input"] + LOSSES
    for loss in LOSSES:
        m = data["losses"][loss]
        assert m["ms_per_step"] > 0 and m["steps"] == 3
        row = next(line for line in md.splitlines() if line.startswith(f"| {loss} |"))
        assert f"{m['mean']['psnr']:.2f}" in row and f"{m['mean']['ssim']:.3f}" in row
        assert f"{m['ms_per_step']:.0f}" in row.split("|")[-2]


def test_pdl_fallback_is_said_plainly(tiny_run):
    assert "VGG16 weights NOT found" in tiny_run["stdout"]
    assert any("no VGG16 weights were found" in n for n in tiny_run["data"]["notes"])


def _reference_crop():
    from skimage import data

    img = data.chelsea().astype(np.float64) / 255
    h, w = img.shape[:2]
    top, left = (h - EVAL) // 2, (w - EVAL) // 2
    return img[top:top + EVAL, left:left + EVAL]


def test_grid_holds_the_outputs_the_metrics_describe(tiny_run):
    from PIL import Image

    data = tiny_run["data"]
    grid = np.asarray(Image.open(tiny_run["out"] / f"grid_{TEST_IMAGE}.png").convert("RGB")).astype(np.float64) / 255
    ref = _reference_crop()
    pad, ncols = 6, len(LOSSES) + 2
    assert grid.shape[1] == pad + ncols * (EVAL + pad)  # input | one column per loss | reference
    x0s = [pad + i * (EVAL + pad) for i in range(ncols)]
    # the zoom box is outlined one pixel outside it, over every column: leave that ring out
    bt, bl, side = demo.zoom_box(torch.from_numpy(ref).permute(2, 0, 1))
    keep = np.ones((EVAL, EVAL), bool)
    for r in (bt - 1, bt + side):
        if 0 <= r < EVAL:
            keep[r, max(bl - 1, 0):bl + side + 1] = False
    for c in (bl - 1, bl + side):
        if 0 <= c < EVAL:
            keep[max(bt - 1, 0):bt + side + 1, c] = False
    # the top row of the last column is the reference itself, 8-bit exact
    top = next(r for r in range(grid.shape[0] - EVAL + 1)
               if np.abs(grid[r:r + EVAL, x0s[-1]:x0s[-1] + EVAL] - ref)[keep].max() < 1e-6)
    cols = [grid[top:top + EVAL, x:x + EVAL] for x in x0s]
    assert keep.mean() > 0.8
    # PSNR recomputed from the 8-bit picture agrees with the recorded one
    for col, entry in zip(cols[:-1], [data["input"]] + [data["losses"][k] for k in LOSSES]):
        psnr = 10 * math.log10(1.0 / np.mean((col[keep] - ref[keep]) ** 2))
        assert abs(psnr - entry["images"][TEST_IMAGE]["psnr"]) < 0.3


def test_input_noise_level_matches_sigma_25(tiny_run):
    # Gaussian noise of sigma 25/255 alone gives 20*log10(255/25) = 20.17 dB; clipping at 0 and 1 raises it a little
    psnr = tiny_run["data"]["input"]["images"][TEST_IMAGE]["psnr"]
    assert 20.17 - 0.5 < psnr < 20.17 + 1.5


def test_texture_w1_against_scipy():
    from scipy.stats import wasserstein_distance

    g = torch.Generator().manual_seed(3)
    a, b = torch.rand(3, 20, 24, generator=g), torch.rand(3, 20, 24, generator=g) * 0.5
    def grad_mag(x):
        x = x.double().numpy()
        y = 0.299 * x[0] + 0.587 * x[1] + 0.114 * x[2]
        gx, gy = y[:-1, 1:] - y[:-1, :-1], y[1:, :-1] - y[:-1, :-1]
        return np.hypot(gx, gy).ravel()
    want = 255 * wasserstein_distance(grad_mag(a), grad_mag(b))
    assert math.isclose(demo.texture_w1(a, b), want, rel_tol=1e-9)
    assert demo.texture_w1(a, a) == 0.0


def test_ctrl_c_keeps_finished_losses(tmp_path, monkeypatch, tiny_mdf):
    calls = []
    real = demo.train_restorer

    def interrupt_second(*args, **kwargs):
        calls.append(kwargs["desc"])
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(demo.runner, "train_restorer", interrupt_second)
    code, stdout, _ = _cli(["demo", "--losses", "l2,l1", "--steps", "2", "--crop", "16", "--batch", "2", "--width", "4",
                            "--blocks", "1", "--train-images", "brick", "--test-images", "gravel", "--eval-size", "32",
                            "--out", str(tmp_path), "--quiet"])
    assert code == 130 and len(calls) == 2
    data = json.loads((tmp_path / "metrics.json").read_text())
    assert data["interrupted"] and list(data["losses"]) == ["l2"]
    assert "interrupted" in stdout and (tmp_path / "grid_gravel.png").is_file()


# ---------------------------------------------------------------------------------------------------
# DDP: two gloo processes train like one

DDP_STEPS, DDP_BATCH, DDP_CROP = 3, 4, 16


def _images():
    g = torch.Generator().manual_seed(5)
    return [torch.rand(3, 40, 48, generator=g), torch.rand(3, 36, 36, generator=g)]


def _initial_model():
    torch.manual_seed(0)
    model = demo.ResidualRestorer(width=6, blocks=1)
    # nonzero last layer so every parameter gets a gradient from the first step
    torch.nn.init.normal_(model.tail.weight, std=0.05)
    return model


def _train(rank, world):
    model = _initial_model()
    loss = WeightedSumLoss("l1+0.5*l2", {"l1": lambda a, b: (a - b).abs().mean(), "l2": lambda a, b: ((a - b) ** 2).mean()})
    demo.train_restorer(model, loss, _images(), task="denoise", steps=DDP_STEPS, batch=DDP_BATCH, crop=DDP_CROP,
                        lr=1e-2, seed=1, rank=rank, world=world)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _ddp_worker(rank, world, out_dir):
    import torch.distributed as dist

    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    try:
        torch.save(_train(rank, world), os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_ddp_two_gloo_processes_match_one(tmp_path, ddp_spawn):
    ddp_spawn(_ddp_worker, str(tmp_path))
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    start = _initial_model().state_dict()
    single = _train(0, 1)
    for k in r0:
        assert torch.equal(r0[k], r1[k]), k  # DDP keeps the replicas identical
        torch.testing.assert_close(r0[k], single[k], rtol=1e-4, atol=1e-5)  # and the split batch trains as one
    for k in ("head.weight", "body.0.0.weight", "tail.weight"):
        assert not torch.allclose(single[k], start[k])  # it trained at all
