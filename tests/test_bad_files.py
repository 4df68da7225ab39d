"""Bad weight files: truncated, of another format, wrongly shaped, of a wrong dtype, or malicious (a
pickle that tries to run code, import a module, or rebuild a tensor outside its storage). Every loader
(pdl_ext.io.weights.load_state_dict, VGGFeatures(weights=...), MDFLoss.from_file, convert-mdf, NIMA
weights) must give a clear error naming the file and run nothing: the marker files must not appear.
"""
from __future__ import annotations

import builtins
import collections
import io
import os
import pickle
import random
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path
from typing import Callable, Dict

import pytest
import torch
from torch import nn

from pdl_ext.apps import cli
from pdl_ext.losses.mdf import MDFDiscriminator, MDFLoss, discriminators_state_dict
from pdl_ext.io.mdf_pickle import UnsafePickleError, convert_mdf
from pdl_ext.losses.nima import NIMA
from pdl_ext.losses.vgg import VGGFeatures
from pdl_ext.io.weights import load_state_dict, save_state_dict

# What a refused file may raise: our ValueError (clear message, naming the file) or FileNotFoundError; the
# converter's UnsafePickleError is a ValueError too (and an UnpicklingError). Never a raw RuntimeError,
# never success.
REFUSED = (ValueError, pickle.UnpicklingError)


# ---------------------------------------------------------------------------------------------
# Payloads: each creates `marker` if any of its code runs
# ---------------------------------------------------------------------------------------------
class _RunsShell:
    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch '{self.marker}'",))


class _Execs:
    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (builtins.exec, (f"open({self.marker!r}, 'w').close()",))


class _OpensForWriting:  # no code string at all: opening the path for writing creates it
    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (builtins.open, (self.marker, "w"))


class _Subprocess:
    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (subprocess.call, (["touch", self.marker],))


PAYLOADS = (_RunsShell, _Execs, _OpensForWriting, _Subprocess)


def _evil_module(tmp_path: Path, monkeypatch) -> str:
    """An importable module whose import creates the marker: a loader must never import what a pickle names."""
    name = f"pdl_evil_{os.getpid()}"
    (tmp_path / "mods").mkdir(exist_ok=True)
    (tmp_path / "mods" / f"{name}.py").write_text(textwrap.dedent(f"""
        open({str(tmp_path / 'marker')!r}, 'w').close()
        class Thing:
            pass
    """))
    monkeypatch.syspath_prepend(str(tmp_path / "mods"))
    return name


def _pickle_naming_module(module: str) -> bytes:
    # protocol 2: GLOBAL module.Thing, then instantiate it with NEWOBJ (no class body runs, but the
    # import would)
    return b"\x80\x02c" + module.encode() + b"\nThing\nq\x00)\x81q\x01."


def _write_evil(path: Path, payload: type, marker: Path, fmt: str) -> Path:
    """A weight-like file carrying `payload`: raw pickle, torch zip archive, or legacy torch.save."""
    obj = {"features.0.weight": torch.zeros(2), "payload": payload(marker)}
    if fmt == "raw":
        path.write_bytes(pickle.dumps(obj, protocol=2))
    else:
        torch.save(obj, path, _use_new_zipfile_serialization=(fmt == "zip"))
    return path


# ---------------------------------------------------------------------------------------------
# Crafted torch.save archives: tensor records pointing outside their storage
# ---------------------------------------------------------------------------------------------
class _StorageRef:
    pass


class _Rebuild:
    """Pickles as torch._utils._rebuild_tensor_v2(storage '0' of 4 floats, offset, size, stride)."""

    def __init__(self, size, stride, offset=0) -> None:
        self.size, self.stride, self.offset = size, stride, offset

    def __reduce__(self):
        return (torch._utils._rebuild_tensor_v2,
                (_StorageRef(), self.offset, self.size, self.stride, False, collections.OrderedDict()))


class _ArchivePickler(pickle.Pickler):
    def persistent_id(self, obj):
        if isinstance(obj, _StorageRef):
            return ("storage", torch.FloatStorage, "0", "cpu", 4)
        return None


def _crafted_archive(path: Path, obj: object) -> Path:
    buf = io.BytesIO()
    _ArchivePickler(buf, protocol=2).dump(obj)
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("archive/data.pkl", buf.getvalue())
        zf.writestr("archive/byteorder", "little")
        zf.writestr("archive/data/0", b"\0" * 16)
        zf.writestr("archive/version", "3\n")
    return path


# ---------------------------------------------------------------------------------------------
# Good files to spoil
# ---------------------------------------------------------------------------------------------
def _vgg_state() -> Dict[str, torch.Tensor]:
    feats = VGGFeatures("vgg16", layers=("relu1_2",), pretrained=False)
    return {f"features.{k}": v for k, v in feats.features.state_dict().items()}


def _mdf_state() -> Dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return discriminators_state_dict([MDFDiscriminator(32).eval() for _ in range(2)])


def _tiny_nima() -> NIMA:
    return NIMA(nn.Sequential(nn.Conv2d(3, 8, 3, stride=2), nn.ReLU()), dropout=0.0)


def _truncations(data: bytes):
    return {"empty": b"", "10 bytes": data[:10], "half": data[: len(data) // 2], "all but 1 byte": data[:-1]}


LOADERS: Dict[str, Callable[[Path], object]] = {
    "load_state_dict": load_state_dict,
    "VGGFeatures": lambda p: VGGFeatures("vgg16", layers=("relu1_2",), weights=p),
    "NIMA": lambda p: NIMA(nn.Sequential(nn.Conv2d(3, 8, 3, stride=2), nn.ReLU()), dropout=0.0, weights=p),
    "MDFLoss.from_file": lambda p: MDFLoss.from_file(p, num_scales=1),
    "convert_mdf": lambda p: convert_mdf(p, Path(str(p) + ".out.safetensors")),
}


# ---------------------------------------------------------------------------------------------
# Malicious files
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("loader", list(LOADERS))
@pytest.mark.parametrize("fmt", ["zip", "legacy", "raw"])
@pytest.mark.parametrize("payload", PAYLOADS, ids=lambda c: c.__name__.strip("_"))
def test_pickles_that_run_code_are_refused_and_run_nothing(tmp_path, loader, fmt, payload):
    marker = tmp_path / "marker"
    evil = _write_evil(tmp_path / "evil.pth", payload, marker, fmt)
    with pytest.raises(REFUSED) as info:
        LOADERS[loader](evil)
    assert not marker.exists(), f"{loader} ran code from a {fmt} pickle"
    assert isinstance(info.value, ValueError) and "evil.pth" in str(info.value)  # every loader names the file
    if loader == "convert_mdf":  # the converter also says what it refused to call
        assert isinstance(info.value, UnsafePickleError) and "refusing to call" in str(info.value)
    assert not Path(str(evil) + ".out.safetensors").exists()


@pytest.mark.parametrize("loader", list(LOADERS))
@pytest.mark.parametrize("container", ["raw", "zip"])
def test_pickles_naming_a_module_do_not_import_it(tmp_path, monkeypatch, loader, container):
    module = _evil_module(tmp_path, monkeypatch)
    evil = tmp_path / "evil.pth"
    data = _pickle_naming_module(module)
    if container == "raw":
        evil.write_bytes(data)
    else:
        with zipfile.ZipFile(evil, "w") as zf:
            zf.writestr("archive/data.pkl", data)
            zf.writestr("archive/version", "3\n")
    with pytest.raises(REFUSED):
        LOADERS[loader](evil)
    assert module not in sys.modules and not (tmp_path / "marker").exists()


def test_convert_mdf_cli_refuses_code_inside_a_discriminator_list(tmp_path, capsys):
    # A real-looking published file (a torch.save-d list of discriminator modules), one of which
    # carries a payload in its state.
    marker = tmp_path / "marker"
    ds = [MDFDiscriminator(32).eval() for _ in range(2)]
    ds[1].payload = _Execs(marker)
    torch.save(ds, tmp_path / "Ds_evil.pth")
    out = tmp_path / "out.safetensors"
    assert cli.main(["convert-mdf", str(tmp_path / "Ds_evil.pth"), str(out)]) == 2  # a user error
    err = capsys.readouterr().err
    assert "Ds_evil.pth': refusing to call builtins.exec" in err and len(err.strip().splitlines()) == 1
    assert not marker.exists() and not out.exists()


_CRAFTED = {
    "out of bounds": ((1000,), (1,)),
    "negative size": ((-5,), (1,)),
}


@pytest.mark.parametrize("case", list(_CRAFTED))
def test_load_state_dict_refuses_tensor_records_outside_their_storage(tmp_path, case):
    size, stride = _CRAFTED[case]
    path = _crafted_archive(tmp_path / "crafted.pth", {"w": _Rebuild(size, stride)})
    with pytest.raises(ValueError, match=r"crafted\.pth is not a readable PyTorch checkpoint"):
        load_state_dict(path)


_CONVERT_CRAFTED = {
    **_CRAFTED,
    "offset past the end": ((2,), (1,), 3),  # reaches element 5 of 4
    "large stride": ((2, 2), (1, 3)),  # reaches element 0 + 1 + 3 + 1 = 5 of 4
    "negative stride": ((2,), (-1,)),
    "negative offset": ((1,), (1,), -1),
    "empty, offset past the end": ((0,), (1,), 5),
    "one stride per size": ((2, 2), (1,)),
}


@pytest.mark.parametrize("case", list(_CONVERT_CRAFTED))
def test_convert_mdf_refuses_tensor_records_outside_their_storage(tmp_path, case, capsys):
    path = _crafted_archive(tmp_path / "crafted.pth", {"0.head.conv.weight": _Rebuild(*_CONVERT_CRAFTED[case])})
    with pytest.raises(ValueError, match=r"convert_mdf: '.*crafted\.pth' has a (malformed )?tensor record") as info:
        convert_mdf(path, tmp_path / "out.safetensors")
    assert "storage '0'" in str(info.value)  # the record is named by its storage, size, stride and offset
    assert cli.main(["convert-mdf", str(path), str(tmp_path / "out.safetensors")]) == 2
    assert "crafted.pth" in capsys.readouterr().err
    assert not (tmp_path / "out.safetensors").exists()


def test_convert_mdf_accepts_records_filling_their_storage_exactly(tmp_path):
    # The bounds are exact: a record ending on the storage's last element is fine (here, a 2x2 view
    # at offset 0 with stride (2, 1) reaches element 3 of 4; then refused only for not being MDF).
    path = _crafted_archive(tmp_path / "edge.pth", {"0.head.conv.weight": _Rebuild((2, 2), (2, 1))})
    with pytest.raises(ValueError, match=r"0\.head\.conv\.weight must have shape \(W, 3, 3, 3\), got \(2, 2\)"):
        convert_mdf(path, tmp_path / "out.safetensors")


_BOMB = textwrap.dedent("""
    import resource, sys
    resource.setrlimit(resource.RLIMIT_AS, (8 << 30, 8 << 30))  # whatever happens, no more than 8 GiB
    from pdl_ext.losses.mdf import MDFLoss
    from pdl_ext.io.mdf_pickle import convert_mdf
    try:
        if sys.argv[2] == "from_file":
            MDFLoss.from_file(sys.argv[1])
        else:
            convert_mdf(sys.argv[1], sys.argv[2])
    except (ValueError, __import__("pickle").UnpicklingError) as e:
        print("refused:", e)
        sys.exit(0)
    except BaseException as e:
        print("failed:", type(e).__name__, e)
        sys.exit(3)
    sys.exit(4)
""")


def _mdf_shaped_bomb(width: int) -> Dict[str, _Rebuild]:
    """Every tensor of a width-`width` discriminator, each a stride-0 view of the same 16 bytes: the
    layout is right, so only counting bytes can refuse it (building the modules would allocate)."""
    with torch.device("meta"):
        shapes = {k: tuple(v.shape) for k, v in MDFDiscriminator(width).state_dict().items()}
    return {f"0.{k}": _Rebuild(s, (0,) * len(s)) for k, s in shapes.items()}


@pytest.mark.parametrize("bomb", ["stride-0 view of 10^12", "MDF-shaped, width 10^5"])
def test_convert_mdf_refuses_a_memory_bomb_before_allocating(tmp_path, bomb):
    state = ({"0.head.conv.weight": _Rebuild((10**6, 10**6), (0, 0))} if bomb.startswith("stride")
             else _mdf_shaped_bomb(10**5))  # 10^5 x 10^5 x 3 x 3 x 3 blocks: 1.1 TB of float32
    path = _crafted_archive(tmp_path / "bomb.pth", state)
    assert path.stat().st_size < 5000
    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")]))
    run = subprocess.run([sys.executable, "-c", _BOMB, str(path), str(tmp_path / "out.safetensors")],
                         capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "bomb.pth" in run.stdout and not (tmp_path / "out.safetensors").exists()


def test_mdf_from_file_refuses_a_crafted_width_before_allocating(tmp_path):
    # A 11 MB head of width 10^5 alone: building MDFDiscriminator(10^5) would allocate 1 TB for its
    # body before noticing the missing tensors, so the layout is checked first (on the meta device).
    save_state_dict({"0.head.conv.weight": torch.zeros(10**5, 3, 3, 3)}, tmp_path / "wide.safetensors")
    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")]))
    run = subprocess.run([sys.executable, "-c", _BOMB, str(tmp_path / "wide.safetensors"), "from_file"],
                         capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "wide.safetensors': discriminator 0 does not have the MDF layout" in run.stdout


def test_load_state_dict_of_a_stride0_bomb_never_reaches_a_module(tmp_path):
    # torch.load(weights_only=True) builds the 10^12-element view on 16 bytes; the modules' shape
    # checks must refuse it before copying.
    state = {k: _Rebuild(tuple(v.shape), (0,) * v.dim()) for k, v in _vgg_state().items()}  # all on 16 bytes
    state["features.0.weight"] = _Rebuild((10**6, 10**6), (0, 0))
    path = _crafted_archive(tmp_path / "bomb.pth", state)
    with pytest.raises(ValueError, match=r"wrongly shaped vgg16 tensors.*features\.0\.weight: expected \(64, 3, 3, 3\)"):
        VGGFeatures("vgg16", layers=("relu1_2",), weights=path)


# ---------------------------------------------------------------------------------------------
# Truncated files and files of another format
# ---------------------------------------------------------------------------------------------
def _good_file(tmp_path: Path, loader: str, fmt: str) -> Path:
    if loader == "NIMA":
        state = _tiny_nima().state_dict()
    elif loader in ("MDFLoss.from_file", "convert_mdf"):
        state = _mdf_state()
    else:
        state = _vgg_state()
    path = tmp_path / f"good.{'safetensors' if fmt == 'safetensors' else 'pth'}"
    if fmt == "safetensors":
        save_state_dict(state, path)
    else:
        torch.save(state, path, _use_new_zipfile_serialization=(fmt == "zip"))
    return path


_FORMATS = {  # the formats each loader reads
    "load_state_dict": ("zip", "legacy", "safetensors"),
    "VGGFeatures": ("zip", "safetensors"),
    "NIMA": ("zip", "safetensors"),
    "MDFLoss.from_file": ("safetensors",),
    "convert_mdf": ("zip", "legacy"),
}


_CUTS = ("empty", "10 bytes", "half", "all but 1 byte")


@pytest.mark.parametrize("loader,fmt,cut", [(ld, f, c) for ld, fs in _FORMATS.items() for f in fs for c in _CUTS])
def test_truncated_files_give_a_clear_error(tmp_path, loader, fmt, cut):
    good = _good_file(tmp_path, loader, fmt)
    if cut == "empty":
        LOADERS[loader](good)  # the intact file loads
    bad = tmp_path / f"cut{good.suffix}"
    bad.write_bytes(_truncations(good.read_bytes())[cut])
    with pytest.raises(REFUSED) as info:
        LOADERS[loader](bad)
    assert "cut" in str(info.value), f"the message must name the file: {info.value}"


@pytest.mark.parametrize("loader,content,suffix", [
    pytest.param(ld, c, s)
    for ld in LOADERS for c in ("text", "random", "json") for s in (".pth", ".safetensors", ".bin")])
def test_files_of_another_format_give_a_clear_error(tmp_path, loader, content, suffix):
    data = {"text": b"hello, not a checkpoint\n" * 20,
            "random": torch.randint(0, 256, (4096,), generator=torch.Generator().manual_seed(0)).to(torch.uint8).numpy().tobytes(),
            "json": b'{"features.0.weight": [1, 2, 3]}'}[content]
    path = tmp_path / f"other{suffix}"
    path.write_bytes(data)
    with pytest.raises(REFUSED) as info:
        LOADERS[loader](path)
    assert "other" in str(info.value)


@pytest.mark.parametrize("loader,fmt", [(ld, f) for ld, fs in _FORMATS.items() for f in fs])
def test_corrupted_bytes_give_a_clear_error_or_load(tmp_path, loader, fmt):
    """Random bytes overwritten (mostly in the headers and the pickle): the file loads (the bytes hit
    tensor data) or is refused with a clear error; any other exception is a bug. The converter's
    errors also name the file (convert-mdf prints them as its whole answer)."""
    good = _good_file(tmp_path, loader, fmt)
    data = good.read_bytes()
    rng = random.Random(0)
    unexpected = []
    for i in range(30):
        b = bytearray(data)
        for _ in range(rng.randint(1, 4)):
            b[rng.randrange(min(len(b), 2048)) if rng.random() < 0.8 else rng.randrange(len(b))] = rng.randrange(256)
        bad = tmp_path / f"fuzz{good.suffix}"
        bad.write_bytes(bytes(b))
        try:
            LOADERS[loader](bad)
        except REFUSED as e:  # UnsafePickleError too: a damaged opcode can name a global to call
            if loader == "convert_mdf" and "fuzz" not in str(e):
                unexpected.append(f"mutation {i}: the message does not name the file: {str(e)[:120]}")
        except Exception as e:  # noqa: BLE001 (the point: anything else is a finding)
            unexpected.append(f"mutation {i}: {type(e).__name__}: {str(e)[:120]}")
    assert not unexpected, "\n".join(unexpected)


@pytest.mark.parametrize("loader", list(LOADERS))
def test_missing_file_and_directory(tmp_path, loader):
    with pytest.raises(FileNotFoundError, match="nope"):
        LOADERS[loader](tmp_path / "nope.pth")
    (tmp_path / "adir.pth").mkdir()
    with pytest.raises((FileNotFoundError, IsADirectoryError, ValueError), match="adir"):
        LOADERS[loader](tmp_path / "adir.pth")


def test_mdf_from_file_points_a_pth_to_the_converter(tmp_path):
    torch.save(_mdf_state(), tmp_path / "Ds.pth")
    with pytest.raises(ValueError, match="not a safetensors file.*pdl-ext convert-mdf"):
        MDFLoss.from_file(tmp_path / "Ds.pth")


# ---------------------------------------------------------------------------------------------
# Wrongly shaped and wrong-dtype tensors
# ---------------------------------------------------------------------------------------------
def _spoil_shape(state: Dict[str, torch.Tensor], key: str) -> Dict[str, torch.Tensor]:
    out = dict(state)
    out[key] = torch.zeros(tuple(s + 1 for s in state[key].shape))
    return out


@pytest.mark.parametrize("loader,key", [
    ("VGGFeatures", "features.2.weight"),
    ("NIMA", "head.weight"),
    ("MDFLoss.from_file", "1.body.block2.conv.weight"),
    ("MDFLoss.from_file", "0.head.norm.running_mean"),
])
def test_wrongly_shaped_tensors_are_named(tmp_path, loader, key):
    state = {"VGGFeatures": _vgg_state, "NIMA": lambda: _tiny_nima().state_dict(), "MDFLoss.from_file": _mdf_state}[loader]()
    path = tmp_path / "shaped.safetensors"
    save_state_dict(_spoil_shape(state, key), path)
    with pytest.raises(ValueError, match=key.split(".", 1)[-1] if loader == "MDFLoss.from_file" else key):
        LOADERS[loader](path)


def test_convert_mdf_wrongly_shaped_module(tmp_path):
    ds = [MDFDiscriminator(32).eval() for _ in range(2)]
    ds[1].tail = nn.Conv2d(32, 1, kernel_size=5)  # a 5x5 tail: not the MDF architecture
    torch.save(ds, tmp_path / "Ds.pth")
    with pytest.raises(ValueError, match="tail.weight"):
        convert_mdf(tmp_path / "Ds.pth", tmp_path / "out.safetensors")
    assert not (tmp_path / "out.safetensors").exists()


def _float_to(state: Dict[str, torch.Tensor], dtype: torch.dtype) -> Dict[str, torch.Tensor]:
    # Only the floating tensors (BatchNorm's num_batches_tracked is an int64 by right).
    return {k: (v > 0).to(dtype) if v.is_floating_point() and dtype == torch.bool else
            (v.to(dtype) if v.is_floating_point() else v) for k, v in state.items()}


@pytest.mark.parametrize("loader", ["VGGFeatures", "NIMA", "MDFLoss.from_file"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_other_float_dtypes_load_as_their_float32_values(tmp_path, loader, dtype):
    state = {"VGGFeatures": _vgg_state, "NIMA": lambda: _tiny_nima().state_dict(), "MDFLoss.from_file": _mdf_state}[loader]()
    spoiled = _float_to(state, dtype)
    path = tmp_path / "half.safetensors"
    save_state_dict(spoiled, path)
    module = LOADERS[loader](path)
    if isinstance(module, MDFLoss):
        loaded = discriminators_state_dict(module.discriminators[:1])
    elif isinstance(module, VGGFeatures):
        loaded = {f"features.{k}": v for k, v in module.features.state_dict().items()}
    else:
        loaded = module.state_dict()
    for k, v in loaded.items():
        torch.testing.assert_close(v, spoiled[k].to(v.dtype), rtol=0, atol=0)


@pytest.mark.parametrize("loader", ["VGGFeatures", "NIMA", "MDFLoss.from_file"])
@pytest.mark.parametrize("dtype", [torch.int64, torch.uint8, torch.bool, torch.complex64])
def test_non_float_weights_are_refused(tmp_path, loader, dtype):
    state = {"VGGFeatures": _vgg_state, "NIMA": lambda: _tiny_nima().state_dict(), "MDFLoss.from_file": _mdf_state}[loader]()
    path = tmp_path / "ints.safetensors"
    save_state_dict(_float_to(state, dtype), path)
    with pytest.raises(ValueError, match="dtype") as info:
        LOADERS[loader](path)
    if loader == "MDFLoss.from_file":
        assert "ints.safetensors" in str(info.value) and f"0.head.conv.weight: {dtype}" in str(info.value)


@pytest.mark.parametrize("dtype", [torch.int64, torch.complex64])
def test_convert_mdf_refuses_non_float_weights(tmp_path, dtype):
    torch.save(_float_to(_mdf_state(), dtype), tmp_path / "ints.pth")
    with pytest.raises(ValueError, match=r"convert_mdf: '.*ints\.pth' holds non-float tensors .*wrong dtype"):
        convert_mdf(tmp_path / "ints.pth", tmp_path / "out.safetensors")
    assert not (tmp_path / "out.safetensors").exists()
