"""Inputs that used to be mishandled: weights applied to the wrong layers, NIMA on too small images,
crafted weight files that hang the converter (a huge error message), inflate gigabytes (zip bombs) or
recurse without end (modules containing themselves, deep nesting).

Expected values come from computations written here (VGG layers run one module at a time, W_1 by
sorting, the smallest side that torch's pooling accepts), never from the code under test.
"""
from __future__ import annotations

import io
import os
import pickle
import struct
import subprocess
import sys
import textwrap
import time
import zipfile
from pathlib import Path

import pytest
import torch
from torch import nn

import pdl_ext.io.weights as weights_module
from pdl_ext.io.mdf_pickle import UnsafePickleError, convert_mdf
from pdl_ext.io.weights import load_state_dict
from pdl_ext.losses.mdf import MDFDiscriminator
from pdl_ext.losses.nima import NIMA
from pdl_ext.losses.pdl import PDLLoss
from pdl_ext.losses.vgg import VGGFeatures

ROOT = Path(__file__).resolve().parents[1]
MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


# ---------------------------------------------------------------------------------------------
# 1. layer_weights follow the layer names
# ---------------------------------------------------------------------------------------------
def _maps_by_name(features: nn.Sequential, img: torch.Tensor, indices: dict) -> dict:
    """Runs torchvision's `features` one module at a time; the output after module i is layer i's."""
    h = (img - MEAN.to(img.dtype)) / STD.to(img.dtype)
    out = {}
    for i, module in enumerate(features):
        h = module(h)
        for name, index in indices.items():
            if index == i:
                out[name] = h
    return out


def _w1_spatial(fx: torch.Tensor, fy: torch.Tensor) -> torch.Tensor:
    """Per sample: mean over channels of W_1 between the spatial distributions (equal sizes: sort and match)."""
    a = fx.flatten(2).sort(-1).values
    b = fy.flatten(2).sort(-1).values
    return (a - b).abs().mean(-1).mean(-1)


# torchvision's indices in `features` (conv i_j, relu i_j = conv + 1; pool after each block)
_INDICES = {
    "vgg16": {"relu1_2": 3, "relu2_2": 8, "relu3_3": 15, "conv4_1": 17},
    "vgg19": {"relu1_2": 3, "relu2_2": 8, "relu3_3": 15, "conv4_1": 19},
}


@pytest.mark.parametrize("arch", ["vgg16", "vgg19"])
@pytest.mark.parametrize("as_module", [False, True], ids=["by name", "VGGFeatures module"])
def test_layer_weights_follow_the_layer_names(arch, as_module):
    layers = ("conv4_1", "relu1_2", "relu3_3", "relu2_2")  # not in depth order
    weights = (0.5, 2.0, 0.0, 3.0)
    torch.manual_seed(0)
    if as_module:
        backbone = VGGFeatures(arch, layers=layers, pretrained=False)
        loss = PDLLoss(backbone, layer_weights=weights).double()
    else:
        loss = PDLLoss(arch, layers=layers, layer_weights=weights, pretrained=False).double()
    g = torch.Generator().manual_seed(1)
    x = torch.rand(2, 3, 32, 32, generator=g, dtype=torch.float64)
    y = torch.rand(2, 3, 32, 32, generator=g, dtype=torch.float64)
    with torch.no_grad():
        fx = _maps_by_name(loss.backbone.features, x, _INDICES[arch])
        fy = _maps_by_name(loss.backbone.features, y, _INDICES[arch])
    terms = {name: _w1_spatial(fx[name], fy[name]) for name in layers}
    expected = sum(w * terms[name] for name, w in zip(layers, weights)).mean()
    torch.testing.assert_close(loss(x, y), expected, rtol=1e-10, atol=1e-12)
    # one weight on, the others off: exactly that layer's term (relu3_3 listed third, computed third)
    only = PDLLoss(arch, layers=("relu3_3", "relu1_2"), layer_weights=(1, 0), pretrained=False).double()
    only.backbone.features.load_state_dict(loss.backbone.features[: len(only.backbone.features)].state_dict())
    torch.testing.assert_close(only(x, y), terms["relu3_3"].mean(), rtol=1e-10, atol=1e-12)


# ---------------------------------------------------------------------------------------------
# 6. NIMA says the smallest image size its VGG backbone takes
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("arch", ["vgg16", "vgg19"])
def test_nima_refuses_images_smaller_than_its_vgg_backbone_takes(arch):
    nima = NIMA(arch, pretrained_backbone=False).eval()
    # the oracle: the smallest side torch's own layers accept, found by trying them
    features = nima.backbone.features
    smallest = next(s for s in range(1, 65) if _runs(features, s))
    assert not _runs(features, smallest - 1)
    with torch.no_grad():
        assert nima(torch.rand(1, 3, smallest, smallest + 7)).shape == (1, 10)
        for shape in ((smallest - 1, smallest), (smallest, smallest - 1), (8, 8)):
            with pytest.raises(ValueError) as info:
                nima(torch.rand(1, 3, *shape))
            assert str(info.value) == (f"NIMA: x must be at least {smallest}x{smallest} for the {arch} backbone "
                                       f"(its max-pools), got {shape}")


def _runs(features: nn.Module, side: int) -> bool:
    try:
        with torch.no_grad():
            features(torch.zeros(1, 3, side, side))
        return True
    except RuntimeError:
        return False


def test_nima_with_a_custom_backbone_leaves_small_images_to_it():
    nima = NIMA(nn.Sequential(nn.Conv2d(3, 8, 5), nn.ReLU()), dropout=0.0)
    with pytest.raises(RuntimeError):  # the backbone's own error, not a guessed minimum
        nima(torch.rand(1, 3, 4, 4))
    assert nima(torch.rand(1, 3, 5, 5)).shape == (1, 10)


# ---------------------------------------------------------------------------------------------
# Crafted archives
# ---------------------------------------------------------------------------------------------
def _torch_zip(path: Path, pickle_bytes: bytes, entries: dict = None, compression=zipfile.ZIP_STORED) -> Path:
    """A torch.save-style zip: archive/data.pkl, archive/version and the given archive/... entries."""
    with zipfile.ZipFile(path, "w", compression) as zf:
        zf.writestr("archive/data.pkl", pickle_bytes)
        zf.writestr("archive/version", "3\n")
        for name, data in (entries or {}).items():
            zf.writestr(f"archive/{name}", data)
    return path


_CONVERT_IN_A_PROCESS = textwrap.dedent("""
    import sys, time
    from pdl_ext.io.mdf_pickle import convert_mdf
    t0 = time.perf_counter()
    try:
        convert_mdf(sys.argv[1], sys.argv[2])
    except ValueError as e:
        print(f"{time.perf_counter() - t0:.3f}")
        print(type(e).__name__, len(str(e)))
        print(str(e)[:2000])
        sys.exit(0)
    sys.exit(4)
""")


def _convert_in_a_process(src: Path, dst: Path, timeout: float = 240):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    run = subprocess.run([sys.executable, "-c", _CONVERT_IN_A_PROCESS, str(src), str(dst)],
                         capture_output=True, text=True, env=env, timeout=timeout)
    assert run.returncode == 0, run.stdout + run.stderr
    seconds, kind_and_length, message = run.stdout.split("\n", 2)
    return float(seconds), int(kind_and_length.split()[1]), message.strip()


# ---------------------------------------------------------------------------------------------
# 2. A record that would take forever to print
# ---------------------------------------------------------------------------------------------
def test_convert_mdf_names_a_self_sharing_record_in_bounded_time(tmp_path):
    a = []
    for _ in range(40):  # 2^40 leaves when printed in full, 41 lists in the file
        a = [a, a]
    path = _torch_zip(tmp_path / "shared.pth", pickle.dumps(a, protocol=2))
    assert path.stat().st_size < 1000
    seconds, length, message = _convert_in_a_process(path, tmp_path / "out.safetensors", timeout=120)
    assert seconds < 5, f"the refusal took {seconds:.1f} s"
    assert "shared.pth" in message and "where a pickled module goes" in message
    assert length < 1000
    assert not (tmp_path / "out.safetensors").exists()


def test_messages_quote_what_the_file_holds_in_bounded_form(tmp_path):
    # the same structure as a dict key's neighbour through load_state_dict, and a huge key name
    a = []
    for _ in range(40):
        a = [a, a]
    torch.save({"x" * 100_000: a}, tmp_path / "nokeys.pth")
    t0 = time.perf_counter()
    with pytest.raises(ValueError, match="nokeys.pth holds no tensors") as info:
        load_state_dict(tmp_path / "nokeys.pth")
    assert time.perf_counter() - t0 < 5 and len(str(info.value)) < 1000


# ---------------------------------------------------------------------------------------------
# 3. Zip bombs
# ---------------------------------------------------------------------------------------------
BOMB_BYTES = 32 << 20  # 32 MiB of zeros deflate to about 32 KiB


@pytest.fixture(scope="module")
def deflated_bomb(tmp_path_factory) -> Path:
    """A real torch.save archive of 32 MiB of zeros, re-zipped with deflate: ~1000x inflation."""
    d = tmp_path_factory.mktemp("bomb")
    torch.save({"w": torch.zeros(BOMB_BYTES // 4)}, d / "plain.pth")
    with zipfile.ZipFile(d / "plain.pth") as zin, zipfile.ZipFile(d / "bomb.pth", "w", zipfile.ZIP_DEFLATED) as zout:
        for info in zin.infolist():
            zout.writestr(info.filename, zin.read(info.filename))
    assert (d / "bomb.pth").stat().st_size < 100_000
    return d / "bomb.pth"


@pytest.fixture
def no_torch_load(monkeypatch):
    """Fails the test if torch.load is reached: the archive must be refused before torch inflates it."""
    def refuse(*args, **kwargs):
        pytest.fail("torch.load was called on a zip bomb")

    monkeypatch.setattr(torch, "load", refuse)


_BOMB_LOADERS = {
    "load_state_dict": load_state_dict,
    "VGGFeatures": lambda p: VGGFeatures("vgg16", layers=("relu1_2",), weights=p),
    "PDLLoss": lambda p: PDLLoss(layers=("relu1_2",), weights=p),
    "NIMA": lambda p: NIMA(nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU()), dropout=0.0, weights=p),
}


@pytest.mark.parametrize("loader", list(_BOMB_LOADERS))
def test_zip_bombs_are_refused_before_torch_load(deflated_bomb, loader, no_torch_load):
    with pytest.raises(ValueError) as info:
        _BOMB_LOADERS[loader](deflated_bomb)
    text = str(info.value)
    assert str(deflated_bomb) in text
    total = sum(i.file_size for i in zipfile.ZipFile(deflated_bomb).infolist())
    assert f"inflates to {total} bytes" in text and f"archive of {deflated_bomb.stat().st_size} bytes" in text
    assert "zip bomb" in text


def test_the_absolute_cap_holds_for_uncompressed_archives(tmp_path, monkeypatch):
    torch.save({"w": torch.ones(1 << 19)}, tmp_path / "two_mib.pth")  # stored: inflates 1:1
    assert load_state_dict(tmp_path / "two_mib.pth")["w"].sum() == 1 << 19
    monkeypatch.setattr(weights_module, "MAX_ARCHIVE_BYTES", 1 << 20)
    with pytest.raises(ValueError, match=r"two_mib\.pth inflates to \d+ bytes .*more than the 1048576 bytes"):
        load_state_dict(tmp_path / "two_mib.pth")


def test_compressed_checkpoints_within_the_ratio_still_load(tmp_path):
    state = {"w": torch.randn(5000), "b": torch.zeros(10)}
    torch.save(state, tmp_path / "plain.pth")
    with zipfile.ZipFile(tmp_path / "plain.pth") as zin, \
            zipfile.ZipFile(tmp_path / "deflated.pth", "w", zipfile.ZIP_DEFLATED) as zout:
        for info in zin.infolist():
            zout.writestr(info.filename, zin.read(info.filename))
    back = load_state_dict(tmp_path / "deflated.pth")
    assert all(torch.equal(back[k], v) for k, v in state.items())


class _Inflated:
    """Counts the bytes zipfile inflates (ZipExtFile.read) while active."""

    def __init__(self, monkeypatch):
        self.bytes = 0
        original = zipfile.ZipExtFile.read

        def read(f, n=-1):
            data = original(f, n)
            self.bytes += len(data)
            return data

        monkeypatch.setattr(zipfile.ZipExtFile, "read", read)


def test_convert_mdf_refuses_a_zip_bomb_without_inflating_it(deflated_bomb, tmp_path, monkeypatch):
    inflated = _Inflated(monkeypatch)
    with pytest.raises(ValueError, match=r"convert_mdf: '.*bomb\.pth' inflates to \d+ bytes .*zip bomb"):
        convert_mdf(deflated_bomb, tmp_path / "out.safetensors")
    assert inflated.bytes == 0
    assert not (tmp_path / "out.safetensors").exists()


class _StorageRef:
    pass


class _Rebuild:
    def __reduce__(self):
        return (torch._utils._rebuild_tensor_v2, (_StorageRef(), 0, (4,), (1,), False, {}))


class _ArchivePickler(pickle.Pickler):
    def persistent_id(self, obj):
        return ("storage", torch.FloatStorage, "0", "cpu", 4) if isinstance(obj, _StorageRef) else None


def test_convert_mdf_inflates_no_more_than_the_pickle_declares(tmp_path, monkeypatch):
    # The pickle declares storage '0' as 4 floats (16 bytes); its entry inflates to 32 MiB. With the
    # archive-wide cap lifted, the per-storage check must still refuse it, reading at most 17 bytes.
    buf = io.BytesIO()
    _ArchivePickler(buf, protocol=2).dump({"0.head.conv.weight": _Rebuild()})
    path = _torch_zip(tmp_path / "lying.pth", buf.getvalue(), {"data/0": b"\0" * BOMB_BYTES, "byteorder": "little"},
                      compression=zipfile.ZIP_DEFLATED)
    monkeypatch.setattr(weights_module, "MAX_INFLATION", 10**6)
    inflated = _Inflated(monkeypatch)
    with pytest.raises(ValueError) as info:
        convert_mdf(path, tmp_path / "out.safetensors")
    assert str(info.value).startswith(f"convert_mdf: '{path}' has a storage '0' declared as 4 x torch.float32 "
                                      f"of {BOMB_BYTES} bytes once inflated")
    assert "more than the 16 it may hold" in str(info.value)
    assert inflated.bytes < 4096  # the pickle and the byteorder record only


# ---------------------------------------------------------------------------------------------
# 4. Recursion, and UnsafePickleError is a ValueError naming the file
# ---------------------------------------------------------------------------------------------
def _op_put(i: int) -> bytes:
    return b"r" + struct.pack("<I", i)  # LONG_BINPUT


def _op_get(i: int) -> bytes:
    return b"j" + struct.pack("<I", i)  # LONG_BINGET


def _op_str(s: str) -> bytes:
    data = s.encode()
    return b"X" + struct.pack("<I", len(data)) + data  # BINUNICODE


def _module_chain(depth: int, loop: bool = False) -> bytes:
    """A protocol-2 pickle of [m0] where m_i._modules == {"0": m_{i+1}}, built without recursion
    (pickle.dumps itself cannot nest 3000 levels). With ``loop`` the last module contains the first."""
    out = bytearray(b"\x80\x02")
    for i in range(depth):  # the modules, memoised: SinGAN.models.WDiscriminator.__new__ via NEWOBJ
        out += b"cSinGAN.models\nWDiscriminator\n)\x81" + _op_put(i) + b"0"
    for i in range(depth):  # then each one's state: BUILD with {"_modules": {"0": child}}
        child = _op_get(i + 1) if i + 1 < depth else (_op_get(0) if loop else b"N")
        out += _op_get(i) + b"}" + _op_str("_modules") + b"}" + _op_str("0") + child + b"ssb0"
    out += b"]" + _op_get(0) + b"a."
    return bytes(out)


def test_the_crafted_module_chain_is_what_it_claims():
    # a pickle-level check of the helper: the standard unpickler with stand-in classes sees the chain
    class Module:
        def __setstate__(self, state):
            self.__dict__.update(state)

    class Finder(pickle.Unpickler):
        def find_class(self, module, name):
            return Module

    root = Finder(io.BytesIO(_module_chain(5))).load()
    depth, m = 0, root[0]
    while m is not None:
        depth, m = depth + 1, m._modules["0"]
    assert depth == 5
    looped = Finder(io.BytesIO(_module_chain(3, loop=True))).load()[0]
    assert looped._modules["0"]._modules["0"]._modules["0"] is looped


@pytest.mark.parametrize("case", ["contains itself", "a loop of 3", "3000 levels"])
def test_convert_mdf_refuses_recursive_modules_naming_the_file(tmp_path, case):
    depth, loop = {"contains itself": (1, True), "a loop of 3": (3, True), "3000 levels": (3000, False)}[case]
    path = _torch_zip(tmp_path / "deep.pth", _module_chain(depth, loop))
    with pytest.raises(ValueError) as info:
        convert_mdf(path, tmp_path / "out.safetensors")
    assert type(info.value) is ValueError and f"'{path}'" in str(info.value)
    assert ("contains itself" if loop else "nests modules more than") in str(info.value)
    assert not (tmp_path / "out.safetensors").exists()


def test_a_real_module_containing_itself(tmp_path):
    m = MDFDiscriminator(4)
    m._modules["loop"] = m  # torch.save pickles the cycle through its memo
    torch.save([m], tmp_path / "loop.pth")
    with pytest.raises(ValueError, match=r"convert_mdf: '.*loop\.pth' holds a module that contains itself \(at 0\.loop\)"):
        convert_mdf(tmp_path / "loop.pth", tmp_path / "out.safetensors")


@pytest.mark.parametrize("loader", ["convert_mdf", "load_state_dict"])
def test_deeply_nested_containers_are_refused_naming_the_file(tmp_path, loader):
    nested = b"\x80\x02" + b"]" * 3000 + b"a" * 2999 + b"."  # [[[...]]] 3000 levels
    assert pickle.loads(nested) is not None  # the standard unpickler reads it (no recursion there)
    path = _torch_zip(tmp_path / "nested.pth", nested)
    with pytest.raises(ValueError) as info:
        if loader == "convert_mdf":
            convert_mdf(path, tmp_path / "out.safetensors")
        else:
            load_state_dict(path)
    assert "nested.pth" in str(info.value) and len(str(info.value)) < 1000


def test_unsafe_pickles_raise_a_value_error_naming_the_file(tmp_path):
    class Calls:
        def __reduce__(self):
            return (os.getcwd, ())

    torch.save([Calls()], tmp_path / "calls.pth")
    with pytest.raises(ValueError) as info:
        convert_mdf(tmp_path / "calls.pth", tmp_path / "out.safetensors")
    assert isinstance(info.value, UnsafePickleError) and isinstance(info.value, pickle.UnpicklingError)
    expected = (f"convert_mdf: '{tmp_path / 'calls.pth'}': refusing to call {os.getcwd.__module__}.getcwd from the "
                f"pickle (only tensor rebuilds may run)")
    assert str(info.value) == expected
