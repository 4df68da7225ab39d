"""NIMA: EMD loss and scores against direct formulas, rating-file parsers, the enhancement loss, a real
learning test on a synthetic rating set, and a two-process DDP run of the trainer."""
from __future__ import annotations

import io
import math
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pdl_ext.losses.nima import NIMA, EMDLoss, NIMALoss, emd_loss, mean_score, std_score
from pdl_ext.train.nima import (RatingDataset, gaussian_histogram, lcc, rating_metrics, read_ava,
                                read_csv_ratings, read_ratings, srcc, train_nima)
from pdl_ext.io.weights import load_state_dict, save_state_dict


# ---------------------------------------------------------------- EMD and scores


def emd_direct(p_counts, t_counts, r):
    """Per sample (mean_k |CDF_p(k) - CDF_t(k)|^r)^(1/r), in plain Python."""
    out = []
    for p, t in zip(p_counts, t_counts):
        sp, st = sum(p), sum(t)
        cp = ct = 0.0
        acc = 0.0
        for a, b in zip(p, t):
            cp += a / sp
            ct += b / st
            acc += abs(cp - ct) ** r
        out.append((acc / len(p)) ** (1.0 / r))
    return out


@pytest.mark.parametrize("r", [1, 2])
def test_emd_against_direct_formula_on_raw_counts(r):
    g = torch.Generator().manual_seed(0)
    pred = torch.rand(6, 10, generator=g, dtype=torch.float64)
    target = torch.randint(0, 60, (6, 10), generator=g)  # raw AVA-style vote counts
    target[0] = 0
    target[0, 4] = 11  # a one-bin histogram
    expected = torch.tensor(emd_direct(pred.tolist(), target.tolist(), r), dtype=torch.float64)
    torch.testing.assert_close(emd_loss(pred, target, r=r, reduction="none"), expected)
    torch.testing.assert_close(emd_loss(pred, target, r=r), expected.mean())
    torch.testing.assert_close(emd_loss(pred, target, r=r, reduction="sum"), expected.sum())
    torch.testing.assert_close(EMDLoss(r=r, reduction="none")(pred, target), expected)


def test_emd_root_is_per_sample_not_after_the_batch_mean():
    p = torch.tensor([[1.0, 0, 0], [1.0, 0, 0]])
    t = torch.tensor([[1.0, 0, 0], [0, 0, 1.0]])
    # sample 0: 0; sample 1: CDF gaps (1, 1, 0) -> sqrt(2/3); the mean of the roots
    torch.testing.assert_close(emd_loss(p, t), torch.tensor(math.sqrt(2 / 3) / 2))


def test_emd_uses_cdf_and_is_scale_invariant():
    p = torch.tensor([[0.0, 1.0, 0.0, 0.0]])
    near, far = torch.tensor([[0.0, 0.0, 1.0, 0.0]]), torch.tensor([[0.0, 0.0, 0.0, 1.0]])
    assert emd_loss(p, far, r=1) > emd_loss(p, near, r=1)  # a PDF distance would call them equal
    torch.testing.assert_close(emd_loss(p * 7, near * 3, r=1), emd_loss(p, near, r=1))


def test_emd_gradient_is_finite_at_zero_distance():
    t = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    logits = torch.log(t / t.sum()).requires_grad_(True)
    emd_loss(torch.softmax(logits, -1), t).backward()
    assert torch.isfinite(logits.grad).all()


def test_emd_gradcheck():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(3, 5, generator=g, dtype=torch.float64, requires_grad=True)
    target = torch.rand(3, 5, generator=g, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda z: emd_loss(torch.softmax(z, -1), target, r=2), (logits,))


def test_emd_input_errors():
    with pytest.raises(ValueError, match=r"emd_loss: pred and target must have the same shape"):
        emd_loss(torch.rand(2, 10), torch.rand(2, 9))
    with pytest.raises(ValueError, match="r must be a positive number"):
        emd_loss(torch.rand(2, 10), torch.rand(2, 10), r=0)
    with pytest.raises(ValueError, match="reduction must be"):
        emd_loss(torch.rand(2, 10), torch.rand(2, 10), reduction="avg")
    with pytest.raises(TypeError, match="pred must be float"):
        emd_loss(torch.ones(2, 10, dtype=torch.long), torch.rand(2, 10))


def test_mean_and_std_scores_against_direct_formula():
    g = torch.Generator().manual_seed(2)
    counts = torch.randint(0, 40, (5, 10), generator=g).double()
    counts[:, 3] += 1
    for row, m, s in zip(counts.tolist(), mean_score(counts).tolist(), std_score(counts).tolist()):
        n = sum(row)
        mu = sum((i + 1) * c for i, c in enumerate(row)) / n
        var = sum((i + 1 - mu) ** 2 * c for i, c in enumerate(row)) / n
        assert m == pytest.approx(mu, rel=1e-12)
        assert s == pytest.approx(math.sqrt(var), rel=1e-12)
    assert mean_score(torch.eye(10)).tolist() == pytest.approx(list(range(1, 11)))
    assert std_score(torch.eye(10)).tolist() == pytest.approx([0.0] * 10)


def test_gaussian_histogram_is_a_discretised_gaussian():
    from scipy.stats import norm

    for mu, sigma in [(5.3, 1.4), (1.2, 0.8), (9.7, 2.0)]:
        edges = np.array([-np.inf] + [k + 0.5 for k in range(1, 10)] + [np.inf])
        expected = np.diff(norm.cdf(edges, mu, sigma))
        np.testing.assert_allclose(gaussian_histogram(mu, sigma).numpy(), expected, atol=1e-6)
    h = gaussian_histogram(5.5, 1.0)
    assert h.sum().item() == pytest.approx(1.0, abs=1e-6)
    assert mean_score(h).item() == pytest.approx(5.5, abs=1e-4)  # symmetric: the mean survives
    assert gaussian_histogram(3.2, 0.0).tolist() == [0, 0, 1, 0, 0, 0, 0, 0, 0, 0]
    with pytest.raises(ValueError, match="std >= 0"):
        gaussian_histogram(5, -1)


# ---------------------------------------------------------------- rating files


def test_ava_parser(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    for image_id in (953619, 953958, 12):
        (images / f"{image_id}.jpg").write_bytes(b"jpg")
    (tmp_path / "AVA.txt").write_text(
        "1 953619 0 1 5 17 38 36 15 6 5 1 1 22 1396\n"
        "2 953958 10 7 15 26 26 21 10 8 1 2 15 21 1396\n"
        "\n"
        "3 954184 0 0 4 8 41 56 10 3 4 0 0 0 1396\n"  # image absent from the directory
        "4 12 0 0 0 0 0 0 0 0 0 0 0 0 1396\n"  # no votes
    )
    items = read_ava(tmp_path / "AVA.txt", images)
    assert [p.name for p, _ in items] == ["953619.jpg", "953958.jpg"]
    assert items[0][1].tolist() == [0, 1, 5, 17, 38, 36, 15, 6, 5, 1]
    assert items[1][1].tolist() == [10, 7, 15, 26, 26, 21, 10, 8, 1, 2]
    assert mean_score(items[0][1]).item() == pytest.approx(
        sum(k * c for k, c in zip(range(1, 11), [0, 1, 5, 17, 38, 36, 15, 6, 5, 1])) / 124)
    assert [p.name for p, _ in read_ratings(tmp_path / "AVA.txt", images)] == ["953619.jpg", "953958.jpg"]
    with pytest.raises(FileNotFoundError, match=r"AVA\.txt:4: image .*954184\.jpg not found"):
        read_ava(tmp_path / "AVA.txt", images, skip_missing=False)
    (tmp_path / "bad.txt").write_text("1 953619 0 1 5 17 38 36 15 6 5 1 1 22 1396\n2 953958 1 2 3\n")
    with pytest.raises(ValueError, match=r"bad\.txt:2: expected 15 fields"):
        read_ava(tmp_path / "bad.txt", images)


def test_csv_parser_counts_and_mean_std(tmp_path):
    (tmp_path / "counts.csv").write_text("path,c1,c2,c3,c4,c5,c6,c7,c8,c9,c10\na.png,0,0,1,2,3,4,3,2,1,0\nsub/b.png,1,1,1,1,1,1,1,1,1,1\n")
    items = read_csv_ratings(tmp_path / "counts.csv")
    assert [p for p, _ in items] == [tmp_path / "a.png", tmp_path / "sub" / "b.png"]
    assert items[0][1].tolist() == [0, 0, 1, 2, 3, 4, 3, 2, 1, 0]
    (tmp_path / "ms.csv").write_text("x.png,6.2,1.1\n/abs/y.png,3.0,0.0\n")
    items = read_csv_ratings(tmp_path / "ms.csv", images_dir=tmp_path / "imgs")
    assert items[0][0] == tmp_path / "imgs" / "x.png" and items[1][0] == Path("/abs/y.png")
    torch.testing.assert_close(items[0][1], gaussian_histogram(6.2, 1.1))
    assert items[1][1].argmax().item() == 2
    assert len(read_ratings(tmp_path / "ms.csv")) == 2
    (tmp_path / "bad.csv").write_text("a.png,1,2,3,4\n")
    with pytest.raises(ValueError, match=r"bad\.csv:1: expected path,c1..c10 or path,mean,std"):
        read_csv_ratings(tmp_path / "bad.csv")


# ---------------------------------------------------------------- metrics


def test_correlations_against_scipy():
    from scipy.stats import pearsonr, spearmanr

    g = np.random.default_rng(0)
    x = g.normal(size=50)
    y = x + g.normal(size=50)
    xt, yt = np.round(x), np.round(y * 2) / 2  # many ties
    assert lcc(x, y) == pytest.approx(pearsonr(x, y)[0], abs=1e-12)
    assert srcc(x, y) == pytest.approx(spearmanr(x, y)[0], abs=1e-12)
    assert srcc(xt, yt) == pytest.approx(spearmanr(xt, yt)[0], abs=1e-12)
    assert math.isnan(lcc([1, 1, 1], [1, 2, 3]))


def test_rating_metrics_accuracy_and_emd():
    target = torch.stack([gaussian_histogram(m, 1.0) for m in (3.0, 4.5, 6.0, 7.5)]).double()
    pred = torch.stack([gaussian_histogram(m, 1.5) for m in (3.5, 5.5, 5.8, 7.0)]).double()
    m = rating_metrics(pred, target)
    assert m["accuracy"] == pytest.approx(0.75)  # the second image is on the wrong side of 5
    assert m["emd"] == pytest.approx(float(np.mean(emd_direct(pred.tolist(), target.tolist(), 2))))
    assert m["n"] == 4


# ---------------------------------------------------------------- model


class TinyBackbone(nn.Module):
    """A small CNN for tests: (B, 3, H, W) -> (B, 16, H/4, W/4)."""

    def __init__(self, width: int = 8, norm: bool = False) -> None:
        super().__init__()
        layers = []
        for cin, cout, stride in ((3, width, 1), (width, 2 * width, 2), (2 * width, 2 * width, 2)):
            layers += [nn.Conv2d(cin, cout, 3, stride=stride, padding=1)]
            layers += [nn.BatchNorm2d(cout)] if norm else []
            layers += [nn.ReLU()]
        self.net = nn.Sequential(*layers)

    def forward(self, x):
        # local mean removed: blur, noise and JPEG live in the fine structure, not in the brightness
        return self.net(5 * (x - F.avg_pool2d(x, 5, 1, 2, count_include_pad=False)))


def test_nima_custom_backbone_infers_features_without_touching_batchnorm():
    bb = TinyBackbone(width=6, norm=True)
    before = {k: v.clone() for k, v in bb.state_dict().items()}
    nima = NIMA(bb, dropout=0.0)
    assert nima.num_features == 12 and nima.head.in_features == 12
    for k, v in bb.state_dict().items():
        torch.testing.assert_close(v, before[k], rtol=0, atol=0)
    assert bb.training  # its mode is restored
    probs = nima.eval()(torch.rand(3, 3, 20, 20))
    assert probs.shape == (3, 10)
    torch.testing.assert_close(probs.sum(-1), torch.ones(3))

    flat = NIMA(nn.Sequential(nn.Conv2d(3, 5, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten()), num_bins=5)
    assert flat.num_features == 5 and flat(torch.rand(2, 3, 8, 8)).shape == (2, 5)

    class Listy(nn.Module):
        def __init__(self):
            super().__init__()
            self.c = nn.Conv2d(3, 7, 1)

        def forward(self, x):
            return [x, self.c(x)]

    assert NIMA(Listy()).num_features == 7
    assert NIMA(Listy(), num_features=7).head.in_features == 7


def test_nima_head_is_gap_dropout_linear_softmax():
    nima = NIMA(TinyBackbone(), dropout=0.5).eval()
    x = torch.rand(2, 3, 16, 16)
    f = nima.backbone(x).mean(dim=(2, 3))
    torch.testing.assert_close(nima(x), torch.softmax(f @ nima.head.weight.T + nima.head.bias, -1))
    nima.train()
    torch.manual_seed(0)
    assert not torch.allclose(nima(x), nima(x))  # dropout is active in training


def test_nima_vgg16_random_backbone_and_missing_weights(tmp_path, monkeypatch):
    nima = NIMA("vgg16", pretrained_backbone=False)
    assert nima.num_features == 512 and len(nima.backbone.features) == 31
    assert all(p.requires_grad for p in nima.parameters())  # the backbone is fine-tuned
    probs = nima.eval()(torch.rand(1, 3, 32, 32))
    assert probs.shape == (1, 10)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    with pytest.raises(FileNotFoundError, match="vgg16-397923af.pth"):
        NIMA("vgg16")
    with pytest.raises(ValueError, match="backbone must be"):
        NIMA("resnet50")


def test_nima_weights_roundtrip_and_mismatch(tmp_path):
    torch.manual_seed(0)
    nima = NIMA(TinyBackbone(), dropout=0.0).eval()
    save_state_dict(nima.state_dict(), tmp_path / "nima.safetensors")
    torch.save({"state_dict": nima.state_dict()}, tmp_path / "nima.pth")
    x = torch.rand(2, 3, 16, 16)
    for name in ("nima.safetensors", "nima.pth"):
        torch.manual_seed(1)  # a different init, overwritten by the file
        again = NIMA(TinyBackbone(), dropout=0.0, weights=tmp_path / name).eval()
        torch.testing.assert_close(again(x), nima(x), rtol=0, atol=0)
    with pytest.raises(ValueError, match=r"does not match this model.*missing \['backbone\.net\.1\.bias'"):
        NIMA(TinyBackbone(norm=True), weights=tmp_path / "nima.safetensors")  # BatchNorm tensors absent
    with pytest.raises(ValueError, match=r"wrongly shaped tensors.*head\.weight: expected \(5, 16\), got \(10, 16\)"):
        NIMA(TinyBackbone(), num_bins=5, weights=tmp_path / "nima.safetensors")
    vgg = NIMA("vgg16", pretrained_backbone=False).eval()
    save_state_dict(vgg.state_dict(), tmp_path / "vgg_nima.safetensors")
    # with weights=, the ImageNet VGG weights are neither needed nor looked for
    again = NIMA("vgg16", weights=tmp_path / "vgg_nima.safetensors").eval()
    y = torch.rand(1, 3, 32, 32)
    torch.testing.assert_close(again(y), vgg(y), rtol=0, atol=0)


# ---------------------------------------------------------------- NIMALoss


def test_nima_loss_value_against_direct_formula():
    torch.manual_seed(0)
    nima = NIMA(TinyBackbone(), dropout=0.0)
    out, ref = torch.rand(2, 3, 16, 16), torch.rand(2, 3, 16, 16)
    with torch.no_grad():
        probs = nima.eval()(out)
    s = (probs * torch.arange(1, 11)).sum(-1)
    penalty = (10 - s) / 9
    d = out - ref
    fids = {"l1": d.abs().mean((1, 2, 3)), "l2": (d ** 2).mean((1, 2, 3)),
            "charbonnier": torch.sqrt(d ** 2 + 1e-6).mean((1, 2, 3))}
    for name, fid in fids.items():
        loss = NIMALoss(nima, weight=0.3, pixel_loss=name, reduction="none")
        torch.testing.assert_close(loss(out, ref), fid + 0.3 * penalty)
    torch.testing.assert_close(NIMALoss(nima, weight=2.0, pixel_loss=None)(out), (2.0 * penalty).mean())
    torch.testing.assert_close(NIMALoss(nima, weight=1.0, pixel_loss=None, max_score=8.0, reduction="sum")(out),
                               ((8 - s) / 7).sum())


def test_following_nima_loss_gradient_increases_the_score(one_thread):
    torch.manual_seed(0)
    nima = NIMA(TinyBackbone(), dropout=0.75)  # dropout must be switched off by the loss
    loss_fn = NIMALoss(nima, weight=1.0, pixel_loss=None)
    loss_fn.train()
    assert not nima.training and not any(p.requires_grad for p in nima.parameters())
    x = torch.rand(2, 3, 24, 24, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        start = mean_score(nima(x))
    img = x.clone().requires_grad_(True)
    opt = torch.optim.Adam([img], lr=0.01)
    for _ in range(30):
        opt.zero_grad()
        loss_fn(img).backward()
        opt.step()
    with torch.no_grad():
        end = mean_score(nima(img))
    assert (end > start + 0.05).all(), (start, end)
    assert all(p.grad is None for p in nima.parameters())


def test_nima_loss_gradients_reach_output_only_and_errors():
    nima = NIMA(TinyBackbone(), dropout=0.0)
    loss_fn = NIMALoss(nima, pixel_loss="l2")
    out = torch.rand(1, 3, 16, 16, requires_grad=True)
    ref = torch.rand(1, 3, 16, 16)
    loss_fn(out, ref).backward()
    assert out.grad is not None and out.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="target is required"):
        loss_fn(out)
    with pytest.raises(ValueError, match=r"NIMALoss: output must be \(B, 3, H, W\), got shape \(1, 1, 16, 16\)"):
        loss_fn(torch.rand(1, 1, 16, 16), ref)
    with pytest.raises(ValueError, match="target must have the shape of output"):
        loss_fn(out, torch.rand(1, 3, 8, 8))
    with pytest.raises(ValueError, match="pixel_loss must be"):
        NIMALoss(nima, pixel_loss="ssim")
    with pytest.warns(DeprecationWarning, match="use pixel_loss="), pytest.raises(ValueError, match="fidelity must be"):
        NIMALoss(nima, fidelity="ssim")
    with pytest.raises(ValueError, match="max_score must be > 1"):
        NIMALoss(nima, max_score=1)


# ---------------------------------------------------------------- synthetic rating set

SYNTH_PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "brick", "grass", "gravel",
                "camera", "coins")


def _blur(x: torch.Tensor, s: float) -> torch.Tensor:
    sigma = 3.0 * s
    if sigma < 1e-3:
        return x
    r = int(math.ceil(3 * sigma))
    t = torch.arange(-r, r + 1, dtype=torch.float32)
    k = torch.exp(-t ** 2 / (2 * sigma ** 2))
    k = k / k.sum()
    y = F.pad(x[None], (r, r, r, r), mode="reflect")
    y = F.conv2d(y, k.view(1, 1, 1, -1).repeat(3, 1, 1, 1), groups=3)
    return F.conv2d(y, k.view(1, 1, -1, 1).repeat(3, 1, 1, 1), groups=3)[0]


def _noise(x: torch.Tensor, s: float, g: torch.Generator) -> torch.Tensor:
    return (x + 0.1 * s * torch.randn(x.shape, generator=g)).clamp(0, 1)


def _to_pil(x: torch.Tensor):
    from PIL import Image

    return Image.fromarray((x.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8))


def _jpeg(x: torch.Tensor, s: float) -> torch.Tensor:
    from PIL import Image

    buf = io.BytesIO()
    _to_pil(x).save(buf, "JPEG", quality=int(round(2 + 28 * (1 - s))))
    buf.seek(0)
    return torch.from_numpy(np.asarray(Image.open(buf).convert("RGB")).copy()).permute(2, 0, 1).float() / 255


def make_synthetic_ratings(root: Path, n: int, seed: int, size: int = 48, votes: int = 200):
    """`n` textured photo patches, each with one degradation (blur, noise or JPEG) of strength s ~ U(0, 1);
    true score 8.5 - 6 s; vote counts from a discretised Gaussian (std 1.2) around it.

    Returns the CSV path and the true scores in file order.
    """
    import skimage.data

    g = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    photos = []
    for name in SYNTH_PHOTOS:
        im = getattr(skimage.data, name)()
        im = np.stack([im] * 3, -1) if im.ndim == 2 else im[..., :3]
        x = torch.from_numpy(np.ascontiguousarray(im)).permute(2, 0, 1).float()[None] / 255
        photos.append(F.interpolate(x, scale_factor=0.5, mode="bilinear", antialias=True, align_corners=False)[0])
    root.mkdir(parents=True, exist_ok=True)
    lines, scores = ["path," + ",".join(f"c{k}" for k in range(1, 11))], []
    while len(scores) < n:
        x = photos[rng.integers(len(photos))]
        top, left = rng.integers(0, x.shape[1] - size + 1), rng.integers(0, x.shape[2] - size + 1)
        patch = x[:, top:top + size, left:left + size]
        if (patch[:, 1:] - patch[:, :-1]).abs().mean() < 0.02:
            continue  # flat sky: a degradation there is invisible, its rating meaningless
        s, kind = float(rng.uniform()), int(rng.integers(3))
        y = _blur(patch, s) if kind == 0 else _noise(patch, s, g) if kind == 1 else _jpeg(patch, s)
        name = f"img{len(scores):04d}.png"
        _to_pil(y).save(root / name)
        score = 8.5 - 6.0 * s
        counts = (gaussian_histogram(score, 1.2) * votes).round().int().tolist()
        lines.append(name + "," + ",".join(map(str, counts)))
        scores.append(score)
    (root / "ratings.csv").write_text("\n".join(lines) + "\n")
    return root / "ratings.csv", scores


def test_synthetic_ratings_are_learned(tmp_path, one_thread):
    """A small CNN trained a few CPU epochs ranks unseen degraded images by their true score."""
    from scipy.stats import spearmanr

    start = time.perf_counter()
    train_csv, _ = make_synthetic_ratings(tmp_path / "train", 450, seed=0)
    val_csv, val_scores = make_synthetic_ratings(tmp_path / "val", 240, seed=1)
    torch.manual_seed(0)
    nima = NIMA(TinyBackbone(width=16, norm=True), dropout=0.0)
    result = train_nima(train_csv, model=nima, val_ratings=val_csv, epochs=15, batch_size=16, lr=2e-3,
                        backbone_lr_factor=1.0, resize=None, crop=40, progress=False, log=None,
                        out=tmp_path / "nima.safetensors")
    # predicted mean scores of the held-out images, computed here, against the true scores
    val_set = RatingDataset(read_csv_ratings(val_csv), resize=None, crop=40, train=False)
    nima.eval()
    with torch.no_grad():
        pred = mean_score(nima(torch.stack([val_set[i][0] for i in range(len(val_set))]))).numpy()
    rho = spearmanr(pred, val_scores)[0]
    seconds = [row["seconds"] for row in result.history]
    print(f"\nsynthetic NIMA: SRCC {rho:.3f}, EMD {result.metrics['emd']:.4f}, LCC {result.metrics['lcc']:.3f}, "
          f"accuracy {result.metrics['accuracy']:.3f}, {np.mean(seconds):.2f} s/epoch "
          f"({len(seconds)} epochs of 450 images), total {time.perf_counter() - start:.1f} s")
    assert rho > 0.8
    # the trainer's own report agrees (it ranks against the mean of the rounded vote counts)
    hist_means = mean_score(torch.stack([h for _, h in val_set.items]).double()).numpy()
    assert result.metrics["srcc"] == pytest.approx(spearmanr(pred, hist_means)[0], abs=1e-6)
    assert result.metrics["emd"] < result.history[0]["val_emd"]
    # the checkpoint holds the trained weights
    saved = load_state_dict(tmp_path / "nima.safetensors")
    for k, v in nima.state_dict().items():
        torch.testing.assert_close(saved[k], v, rtol=0, atol=0)


# ---------------------------------------------------------------- CLI and DDP


def _write_tiny_set(root: Path, n: int, size: int = 20) -> Path:
    g = torch.Generator().manual_seed(0)
    root.mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(n):
        _to_pil(torch.rand(3, size, size, generator=g)).save(root / f"{i}.png")
        lines.append(f"{i}.png,{2 + 6 * i / n:.3f},1.0")  # the path,mean,std form
    (root / "ratings.csv").write_text("\n".join(lines) + "\n")
    return root / "ratings.csv"


def test_cli_train_nima_vgg16(tmp_path, one_thread, capsys):
    from pdl_ext.apps.cli import main

    csv_path = _write_tiny_set(tmp_path / "data", 6, size=36)
    out = tmp_path / "nima_vgg.safetensors"
    code = main(["train-nima", "--ratings", str(csv_path), "--backbone", "vgg16", "--no-pretrained", "--epochs", "1",
                 "--batch-size", "4", "--resize", "36", "--crop", "32", "--workers", "0",
                 "--val-fraction", "0.34", "--out", str(out)])
    assert code == 0
    assert '"srcc"' in capsys.readouterr().out
    nima = NIMA("vgg16", weights=out).eval()  # loads as a VGG16 NIMA
    assert nima(torch.rand(1, 3, 32, 32)).shape == (1, 10)
    assert main(["train-nima", "--ratings", str(tmp_path / "none.csv"), "--out", str(out)]) == 2


def test_head_only_epochs_and_two_learning_rates(tmp_path, one_thread):
    csv_path = _write_tiny_set(tmp_path / "data", 8)
    torch.manual_seed(0)
    nima = NIMA(TinyBackbone(width=4), dropout=0.0)
    before = {k: v.clone() for k, v in nima.state_dict().items()}
    train_nima(csv_path, model=nima, epochs=1, head_only_epochs=1, batch_size=4, lr=1e-2, val_fraction=0,
               resize=None, crop=16, progress=False, log=None)
    after = nima.state_dict()
    assert all(torch.equal(after[k], before[k]) for k in before if k.startswith("backbone."))
    assert not torch.equal(after["head.weight"], before["head.weight"])

    # SGD without momentum: one step moves each weight by lr * grad, the backbone's by a tenth of lr
    nima = NIMA(TinyBackbone(width=4), dropout=0.0)
    start = {k: v.clone() for k, v in nima.named_parameters()}
    items = read_csv_ratings(csv_path)[:4]
    x = torch.stack([RatingDataset(items, None, None, train=False)[i][0] for i in range(4)])
    grads = torch.autograd.grad(emd_loss(nima(x), torch.stack([h for _, h in items])), list(nima.parameters()))
    train_nima(items, model=nima, epochs=1, batch_size=4, lr=0.5, optimizer="sgd", momentum=0.0, val_fraction=0,
               resize=None, crop=None, hflip=False, progress=False, log=None)
    for (name, p), grad in zip(nima.named_parameters(), grads):
        lr = 0.05 if name.startswith("backbone.") else 0.5
        torch.testing.assert_close(start[name] - p.detach(), lr * grad, rtol=1e-4, atol=1e-7, msg=name)


def _train_tiny(csv_path: Path, out: Path) -> None:
    torch.manual_seed(0)
    nima = NIMA(TinyBackbone(width=4), dropout=0.0)  # no dropout, no BatchNorm: every process computes the same
    train_nima(csv_path, model=nima, epochs=2, batch_size=4, lr=1e-2, val_fraction=0.25, resize=20, crop=16,
               progress=False, log=None, out=out)


def _ddp_worker(rank: int, world: int, csv_path: str, out: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        _train_tiny(Path(csv_path), Path(out))
    finally:
        dist.destroy_process_group()


def test_ddp_two_processes_match_one(tmp_path, one_thread, ddp_spawn):
    csv_path = _write_tiny_set(tmp_path / "data", 16)  # 12 training images: 3 steps of 4 per epoch
    _train_tiny(csv_path, tmp_path / "one.safetensors")
    ddp_spawn(_ddp_worker, str(csv_path), str(tmp_path / "two.safetensors"))
    one, two = load_state_dict(tmp_path / "one.safetensors"), load_state_dict(tmp_path / "two.safetensors")
    torch.manual_seed(0)
    init = NIMA(TinyBackbone(width=4), dropout=0.0).state_dict()
    assert set(one) == set(two)
    moved = 0.0
    for k in one:
        torch.testing.assert_close(two[k], one[k], rtol=1e-4, atol=1e-5, msg=k)
        moved = max(moved, (one[k] - init[k]).abs().max().item())
    assert moved > 1e-3  # training did change the weights


def test_nima_loss_old_fidelity_name_still_works_with_a_warning():
    nima = NIMA(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()), dropout=0.0)
    out, ref = torch.rand(2, 3, 12, 12), torch.rand(2, 3, 12, 12)
    with pytest.warns(DeprecationWarning, match="fidelity= is deprecated"):
        old = NIMALoss(nima, weight=0.3, fidelity="l2", reduction="none")
    new = NIMALoss(nima, weight=0.3, pixel_loss="l2", reduction="none")
    assert old.pixel_loss == old.fidelity == "l2"
    torch.testing.assert_close(old(out, ref), new(out, ref))
