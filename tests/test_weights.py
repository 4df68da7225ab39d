"""Safe weight loading: formats, wrappers, and the errors for missing, truncated or unsafe files."""
from __future__ import annotations

import os
import struct

import pytest
import torch

from pdl_ext.io.weights import find_in_hub_cache, load_state_dict, save_state_dict


class NotATensor:  # a pickled object that weights_only=True must refuse to build
    def __init__(self) -> None:
        self.payload = 42


def _sd() -> dict:
    g = torch.Generator().manual_seed(0)
    return {"conv.weight": torch.randn(4, 3, 3, 3, generator=g), "conv.bias": torch.randn(4, generator=g),
            "steps": torch.tensor(7)}


def _assert_same(a: dict, b: dict) -> None:
    assert set(a) == set(b)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)


def test_safetensors_roundtrip_with_shared_storage(tmp_path):
    base = torch.arange(12.0)
    sd = {"a": base, "view": base[2:6], "t": base.view(3, 4).t()}  # shared and non-contiguous
    path = save_state_dict(sd, tmp_path / "sub" / "w.safetensors", metadata={"epoch": 3})
    loaded = load_state_dict(path)
    _assert_same({k: v.contiguous() for k, v in sd.items()}, loaded)
    assert os.listdir(tmp_path / "sub") == ["w.safetensors"]  # no temporary file left behind
    umask = os.umask(0)
    os.umask(umask)
    assert (path.stat().st_mode & 0o777) == (0o666 & ~umask)  # ordinary permissions, not mkstemp's 0600

    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        assert f.metadata() == {"epoch": "3"}


@pytest.mark.parametrize("wrap", [None, "state_dict", "model", "nested"])
def test_pth_wrappers_are_unwrapped(tmp_path, wrap):
    sd = _sd()
    obj = {None: sd, "state_dict": {"state_dict": sd, "epoch": 3, "lr": 0.1},
           "model": {"model": sd, "optimizer": {"lr": 0.1}}, "nested": {"model": {"state_dict": sd}}}[wrap]
    torch.save(obj, tmp_path / "w.pth")
    _assert_same(sd, load_state_dict(tmp_path / "w.pth"))


def test_ddp_module_prefix_is_removed_and_legacy_format_loads(tmp_path):
    sd = _sd()
    torch.save({f"module.{k}": v for k, v in sd.items()}, tmp_path / "w.pt", _use_new_zipfile_serialization=False)
    _assert_same(sd, load_state_dict(tmp_path / "w.pt"))


def test_unknown_suffix_is_sniffed(tmp_path):
    sd = _sd()
    save_state_dict(sd, tmp_path / "a.safetensors")
    os.replace(tmp_path / "a.safetensors", tmp_path / "a.weights")
    torch.save(sd, tmp_path / "b.weights")
    _assert_same(sd, load_state_dict(tmp_path / "a.weights"))
    _assert_same(sd, load_state_dict(tmp_path / "b.weights"))
    (tmp_path / "c.weights").write_bytes(b"hello world, not weights")
    with pytest.raises(ValueError, match=r"c\.weights.*neither a PyTorch checkpoint nor a safetensors"):
        load_state_dict(tmp_path / "c.weights")


def test_missing_file_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nope\.pth: not found; expected a \.pth/\.pt or \.safetensors"):
        load_state_dict(tmp_path / "nope.pth")
    with pytest.raises(FileNotFoundError, match="a directory"):
        load_state_dict(tmp_path)


def test_truncated_files_are_reported(tmp_path):
    torch.save(_sd(), tmp_path / "full.pth")
    data = (tmp_path / "full.pth").read_bytes()
    (tmp_path / "cut.pth").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"cut\.pth is not a readable PyTorch checkpoint \(truncated"):
        load_state_dict(tmp_path / "cut.pth")

    save_state_dict(_sd(), tmp_path / "full.safetensors")
    data = (tmp_path / "full.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) - 40])
    with pytest.raises(ValueError, match=r"cut\.safetensors is not a readable safetensors file"):
        load_state_dict(tmp_path / "cut.safetensors")


def test_safetensors_with_a_bogus_header_is_reported(tmp_path):
    (tmp_path / "bad.safetensors").write_bytes(struct.pack("<Q", 10**9) + b"{}")
    with pytest.raises(ValueError, match=r"bad\.safetensors"):
        load_state_dict(tmp_path / "bad.safetensors")


def test_pickled_objects_are_refused(tmp_path):
    torch.save({"w": torch.ones(2), "obj": NotATensor()}, tmp_path / "evil.pth")
    with pytest.raises(ValueError, match=r"evil\.pth holds objects other than tensors.*weights_only=True"):
        load_state_dict(tmp_path / "evil.pth")


def test_file_without_tensors_is_reported(tmp_path):
    torch.save({"epoch": 3, "lr": 0.1}, tmp_path / "empty.pth")
    with pytest.raises(ValueError, match=r"empty\.pth holds no tensors"):
        load_state_dict(tmp_path / "empty.pth")
    torch.save([torch.ones(1)], tmp_path / "list.pth")
    with pytest.raises(ValueError, match=r"list\.pth must hold a state dict"):
        load_state_dict(tmp_path / "list.pth")


def test_save_rejects_non_tensors(tmp_path):
    with pytest.raises(TypeError, match=r"save_state_dict: every value must be a torch.Tensor.*'lr'"):
        save_state_dict({"w": torch.ones(1), "lr": 0.1}, tmp_path / "x.safetensors")


def test_find_in_hub_cache(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    assert find_in_hub_cache(["a.pth", "b.pth"]) is None
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    (tmp_path / "hub" / "checkpoints" / "b.pth").write_bytes(b"x")
    assert find_in_hub_cache(["a.pth", "b.pth"]) == tmp_path / "hub" / "checkpoints" / "b.pth"


def test_find_in_hub_cache_follows_torch_home(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(torch.hub, "_hub_dir", None, raising=False)
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    (tmp_path / "hub" / "checkpoints" / "v.pth").write_bytes(b"x")
    assert find_in_hub_cache(["v.pth"]) == tmp_path / "hub" / "checkpoints" / "v.pth"
