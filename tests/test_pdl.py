"""PDLLoss against an independent computation (a VGG written here from a torchvision-format checkpoint)."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pdl_ext import reference
from pdl_ext.functional import pdl_loss
from pdl_ext.losses.pdl import PDLLoss

VGG16_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")
MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


def _torchvision_vgg16_state_dict(seed=0):
    """Random weights with torchvision's full vgg16 key set (features.N.*, classifier.*)."""
    g = torch.Generator().manual_seed(seed)
    sd, idx, cin = {}, 0, 3
    for v in VGG16_CFG:
        if v == "M":
            idx += 1
            continue
        sd[f"features.{idx}.weight"] = torch.randn(v, cin, 3, 3, generator=g) * (2.0 / (9 * cin)) ** 0.5
        sd[f"features.{idx}.bias"] = torch.randn(v, generator=g) * 0.05
        idx, cin = idx + 2, v
    sd["classifier.0.weight"] = torch.zeros(8, 4)
    sd["classifier.0.bias"] = torch.zeros(8)
    return sd


def _independent_features(sd, img, upto=("relu1_2", "relu2_2", "relu3_3")):
    """relu1_2, relu2_2, relu3_3 of VGG16 with plain functional ops."""
    h = (img - MEAN.to(img.dtype)) / STD.to(img.dtype)
    outs = {}
    conv = lambda h, i: F.relu(F.conv2d(h, sd[f"features.{i}.weight"].to(h.dtype), sd[f"features.{i}.bias"].to(h.dtype), padding=1))
    h = conv(conv(h, 0), 2)
    outs["relu1_2"] = h
    h = conv(conv(F.max_pool2d(h, 2), 5), 7)
    outs["relu2_2"] = h
    h = conv(conv(conv(F.max_pool2d(h, 2), 10), 12), 14)
    outs["relu3_3"] = h
    return [outs[k] for k in upto]


@pytest.fixture(scope="module")
def vgg_checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("weights") / "vgg16-397923af.pth"
    torch.save(_torchvision_vgg16_state_dict(), path)
    return path


LAYERS = ("relu1_2", "relu2_2", "relu3_3")


def _images(b=2, h=32, w=32, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, 3, h, w, generator=g, dtype=dtype)


def _expected(sd, x, y, p=1, weights=(1.0, 1.0, 1.0), normalize=False):
    total = 0
    for w, fx, fy in zip(weights, _independent_features(sd, x), _independent_features(sd, y)):
        if normalize:
            fx, fy = reference.normalize_channels(fx), reference.normalize_channels(fy)
        total = total + w * reference.wasserstein_1d(fx.flatten(2), fy.flatten(2), p).mean(1)
    return total


@pytest.mark.parametrize("p", [1, 2])
def test_value_matches_independent_vgg(vgg_checkpoint, p):
    sd = torch.load(vgg_checkpoint, weights_only=True)
    x, y = _images(seed=1), _images(h=24, w=40, seed=2)  # different sizes: N != M
    loss = PDLLoss(layers=LAYERS, weights=vgg_checkpoint, p=p, reduction="none").double()
    torch.testing.assert_close(loss(x, y), _expected(sd, x, y, p))
    weighted = PDLLoss(layers=LAYERS, layer_weights=(1.0, 0.5, 2.0), weights=vgg_checkpoint, p=p).double()
    torch.testing.assert_close(weighted(x, y), _expected(sd, x, y, p, (1.0, 0.5, 2.0)).mean())


def test_normalize_pixel_loss_and_input_range(vgg_checkpoint):
    sd = torch.load(vgg_checkpoint, weights_only=True)
    x, y = _images(seed=3), _images(seed=4)
    loss = PDLLoss(layers=LAYERS, weights=vgg_checkpoint, normalize=True, pixel_loss="l1", pixel_weight=0.5,
                   input_range=(-1, 1), reduction="sum").double()
    got = loss(x * 2 - 1, y * 2 - 1)
    want = (_expected(sd, x, y, normalize=True) + 0.5 * (x - y).abs().flatten(1).mean(1)).sum()
    torch.testing.assert_close(got, want)


def test_functional_matches_module(vgg_checkpoint):
    x, y = _images(seed=5, dtype=torch.float32), _images(seed=6, dtype=torch.float32)
    module = PDLLoss(layers=LAYERS, weights=vgg_checkpoint)
    torch.testing.assert_close(pdl_loss(x, y, layers=LAYERS, weights=vgg_checkpoint), module(x, y))


def test_gradients_reach_the_output_only(vgg_checkpoint):
    loss = PDLLoss(layers=LAYERS, weights=vgg_checkpoint)
    x = _images(seed=7, dtype=torch.float32).requires_grad_(True)
    y = _images(seed=8, dtype=torch.float32).requires_grad_(True)
    loss(x, y).backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert y.grad is None
    assert all(not q.requires_grad and q.grad is None for q in loss.parameters())


def test_backbone_stays_frozen_and_moves(vgg_checkpoint):
    loss = PDLLoss(layers=("relu1_2",), weights=vgg_checkpoint)
    loss.train()
    assert not loss.backbone.training and loss.training
    loss = loss.to(torch.float64)
    x, y = _images(seed=9), _images(seed=10)
    assert loss(x, y).dtype == torch.float64


def test_custom_backbone_module_and_callable():
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())
    x, y = _images(seed=11, dtype=torch.float32), _images(seed=12, dtype=torch.float32)
    with torch.no_grad():
        want = reference.wasserstein_1d(net(x).flatten(2), net(y).flatten(2), 1).mean(1).mean()
    loss = PDLLoss(backbone=lambda t: [net(t)])
    torch.testing.assert_close(loss(x, y), want)
    loss2 = PDLLoss(backbone=nn.Sequential(net))
    torch.testing.assert_close(loss2(x, y), want)
    assert not any(q.requires_grad for q in net.parameters())


def test_sliced_directions_fixed_until_resampled():
    loss = PDLLoss(layers=("relu1_2",), pretrained=False, projection=8)
    x, y = _images(seed=13, dtype=torch.float32), _images(seed=14, dtype=torch.float32)
    a, b = loss(x, y), loss(x, y)
    assert torch.equal(a, b)
    loss.resample_directions()
    assert not torch.equal(a, loss(x, y))


def test_autocast_bfloat16_cpu(vgg_checkpoint):
    loss = PDLLoss(layers=LAYERS, weights=vgg_checkpoint)
    x = _images(seed=15, dtype=torch.float32).requires_grad_(True)
    y = _images(seed=16, dtype=torch.float32)
    want = loss(x, y)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = loss(x, y)
    got.backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    torch.testing.assert_close(got.float(), want.detach(), rtol=5e-2, atol=1e-3)


def test_torch_compile_fullgraph(vgg_checkpoint):
    torch._dynamo.reset()
    loss = PDLLoss(layers=("relu1_2", "relu2_2"), weights=vgg_checkpoint, check_range=False)
    compiled = torch.compile(loss, fullgraph=True, backend="aot_eager")
    x = _images(seed=17, dtype=torch.float32).requires_grad_(True)
    y = _images(seed=18, dtype=torch.float32)
    got = compiled(x, y)
    got.backward()
    x2 = x.detach().clone().requires_grad_(True)
    want = loss(x2, y)
    want.backward()
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(x.grad, x2.grad)


@pytest.mark.parametrize(
    "x,y,kwargs,match",
    [
        (torch.rand(3, 32, 32), torch.rand(3, 32, 32), {}, r"x must be an image batch \(B, C, H, W\), got shape \(3, 32, 32\)"),
        (torch.rand(2, 3, 32, 32), torch.rand(3, 3, 32, 32), {}, "same batch size, got 2 and 3"),
        (torch.rand(2, 3, 32, 32), torch.rand(2, 1, 32, 32), {}, "same channel count"),
        (torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32) * 255, {}, r"y values must lie in input_range \(0.0, 1.0\)"),
        (torch.rand(2, 1, 32, 32), torch.rand(2, 1, 32, 32), {}, r"VGGFeatures: x must be \(B, 3, H, W\)"),
    ],
)
def test_bad_input_errors(x, y, kwargs, match):
    loss = PDLLoss(layers=("relu1_2",), pretrained=False, **kwargs)
    with pytest.raises(ValueError, match=match):
        loss(x, y)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(p=3), "p must be 1 or 2"),
        (dict(reduction="avg"), "reduction must be"),
        (dict(projection="rows"), "projection must be"),
        (dict(pixel_loss="l3"), "pixel_loss must be"),
        (dict(input_range=(1, 0)), "input_range must be"),
        (dict(backbone="resnet"), "backbone must be"),
        (dict(layer_weights=(1.0, 2.0)), r"one weight per layer \(1\), got 2"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        PDLLoss(**{"layers": ("relu1_2",), "pretrained": False, **kwargs})


def test_missing_weights_error_says_where_it_looked(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    with pytest.raises(FileNotFoundError, match="vgg16-397923af.pth"):
        PDLLoss(layers=("relu1_2",))


# ----------------------------------------------------------------------------------------------
# DDP: two gloo processes on half batches give the gradients of one process on the whole batch.


def _tiny_net(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 3, 3, padding=1))


def _loss_fn():
    torch.manual_seed(123)
    feat = nn.Sequential(nn.Conv2d(3, 6, 3), nn.ReLU())
    return PDLLoss(backbone=lambda t: [feat(t)], check_range=False)


def _ddp_worker(rank, world, x, y, out):
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    model = DDP(_tiny_net())
    loss = _loss_fn()
    half = x.shape[0] // world
    sl = slice(rank * half, (rank + 1) * half)
    loss(model(x[sl]), y[sl]).backward()
    if rank == 0:
        torch.save([q.grad for q in model.module.parameters()], out)
    dist.destroy_process_group()


def test_ddp_two_processes_match_one(tmp_path, ddp_spawn):
    x, y = _images(4, 16, 16, seed=20, dtype=torch.float32), _images(4, 16, 16, seed=21, dtype=torch.float32)
    out = tmp_path / "grads.pt"
    ddp_spawn(_ddp_worker, x, y, str(out))
    ddp_grads = torch.load(out, weights_only=True)
    model = _tiny_net()
    _loss_fn()(model(x), y).backward()
    for got, want in zip(ddp_grads, [q.grad for q in model.parameters()]):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)


def test_functional_pdl_loss_builds_the_loss_once(monkeypatch):
    # A training loop calls the functional form every step: it must not rebuild PDLLoss (and its backbone).
    import pdl_ext.functional as F

    built = []

    class Counting(F.PDLLoss):
        def __init__(self, *args, **kwargs):
            built.append(1)
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(F, "PDLLoss", Counting)
    F._cached_loss.cache_clear()
    x, y = torch.rand(1, 3, 16, 16), torch.rand(1, 3, 16, 16)
    values = [F.pdl_loss(x, y, layers=("relu1_2",), pretrained=False, seed=123) for _ in range(3)]
    assert len(built) == 1
    assert torch.equal(values[0], values[2])
    F.pdl_loss(x, y, layers=("relu1_2",), pretrained=False, seed=123, p=2)  # another configuration: a new loss
    assert len(built) == 2
    F._cached_loss.cache_clear()


def test_images_too_small_for_a_final_pool_layer_get_our_error():
    # pool5 halves a 16x16 map a fifth time: the size check must count it (torch's own error before).
    loss = PDLLoss(layers=("pool5",), pretrained=False)
    with pytest.raises(ValueError, match=r"PDLLoss: x must be at least 32x32 for layer pool5"):
        loss(torch.rand(1, 3, 16, 16), torch.rand(1, 3, 16, 16))
    assert loss(torch.rand(1, 3, 32, 32), torch.rand(1, 3, 32, 32)).isfinite()
