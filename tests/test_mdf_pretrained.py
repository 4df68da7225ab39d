"""The published MDF discriminators bundled with the package: MDFLoss.from_pretrained reproduces the
authors' reference figures (never skipped: the files ship inside pdl_ext), the bundled bytes are the
published ones, loading is safe and offline, names and keyword arguments are checked, and the demo
uses them by default."""
import doctest
import hashlib
import pickle
import socket
from pathlib import Path

import numpy as np
import pytest
import torch

import pdl_ext
from pdl_ext.apps.demo import terms
from pdl_ext.losses import mdf as mdf_module
from pdl_ext.losses.mdf import PRETRAINED, MDFLoss, pretrained_path

BUNDLED = Path(mdf_module.__file__).resolve().parent / "weights" / "mdf"
# The folder the bundled files were copied from, beside a source checkout (tests only).
SHARED = Path(__file__).resolve().parents[2] / "shared" / "weights" / "mdf"

# /work/shared/weights/mdf/README.md: the authors' code on chelsea[50:146, 100:196] with N(0, 0.05^2)
# noise from default_rng(7), float64: (loss, L2 norm of d loss / d x).
FIGURES = {"sisr": (5.0480574369e-01, 3.6133703431e-01), "denoise": (5.0480574369e-01, 3.6133703431e-01),
           "jpeg": (5.5720901489e-01, 2.3279891845e-01)}
WIDTHS = {"sisr": [32] * 4 + [64] * 4 + [128], "denoise": [32] * 4 + [64] * 4 + [128], "jpeg": [32] * 4 + [64] * 4}
# SHA-256 of the published files as converted in shared/weights/mdf (and of the authors' LICENSE).
SHA256 = {
    "Ds_SISR.safetensors": "7850938acaacfd3760d643e6af668fe136a2c2c35e1ab795953924510e848342",
    "Ds_JPEG.safetensors": "2ea009f50eb164331761c39e32f838b4f97ef28df9c64f0984f270d352a3e47f",
    "LICENSE": "d51d52342f9c52aa26c48ac1314e68318fc07c09bf066f5dbb0daf1e7f8f1e92",
}


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _chelsea_pair():
    from skimage import data  # a test dependency (pyproject [test]); no skip: these figures must run

    y = torch.from_numpy(data.chelsea()[50:146, 100:196].astype(np.float64) / 255).permute(2, 0, 1)[None]
    noise = np.random.default_rng(7).normal(0, 0.05, size=tuple(y.shape))
    return (y + torch.from_numpy(noise)).clamp(0, 1), y


@pytest.mark.parametrize("name", sorted(FIGURES))
def test_reproduces_the_published_figures(name, one_thread):
    x, y = _chelsea_pair()
    x.requires_grad_(True)
    loss_fn = MDFLoss.from_pretrained(name).double()
    assert loss_fn.widths == WIDTHS[name] and loss_fn.num_scales == 8
    loss = loss_fn(x, y)
    (grad,) = torch.autograd.grad(loss, x)
    want_loss, want_grad = FIGURES[name]
    assert loss.item() == pytest.approx(want_loss, rel=1e-6)
    assert grad.norm().item() == pytest.approx(want_grad, rel=1e-6)


def test_bundled_files_are_the_published_ones():
    # Pinned digests: this runs everywhere (an installed package included).
    for file, digest in SHA256.items():
        assert _sha256(BUNDLED / file) == digest, file
    assert set(PRETRAINED.values()) == {"Ds_SISR.safetensors", "Ds_JPEG.safetensors"}
    assert {name: pretrained_path(name).name for name in PRETRAINED} == {
        "sisr": "Ds_SISR.safetensors", "denoise": "Ds_SISR.safetensors", "jpeg": "Ds_JPEG.safetensors"}
    assert all(pretrained_path(name).parent == BUNDLED for name in PRETRAINED)


@pytest.mark.skipif(not SHARED.is_dir(), reason="no ../shared/weights/mdf beside this checkout to compare with")
def test_bundled_files_match_the_shared_folder():
    for file in ("Ds_SISR.safetensors", "Ds_JPEG.safetensors", "LICENSE"):
        assert _sha256(BUNDLED / file) == _sha256(SHARED / file), file


def test_the_bundled_licence_is_the_authors_bsd3():
    text = (BUNDLED / "LICENSE").read_text(encoding="utf-8")
    assert text.startswith("BSD 3-Clause License")
    assert "Graphics and Displays group - University of Cambridge" in text


def test_unknown_name_lists_the_names():
    for bad in ("x", "SISR", "Ds_SISR", "", None, 1):
        with pytest.raises(ValueError) as info:
            MDFLoss.from_pretrained(bad)
        assert str(info.value) == (
            f"MDFLoss.from_pretrained: name must be one of 'sisr', 'denoise', 'jpeg', got {bad!r}")


def test_denoise_is_the_sisr_series():
    sisr, denoise = MDFLoss.from_pretrained("sisr"), MDFLoss.from_pretrained("denoise")
    a, b = sisr.state_dict(), denoise.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    jpeg = MDFLoss.from_pretrained("jpeg").state_dict()
    assert not torch.equal(a["discriminators.0.head.conv.weight"], jpeg["discriminators.0.head.conv.weight"])


def test_keyword_arguments_pass_through(one_thread):
    loss_fn = MDFLoss.from_pretrained("jpeg", num_scales=3, distance="pdl", p=2, reduction="none")
    assert (loss_fn.num_scales, loss_fn.distance, loss_fn.p, loss_fn.reduction) == (3, "pdl", 2, "none")
    assert loss_fn.widths == WIDTHS["jpeg"]
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(2, 3, 24, 24, generator=g), torch.rand(2, 3, 24, 24, generator=g)
    want = MDFLoss.from_file(BUNDLED / "Ds_JPEG.safetensors", 3, "pdl", 2, "none")(x, y)
    got = loss_fn(x, y)
    assert got.shape == (2,) and torch.equal(got, want)
    # positional, as in from_file; and the constructor's checks apply
    assert MDFLoss.from_pretrained("sisr", 9).num_scales == 9
    with pytest.raises(ValueError, match=r"MDFLoss: num_scales must be an int in \[1, 8\]"):
        MDFLoss.from_pretrained("jpeg", num_scales=9)
    with pytest.raises(ValueError, match="MDFLoss: distance must be 'mse' or 'pdl', got 'l1'"):
        MDFLoss.from_pretrained("sisr", distance="l1")
    with pytest.raises(TypeError):
        MDFLoss.from_pretrained("sisr", widths=[32])


def test_loading_is_offline_and_runs_no_pickle(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("from_pretrained must not unpickle or open sockets")

    monkeypatch.setattr(socket, "socket", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(torch, "load", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "Unpickler", refuse)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)
    for name in PRETRAINED:
        loss_fn = MDFLoss.from_pretrained(name)
        assert not any(q.requires_grad for q in loss_fn.parameters())
        assert not any(m.training for m in loss_fn.discriminators.modules())
        assert next(loss_fn.parameters()).dtype == torch.float32


def test_a_missing_bundled_file_says_the_install_is_broken(monkeypatch, tmp_path):
    monkeypatch.setattr(mdf_module, "pretrained_path", lambda name: tmp_path / PRETRAINED[name])
    with pytest.raises(FileNotFoundError, match="MDFLoss.from_pretrained: the bundled file .* is missing"):
        MDFLoss.from_pretrained("sisr")


def test_the_docstring_example_runs(one_thread):
    finder = doctest.DocTestFinder()
    tests = finder.find(MDFLoss.from_pretrained, "MDFLoss.from_pretrained", globs={})
    assert tests and tests[0].examples
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    for t in tests:
        runner.run(t)
    assert runner.summarize(verbose=False).failed == 0


def test_exported_from_the_package():
    assert pdl_ext.MDFLoss.from_pretrained.__func__ is MDFLoss.from_pretrained.__func__


# ---------------------------------------------------------------- the demo


def _ctx(task, tmp_path, mdf_weights=None):
    log = []
    ctx = terms.TermContext(task=task, device=torch.device("cpu"), out=tmp_path, seed=0, vgg_weights=None,
                            mdf_weights=mdf_weights, nima_weights=None, mdf_iters=1, mdf_image="brick",
                            progress=False, log=log.append)
    return ctx, log


@pytest.mark.parametrize("task, series", [("sr", "sisr"), ("deblur", "sisr"), ("denoise", "denoise"),
                                          ("demosaic", "denoise"), ("jpeg", "jpeg")])
def test_demo_uses_the_bundled_series_by_default(task, series, tmp_path, monkeypatch):
    import pdl_ext.train.mdf as train_mdf_module

    monkeypatch.setattr(train_mdf_module, "train_mdf", lambda *a, **k: pytest.fail("the demo trained an MDF series"))
    ctx, log = _ctx(task, tmp_path)
    path = terms.resolve_mdf_weights(ctx)
    assert path == pretrained_path(series) and path.parent == BUNDLED
    assert any("the published discriminators (Mustafa et al. 2022, bundled)" in n for n in ctx.notes), ctx.notes
    assert any(f"from_pretrained({series!r})" in line for line in log), log
    assert not list(tmp_path.iterdir())  # nothing trained or cached
    loss = terms.build_term("mdf", ctx)
    assert loss.num_scales == 8 and loss.widths == WIDTHS[series][:8]


def test_demo_pdl_fallback_uses_the_first_two_bundled_discriminators(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "no_hub"))  # no VGG16 weights anywhere
    ctx, _ = _ctx("jpeg", tmp_path / "out")
    loss = terms.build_term("pdl", ctx)
    assert loss.distance == "pdl" and loss.num_scales == terms.PDL_MDF_SCALES == 2
    want = MDFLoss.from_pretrained("jpeg").state_dict()
    got = loss.state_dict()
    assert got.keys() == {k for k in want if int(k.split(".")[1]) < 2}
    assert all(torch.equal(got[k], want[k]) for k in got)
    assert any("bundled" in n for n in ctx.notes)


def test_demo_mdf_weights_path_and_train_still_work(tmp_path, monkeypatch):
    ctx, _ = _ctx("sr", tmp_path, mdf_weights=str(BUNDLED / "Ds_JPEG.safetensors"))
    assert terms.resolve_mdf_weights(ctx) == BUNDLED / "Ds_JPEG.safetensors"
    assert any("(--mdf-weights)" in n for n in ctx.notes)

    calls = []

    def fake_train(image, task, *, out, max_size, **kwargs):
        calls.append((image, task, max_size))
        from pdl_ext.losses.mdf import MDFDiscriminator, save_discriminators

        save_discriminators([MDFDiscriminator(4).eval() for _ in range(2)], out)

    import pdl_ext.train.mdf as train_mdf_module

    monkeypatch.setattr(train_mdf_module, "train_mdf", fake_train)
    ctx, _ = _ctx("deblur", tmp_path, mdf_weights="train")
    path = terms.resolve_mdf_weights(ctx, max_size=32)
    assert calls == [("brick", "sr", 32)] and path.parent == tmp_path and path.is_file()
    assert any("a short training here" in n for n in ctx.notes)


def test_no_path_in_the_package_reaches_a_shared_folder():
    root = Path(pdl_ext.__file__).resolve().parent
    for py in root.rglob("*.py"):
        text = py.read_text(encoding="utf-8")
        assert "SHARED_MDF" not in text and '"shared"' not in text, py
