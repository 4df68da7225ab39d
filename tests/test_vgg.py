"""VGG16/VGG19 feature extractors: torchvision's layout, checked against a VGG written here with
torch.nn.functional from a checkpoint saved in torchvision's format."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pdl_ext.losses.vgg import VGGFeatures
from pdl_ext.io.weights import save_state_dict

# Written independently of pdl_ext.losses.vgg: torchvision's conv indices in `features` and channels.
CONVS = {
    "vgg16": [(0, 3, 64), (2, 64, 64), (5, 64, 128), (7, 128, 128), (10, 128, 256), (12, 256, 256), (14, 256, 256),
              (17, 256, 512), (19, 512, 512), (21, 512, 512), (24, 512, 512), (26, 512, 512), (28, 512, 512)],
    "vgg19": [(0, 3, 64), (2, 64, 64), (5, 64, 128), (7, 128, 128), (10, 128, 256), (12, 256, 256), (14, 256, 256),
              (16, 256, 256), (19, 256, 512), (21, 512, 512), (23, 512, 512), (25, 512, 512), (28, 512, 512),
              (30, 512, 512), (32, 512, 512), (34, 512, 512)],
}
POOLS = {"vgg16": {4, 9, 16, 23, 30}, "vgg19": {4, 9, 18, 27, 36}}
FILES = {"vgg16": "vgg16-397923af.pth", "vgg19": "vgg19-dcbb9e9d.pth"}
# The layers every perceptual loss uses, by their well-known torchvision indices.
KNOWN = {"vgg16": {"relu1_2": 3, "relu2_2": 8, "relu3_3": 15, "relu4_3": 22, "relu5_3": 29, "pool5": 30},
         "vgg19": {"relu1_2": 3, "relu2_2": 8, "relu3_4": 17, "relu4_4": 26, "relu5_4": 35, "pool5": 36}}


def torchvision_state_dict(arch: str, seed: int = 0) -> dict:
    """Random weights with torchvision's full key set (features.* and classifier.*).

    The classifier tensors are shrunk (the real fc6 alone is 25088x4096, 400 MB): only their keys
    matter here, since the feature extractor must ignore them.
    """
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for i, cin, cout in CONVS[arch]:
        sd[f"features.{i}.weight"] = torch.randn(cout, cin, 3, 3, generator=g) * (2.0 / (9 * cin)) ** 0.5
        sd[f"features.{i}.bias"] = torch.randn(cout, generator=g) * 0.1
    for i in (0, 3, 6):
        sd[f"classifier.{i}.weight"] = torch.randn(4, 4, generator=g)
        sd[f"classifier.{i}.bias"] = torch.randn(4, generator=g)
    return sd


def functional_vgg(sd: dict, arch: str, x: torch.Tensor) -> dict:
    """Every activation of `features` by index, with F.conv2d / F.relu / F.max_pool2d."""
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    h = (x - mean) / std
    convs = {i for i, _, _ in CONVS[arch]}
    out, i = {}, 0
    while i <= max(POOLS[arch]):
        if i in convs:
            h = F.conv2d(h, sd[f"features.{i}.weight"], sd[f"features.{i}.bias"], padding=1)
            out[i] = h
            h = F.relu(h)
            out[i + 1] = h
            i += 2
        else:
            assert i in POOLS[arch]
            h = F.max_pool2d(h, 2)
            out[i] = h
            i += 1
    return out


@pytest.fixture()
def hub(tmp_path, monkeypatch):
    """An empty torch hub directory in tmp_path."""
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    return tmp_path / "hub" / "checkpoints"


@pytest.mark.parametrize("arch", ["vgg16", "vgg19"])
def test_torchvision_checkpoint_from_hub_cache_matches_functional_vgg(hub, arch):
    sd = torchvision_state_dict(arch)
    torch.save(sd, hub / FILES[arch])
    names = list(KNOWN[arch])
    vgg = VGGFeatures(arch, layers=names)  # weights=None: found in the (temporary) hub cache
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    ref = functional_vgg(sd, arch, x)
    feats = vgg(x)
    for name, f in zip(names, feats):
        expected = ref[KNOWN[arch][name]]
        torch.testing.assert_close(f, expected, rtol=1e-4, atol=1e-4 * expected.abs().max().item())
    assert len(vgg.features) == KNOWN[arch]["pool5"] + 1
    assert vgg.out_channels == (64, 128, 256, 512, 512, 512)


def test_every_layer_name_of_vgg16_and_truncation(hub):
    sd = torchvision_state_dict("vgg16", seed=3)
    path = hub.parent / "vgg16.safetensors"
    save_state_dict(sd, path)  # safetensors with torchvision's keys loads too
    ref = functional_vgg(sd, "vgg16", torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(2)))
    x = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    names = []
    for block, n in enumerate([2, 2, 3, 3, 3], 1):
        names += [f"{kind}{block}_{j}" for j in range(1, n + 1) for kind in ("conv", "relu")] + [f"pool{block}"]
    vgg = VGGFeatures("vgg16", layers=names, weights=path)
    for index, (name, f) in enumerate(zip(names, vgg(x))):
        torch.testing.assert_close(f, ref[index], rtol=1e-4, atol=1e-4 * ref[index].abs().max().item(), msg=name)
    short = VGGFeatures("vgg16", layers=("relu2_2", "relu1_2"), weights=path)
    assert len(short.features) == 9  # cut after features[8] = relu2_2
    f22, f12 = short(x)
    torch.testing.assert_close(f12, ref[3], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(f22, ref[8], rtol=1e-4, atol=1e-5)


def test_iter_features_yields_in_depth_order_lazily(hub):
    torch.save(torchvision_state_dict("vgg16"), hub / FILES["vgg16"])
    vgg = VGGFeatures("vgg16", layers=("relu3_3", "relu1_2", "relu2_2"))
    assert vgg.depth_layers == ("relu1_2", "relu2_2", "relu3_3")
    x = torch.rand(1, 3, 16, 16)
    gen = vgg.iter_features(x)
    first = next(gen)  # computed before the deeper layers run
    assert first.shape == (1, 64, 16, 16)
    rest = list(gen)
    by_name = dict(zip(vgg.layers, vgg(x)))
    for name, f in zip(vgg.depth_layers, [first] + rest):
        torch.testing.assert_close(f, by_name[name], rtol=0, atol=0)


def test_checkpoint_missing_feature_keys_is_an_error_naming_them(hub):
    sd = torchvision_state_dict("vgg16")
    del sd["features.5.weight"], sd["features.7.bias"]
    torch.save(sd, hub / "broken.pth")
    with pytest.raises(ValueError, match=r"broken\.pth lacks 2 tensor\(s\).*features\.5\.weight.*features\.7\.bias"):
        VGGFeatures("vgg16", layers=("relu2_2",), weights=hub / "broken.pth")
    # layers before the missing ones need nothing more
    VGGFeatures("vgg16", layers=("relu1_2",), weights=hub / "broken.pth")


def test_vgg19_checkpoint_in_vgg16_is_recognised(hub):
    torch.save(torchvision_state_dict("vgg19"), hub / "v19.pth")
    with pytest.raises(ValueError, match="looks like a vgg19 checkpoint"):
        VGGFeatures("vgg16", weights=hub / "v19.pth")


def test_wrong_shapes_are_reported(hub):
    sd = torchvision_state_dict("vgg16")
    sd["features.2.weight"] = torch.zeros(64, 32, 3, 3)
    torch.save(sd, hub / "shape.pth")
    with pytest.raises(ValueError, match=r"features\.2\.weight: expected \(64, 64, 3, 3\), got \(64, 32, 3, 3\)"):
        VGGFeatures("vgg16", layers=("relu1_2",), weights=hub / "shape.pth")


def test_missing_weights_error_says_where_it_looked_and_how_to_provide(hub):
    with pytest.raises(FileNotFoundError) as info:
        VGGFeatures("vgg16")
    msg = str(info.value)
    for part in ("vgg16-397923af.pth", str(hub), "weights=", "download=True", "pretrained=False",
                 "https://download.pytorch.org/models/vgg16-397923af.pth"):
        assert part in msg, part


def test_download_only_when_asked(hub, monkeypatch):
    calls = []
    sd = torchvision_state_dict("vgg19")

    def fake_download(url, **kwargs):
        calls.append((url, kwargs))
        return sd

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", fake_download)
    with pytest.raises(FileNotFoundError):
        VGGFeatures("vgg19", layers=("relu1_2",))
    assert not calls
    vgg = VGGFeatures("vgg19", layers=("relu1_2",), download=True)
    assert calls[0][0] == "https://download.pytorch.org/models/vgg19-dcbb9e9d.pth"
    assert calls[0][1]["weights_only"] is True
    torch.testing.assert_close(vgg.features[0].weight, sd["features.0.weight"])


def test_frozen_eval_and_gradients_reach_the_input():
    vgg = VGGFeatures("vgg16", layers=("relu2_2",), pretrained=False)
    assert not any(p.requires_grad for p in vgg.parameters())
    parent = nn.Sequential(vgg)
    parent.train()
    assert not vgg.training and not any(m.training for m in vgg.modules())
    assert list(vgg.state_dict()) == [f"features.{i}.{k}" for i in (0, 2, 5, 7) for k in ("weight", "bias")]
    x = torch.rand(1, 3, 16, 16, requires_grad=True)
    vgg(x)[0].sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(p.grad is None for p in vgg.parameters())


def test_trainable_when_not_frozen():
    vgg = VGGFeatures("vgg16", layers=("relu1_2",), pretrained=False, frozen=False)
    assert all(p.requires_grad for p in vgg.parameters())
    vgg.train()
    assert vgg.training


def test_random_init_is_torchvision_kaiming():
    torch.manual_seed(0)
    vgg = VGGFeatures("vgg16", layers=("relu5_3",), pretrained=False)
    for m in vgg.features:
        if isinstance(m, nn.Conv2d):
            expected = (2.0 / (m.out_channels * 9)) ** 0.5  # kaiming_normal_, mode="fan_out", relu
            assert abs(m.weight.std().item() / expected - 1) < 0.05
            assert torch.count_nonzero(m.bias) == 0


def test_layer_validation_lists_valid_names():
    with pytest.raises(ValueError, match=r"unknown layer\(s\) \['relu5_4'\] for vgg16; valid layers: conv1_1, relu1_1"):
        VGGFeatures("vgg16", layers=("relu5_4",), pretrained=False)
    VGGFeatures("vgg19", layers=("relu5_4",), pretrained=False)
    with pytest.raises(ValueError, match="arch must be one of"):
        VGGFeatures("vgg11", pretrained=False)
    with pytest.raises(ValueError, match="must not repeat"):
        VGGFeatures("vgg16", layers=("relu1_2", "relu1_2"), pretrained=False)
    with pytest.raises(ValueError, match="pretrained=False.*weights="):
        VGGFeatures("vgg16", weights="x.pth", pretrained=False)


def test_input_validation():
    vgg = VGGFeatures("vgg16", layers=("relu1_2",), pretrained=False)
    with pytest.raises(ValueError, match=r"VGGFeatures: x must be \(B, 3, H, W\) RGB in \[0, 1\], got shape \(1, 1, 8, 8\)"):
        vgg(torch.rand(1, 1, 8, 8))
    with pytest.raises(ValueError, match=r"got shape \(3, 8, 8\)"):
        vgg(torch.rand(3, 8, 8))
    with pytest.raises(TypeError, match="x must be float16, bfloat16, float32 or float64"):
        vgg(torch.zeros(1, 3, 8, 8, dtype=torch.uint8))


def test_dtype_moves_and_autocast():
    vgg = VGGFeatures("vgg16", layers=("relu1_2", "relu2_2"), pretrained=False)
    x = torch.rand(1, 3, 16, 16)
    ref = vgg(x)
    vgg64 = vgg.to(torch.float64)
    for a, b in zip(vgg64(x.double()), ref):
        torch.testing.assert_close(a.float(), b, rtol=1e-4, atol=1e-5)
    vgg.float()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = vgg(x)
    assert low[0].dtype == torch.bfloat16
    for a, b in zip(low, ref):
        assert (a.float() - b).abs().max() <= 0.05 * b.abs().max()
