"""`pdl-ext convert-mdf`: the published MDF ``.pth`` files to safetensors, without running their code.

The published weights (gfxdisp/mdf ``weights/Ds_*.pth``) are ``torch.save``-d lists of the authors'
``SinGAN.models.WDiscriminator`` modules; ``torch.load`` would import and run that code, and
``weights_only=True`` refuses the module classes. This reader unpickles with a closed list of
callables (our own tensor rebuilders, ``OrderedDict``, ``set``); every other global becomes an inert
stand-in that can only record the attributes the pickle sets on it, and calling one is refused.
Both ``torch.save`` formats are read: the zip archive (default since torch 1.6) and the legacy stream.
Tensor records are checked against their storage before any view is built, and all records together
against the bytes of their storages before anything is copied, so a crafted file can neither read
outside its storages nor make the converter allocate more than it holds. A zip archive's entries are
checked against its central directory and the sizes its pickle declares before any is inflated (a
zip bomb is refused, not inflated). Every refusal is a ``ValueError`` naming the file (``UnsafePickleError``
is one too); what the file holds is quoted only in bounded form, and modules nested too deeply or
containing themselves are refused, never recursed into.
"""
from __future__ import annotations

import _compat_pickle
import argparse
import collections
import io
import os
import pickle
import sys
import zipfile
from pathlib import Path
from typing import Any, Callable, Dict, List, NamedTuple, Tuple, Union

import torch

from ..losses.mdf import discriminators_from_state_dict, discriminators_state_dict, save_discriminators
from .weights import check_output_path, short, short_text, zip_size_problem
from .._checks import is_int

_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001
# The published discriminators nest 3 levels (list, block, layer); deeper is not an MDF file.
_MAX_MODULE_DEPTH = 32

# The typed-storage classes a pickle names as dtype markers in its storage references.
_STORAGE_DTYPES = {
    "DoubleStorage": torch.float64,
    "FloatStorage": torch.float32,
    "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16,
    "LongStorage": torch.int64,
    "IntStorage": torch.int32,
    "ShortStorage": torch.int16,
    "CharStorage": torch.int8,
    "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool,
    "ComplexFloatStorage": torch.complex64,  # read so that the dtype check can name them
    "ComplexDoubleStorage": torch.complex128,
    "UntypedStorage": torch.uint8,
}


class UnsafePickleError(pickle.UnpicklingError, ValueError):
    """The file asked to call something that is not a tensor rebuild: nothing was called.

    A ``ValueError`` (the documented error of a refused file) whose message names the file."""


class _Unreadable(ValueError):
    """A damaged or crafted part of the file being read; ``load_pickled_modules`` names the file."""


class _Storage(NamedTuple):
    """A storage reference of the pickle: its key (for messages) and its flat 1-D data."""

    key: str
    data: torch.Tensor


class _StorageType:
    """Marker standing for ``torch.<Name>Storage`` in a storage reference (the class is never used)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.dtype = _STORAGE_DTYPES[name]


class _StandInMeta(type):
    def __call__(cls, *args: Any, **kwargs: Any) -> Any:
        raise UnsafePickleError(
            f"convert_mdf: refusing to call {short_text(cls._pickled_name, 120)} from the pickle (only tensor rebuilds may run)"
        )


class StandIn(metaclass=_StandInMeta):
    """An inert record of a pickled object of an unknown class: its class path and its state."""

    _pickled_name = "?"

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __repr__(self) -> str:
        return f"StandIn({self._pickled_name})"


def _stand_in_class(module: str, name: str) -> type:
    return _StandInMeta(name, (StandIn,), {"_pickled_name": f"{module}.{name}", "__module__": __name__})


def _is_index(v: Any) -> bool:
    # as_strided takes int64 values; bools are ints to Python but never a size.
    return is_int(v) and 0 <= v <= sys.maxsize


def _rebuild_tensor(storage: _Storage, offset: int, size: Tuple[int, ...], stride: Tuple[int, ...]) -> torch.Tensor:
    if not isinstance(storage, _Storage):
        raise UnsafePickleError(f"convert_mdf: a tensor rebuild got {type(storage).__name__} instead of a storage")
    record = (f"size {short(size, 80)}, stride {short(stride, 80)}, storage offset {short(offset, 40)} "
              f"on storage {short(storage.key, 40)}")
    if not (
        isinstance(size, (tuple, list)) and isinstance(stride, (tuple, list)) and len(size) == len(stride)
        and all(map(_is_index, (offset, *size, *stride)))
    ):
        raise _Unreadable(f"has a malformed tensor record ({record}): expected non-negative ints, one stride per size")
    held = storage.data.numel()
    # Elements the view reaches: the last one is offset + sum((size_i - 1) * stride_i).
    needed = offset if 0 in size else offset + sum((n - 1) * s for n, s in zip(size, stride)) + 1
    if needed > held:
        raise _Unreadable(
            f"has a tensor record outside its storage ({record}): it reaches {needed} elements, "
            f"the storage holds {held}"
        )
    # A view, not a copy: the legacy format fills storages after the tensors are built.
    return storage.data.as_strided(tuple(size), tuple(stride), offset)


def _rebuild_tensor_v2(storage, offset, size, stride, requires_grad=False, backward_hooks=None, metadata=None):
    return _rebuild_tensor(storage, offset, size, stride)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None, state=None):
    if not isinstance(data, torch.Tensor):
        raise UnsafePickleError(f"convert_mdf: a parameter rebuild got {type(data).__name__} instead of a tensor")
    return data


def _reconstructor(cls: Any, base: Any, state: Any) -> Any:
    # copyreg's protocol-0/1 path, only for stand-ins: allocate, never initialise.
    if not (isinstance(cls, type) and issubclass(cls, StandIn)):
        raise UnsafePickleError(f"convert_mdf: refusing to reconstruct {short(cls)} from the pickle")
    return object.__new__(cls)


_ALLOWED: Dict[Tuple[str, str], Callable[..., Any]] = {
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("copyreg", "_reconstructor"): _reconstructor,
}


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickles module trees and tensors only; see the module docstring.

    Args:
        file: the binary pickle stream.
        load_storage: ``(key, dtype, numel) -> 1-D tensor`` for the pickle's storage references.
    """

    def __init__(self, file: io.BufferedIOBase, load_storage: Callable[[str, torch.dtype, int], torch.Tensor]) -> None:
        super().__init__(file)
        self._load_storage = load_storage
        self._stand_ins: Dict[Tuple[str, str], type] = {}

    def find_class(self, module: str, name: str) -> Any:
        # Protocol 2 keeps Python 2 names (__builtin__.set); the base find_class maps them, so do we.
        if (module, name) in _compat_pickle.NAME_MAPPING:
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        elif module in _compat_pickle.IMPORT_MAPPING:
            module = _compat_pickle.IMPORT_MAPPING[module]
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name)
        if (module, name) not in self._stand_ins:
            self._stand_ins[(module, name)] = _stand_in_class(module, name)
        return self._stand_ins[(module, name)]

    def persistent_load(self, pid: Any) -> Any:
        if isinstance(pid, tuple) and len(pid) == 4 and pid[0] == "module":
            # The legacy format tags module classes with their source text; the class is our stand-in.
            if not (isinstance(pid[1], type) and issubclass(pid[1], StandIn)):
                raise UnsafePickleError(f"convert_mdf: unexpected module reference {short(pid[1])}")
            return pid[1]
        if not isinstance(pid, tuple) or len(pid) < 5 or pid[0] != "storage" or not isinstance(pid[1], _StorageType):
            raise UnsafePickleError(f"convert_mdf: unexpected persistent reference {short(pid)}")
        _, storage_type, key, _location, numel = pid[:5]
        if not isinstance(key, str) or not is_int(numel) or numel < 0:
            raise UnsafePickleError(f"convert_mdf: malformed storage reference {short(pid)}")
        if len(pid) > 5 and pid[5] is not None:
            raise UnsafePickleError("convert_mdf: storage views of the legacy format are not supported")
        return _Storage(key, self._load_storage(key, storage_type.dtype, numel))


def _same_storage(cached: torch.Tensor, key: str, dtype: torch.dtype, numel: int) -> torch.Tensor:
    # One buffer per key: a pickle naming a key many times must not make as many copies.
    if cached.dtype != dtype or cached.numel() != numel:
        raise _Unreadable(
            f"refers to storage {short(key, 40)} as {cached.numel()} x {cached.dtype} and as {numel} x {dtype}"
        )
    return cached


def _flat(raw: bytes, dtype: torch.dtype, numel: int, key: str, big_endian: bool) -> torch.Tensor:
    itemsize = torch.empty(0, dtype=dtype).element_size()
    if numel * itemsize > len(raw):
        raise _Unreadable(
            f"is truncated or corrupted: storage {short_text(key, 40)} holds {len(raw)} bytes, fewer than {numel} x {itemsize}"
        )
    flat = torch.frombuffer(bytearray(raw[: numel * itemsize]), dtype=torch.uint8)
    if big_endian and itemsize > 1:
        flat = flat.view(-1, itemsize).flip(1).reshape(-1)
    return flat.view(dtype) if numel else torch.empty(0, dtype=dtype)


def _read_entry(zf: zipfile.ZipFile, name: str, limit: int, what: str) -> bytes:
    """At most ``limit`` bytes of an entry; refuses one that inflates to more (checked on the central
    directory first, then while reading: never more than ``limit + 1`` bytes are inflated)."""
    info = zf.getinfo(name)
    if info.file_size > limit:
        raise _Unreadable(f"has {what} of {info.file_size} bytes once inflated ({info.compress_size} in the file), "
                          f"more than the {limit} it may hold")
    with zf.open(info) as f:
        raw = f.read(limit + 1)
    if len(raw) > limit:
        raise _Unreadable(f"has {what} that inflates to more than the {limit} bytes it may hold")
    return raw


def _load_zip(path: Path) -> Any:
    with zipfile.ZipFile(path) as zf:
        problem = zip_size_problem(zf, path.stat().st_size)
        if problem:
            raise _Unreadable(problem)
        pickles = [n for n in zf.namelist() if n.endswith("/data.pkl") and n.count("/") == 1]
        if len(pickles) != 1:
            raise _Unreadable("is a zip file but not a torch.save archive (no data.pkl)")
        prefix = pickles[0][: -len("data.pkl")]
        names = set(zf.namelist())
        big_endian = (prefix + "byteorder" in names
                      and _read_entry(zf, prefix + "byteorder", 16, "a byteorder record").strip() == b"big")
        storages: Dict[str, torch.Tensor] = {}

        def load_storage(key: str, dtype: torch.dtype, numel: int) -> torch.Tensor:
            if key in storages:
                return _same_storage(storages[key], key, dtype, numel)
            name = f"{prefix}data/{key}"
            if name not in names:
                raise _Unreadable(f"has no storage {short(key, 40)} in its archive")
            # the pickle declares the storage's size: inflate no more than that (a bomb stops here)
            nbytes = numel * torch.empty(0, dtype=dtype).element_size()
            raw = _read_entry(zf, name, nbytes, f"a storage {short(key, 40)} declared as {numel} x {dtype}")
            storages[key] = _flat(raw, dtype, numel, key, big_endian)
            return storages[key]

        data = _read_entry(zf, pickles[0], zf.getinfo(pickles[0]).file_size, "a pickle")  # within the caps above
        return RestrictedUnpickler(io.BytesIO(data), load_storage).load()


def _load_legacy(path: Path) -> Any:
    data = path.read_bytes()
    f = io.BytesIO(data)
    storages: Dict[str, torch.Tensor] = {}
    claimed = 0  # bytes of all storages so far

    def refuse(key: str, dtype: torch.dtype, numel: int) -> torch.Tensor:
        raise UnsafePickleError("convert_mdf: a storage reference outside the main pickle")

    def allocate(key: str, dtype: torch.dtype, numel: int) -> torch.Tensor:
        # Filled after the pickle, from the records that follow it: all of them together fit in the file.
        nonlocal claimed
        if key in storages:
            return _same_storage(storages[key], key, dtype, numel)
        claimed += numel * torch.empty(0, dtype=dtype).element_size()
        if claimed > len(data):
            raise _Unreadable(
                f"is truncated or corrupted: its storages claim more bytes than the file holds "
                f"(storage {key}: {numel} x {dtype})"
            )
        storages[key] = torch.zeros(numel, dtype=dtype)
        return storages[key]

    try:
        magic = RestrictedUnpickler(f, refuse).load()
    except UnsafePickleError:
        raise
    except Exception as e:
        raise _Unreadable(f"is not a torch.save file ({short_text(e)})") from e
    if magic != _LEGACY_MAGIC:
        raise _Unreadable("is not a torch.save file (neither a zip archive nor the legacy format)")
    if RestrictedUnpickler(f, refuse).load() != _LEGACY_PROTOCOL:
        raise _Unreadable("uses an unknown legacy protocol version")
    sys_info = RestrictedUnpickler(f, refuse).load()
    big_endian = isinstance(sys_info, dict) and sys_info.get("little_endian") is False
    result = RestrictedUnpickler(f, allocate).load()
    keys = RestrictedUnpickler(f, refuse).load()
    if not isinstance(keys, list) or set(keys) != set(storages):
        raise _Unreadable("has a legacy storage list that does not match the pickle's references")
    for key in keys:
        flat = storages[key]
        count = int.from_bytes(f.read(8), "little")
        if count != flat.numel():
            raise _Unreadable(
                f"is truncated or corrupted: storage {key} holds {count} elements, the pickle says {flat.numel()}"
            )
        nbytes = count * flat.element_size()
        flat.copy_(_flat(f.read(nbytes), flat.dtype, count, key, big_endian))
    return result


def _in_file(path: Union[str, os.PathLike], e: _Unreadable) -> ValueError:
    return ValueError(f"convert_mdf: {str(path)!r} {e}")


def _unsafe_in_file(path: Union[str, os.PathLike], e: UnsafePickleError) -> UnsafePickleError:
    text = str(e)
    text = text[len("convert_mdf: "):] if text.startswith("convert_mdf: ") else text
    return UnsafePickleError(f"convert_mdf: {str(path)!r}: {text}")


def _too_deep(path: Union[str, os.PathLike]) -> ValueError:
    return ValueError(f"convert_mdf: {str(path)!r} nests objects too deeply (or holds an object that contains "
                      f"itself); a published MDF file nests modules {_MAX_MODULE_DEPTH} levels at most")


def load_pickled_modules(path: Union[str, os.PathLike]) -> Any:
    """Reads a ``torch.save`` file with the restricted unpickler: modules come back as ``StandIn``
    records (``.state`` is the pickled ``__dict__``), tensors as views on the file's storages (inside
    them, but possibly overlapping). Nothing from the file runs.

    Raises:
        FileNotFoundError: no such file. UnsafePickleError (a ValueError): the pickle asked to call
        something. ValueError: the file is truncated, corrupted, crafted (a zip bomb, storages read out
        of bounds) or not a ``torch.save`` file; the message names it.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"convert_mdf: no such file {str(path)!r}")
    try:
        return _load_zip(path) if zipfile.is_zipfile(path) else _load_legacy(path)
    except UnsafePickleError as e:
        raise _unsafe_in_file(path, e) from None
    except _Unreadable as e:
        raise _in_file(path, e) from None
    except RecursionError:
        raise _too_deep(path) from None
    except Exception as e:  # damaged bytes raise many kinds (BadZipFile, EOFError, KeyError, ...)
        raise ValueError(
            f"convert_mdf: {str(path)!r} is not a readable torch.save file (truncated or corrupted?): "
            f"{type(e).__name__}: {short_text(e)}"
        ) from None


# Hyper-parameters the MDF architecture fixes, checked on the recorded modules: class -> attr -> value.
_ARCHITECTURE = {
    "Conv2d": {"stride": (1, 1), "padding": (0, 0), "dilation": (1, 1), "groups": 1},
    "BatchNorm2d": {"eps": 1e-5},
    "LeakyReLU": {"negative_slope": 0.2},
}


def _named(table: Any, what: str, where: str) -> Dict[str, Any]:
    """A module's ``_parameters``/``_buffers``/``_modules`` table: a dict keyed by names."""
    table = table or {}
    if not isinstance(table, dict) or not all(isinstance(k, str) for k in table):
        raise _Unreadable(f"holds {short(table, 80)} as the {what} of {where}, where a dict keyed by names goes")
    return table


def _module_state(record: Any, prefix: str, out: Dict[str, torch.Tensor], ancestors: Tuple[int, ...] = ()) -> None:
    where = short_text(prefix.rstrip(".") or "the top", 120)
    if id(record) in ancestors:
        raise _Unreadable(f"holds a module that contains itself (at {where})")
    if len(ancestors) >= _MAX_MODULE_DEPTH:
        raise _Unreadable(f"nests modules more than {_MAX_MODULE_DEPTH} levels deep (at {where})")
    if not isinstance(record, StandIn) or not isinstance(getattr(record, "state", None), dict):
        raise _Unreadable(f"holds {short(record)} at {where!r}, where a pickled module goes")
    state = record.state
    cls = record._pickled_name.rsplit(".", 1)[-1]
    for attr, want in _ARCHITECTURE.get(cls, {}).items():
        got = state.get(attr, want)
        if (tuple(got) if isinstance(got, (list, tuple)) else got) != want:
            raise _Unreadable(f"has {where} ({short_text(cls, 80)}) with {attr}={short(got, 80)}; MDF needs {want!r}")
    skip = state.get("_non_persistent_buffers_set") or set()
    for group in ("_parameters", "_buffers"):
        for name, t in _named(state.get(group), group, where).items():
            if t is None or (group == "_buffers" and name in skip):
                continue
            if not isinstance(t, torch.Tensor):
                raise _Unreadable(f"holds a {type(t).__name__} for {short_text(prefix + name, 120)}, not a tensor")
            out[prefix + name] = t
    for name, child in _named(state.get("_modules"), "_modules", where).items():
        if child is not None:
            _module_state(child, f"{prefix}{name}.", out, ancestors + (id(record),))


def _discriminator_list(root: Any) -> List[Any]:
    if isinstance(root, (list, tuple)):
        return list(root)
    if isinstance(root, StandIn) and isinstance(getattr(root, "state", None), dict):
        modules = _named(root.state.get("_modules"), "_modules", "the top")
        if modules and all(k.isdigit() for k in modules):  # an nn.ModuleList
            return [modules[k] for k in sorted(modules, key=int)]
        return [root]
    raise _Unreadable(f"holds a {type(root).__name__}, not a list of discriminator modules")


def convert_mdf(src: Union[str, os.PathLike], dst: Union[str, os.PathLike]) -> Dict[str, torch.Tensor]:
    """Converts a published MDF ``.pth`` (a pickled list of SinGAN ``WDiscriminator``) to safetensors.

    Args:
        src: the ``torch.save`` file (zip or legacy format).
        dst: the safetensors file to write (its folder is created; checked writable first), laid out as ``"{k}.head.conv.weight"``, ... (discriminator
            ``k`` in list order), which ``MDFLoss.from_file`` loads.

    Returns:
        The state dict written.

    Raises:
        UnsafePickleError (a ValueError): the pickle tried to call something other than a tensor
            rebuild (nothing ran).
        ValueError: the file is not a ``torch.save`` file (truncated, corrupted, or crafted: tensor
            records outside their storage or overlapping, a zip bomb, modules nested too deeply or
            containing themselves), or not an MDF discriminator series (layout,
            shapes, non-float weights); the message names the file. Nothing is allocated beyond what
            the file's storages hold.

    Example:
        >>> from pdl_ext.io.mdf_pickle import convert_mdf
        >>> convert_mdf("Ds_SISR.pth", "Ds_SISR.safetensors")   # doctest: +SKIP
    """
    check_output_path(dst, "convert_mdf: dst")  # before reading: a wrong output path fails at once
    root = load_pickled_modules(src)
    state: Dict[str, torch.Tensor] = {}
    try:
        if isinstance(root, dict) and root and all(isinstance(v, torch.Tensor) for v in root.values()):
            state = dict(_named(root, "keys", "the top"))  # already a flat state dict
        else:
            for k, record in enumerate(_discriminator_list(root)):
                _module_state(record, f"{k}.", state)
        _check_no_overlap(state)
    except _Unreadable as e:
        raise _in_file(src, e) from None
    except RecursionError:
        raise _too_deep(src) from None
    # The views go straight to load_state_dict, which copies them once the layout is checked.
    discriminators = discriminators_from_state_dict(state, "convert_mdf", repr(str(src)))
    save_discriminators(discriminators, dst)
    return discriminators_state_dict(discriminators)


def _check_no_overlap(state: Dict[str, torch.Tensor]) -> None:
    """Refuses records holding more bytes than their storages: weights never overlap, but a crafted
    stride-0 view of 16 bytes can stand for terabytes, which building the modules would allocate."""
    held = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in state.values()}
    needed = sum(t.numel() * t.element_size() for t in state.values())
    if needed > sum(held.values()):
        key, t = max(state.items(), key=lambda kv: kv[1].numel())
        raise _Unreadable(
            f"has overlapping tensor records: they hold {needed} bytes, their storages {sum(held.values())} "
            f"(the largest: {key} of size {tuple(t.shape)}, stride {t.stride()})"
        )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("src", help="published discriminators, e.g. Ds_SISR.pth (read without running its code)")
    parser.add_argument("dst", help="output .safetensors (loadable by pdl_ext.MDFLoss.from_file)")


def run(args: argparse.Namespace) -> int:
    # a refused file (ValueError, UnsafePickleError is one) or a missing one: `pdl-ext` prints it, exit status 2
    state = convert_mdf(args.src, args.dst)
    widths = [int(t.shape[0]) for k, t in state.items() if k.endswith(".head.conv.weight")]
    print(f"wrote {len(widths)} discriminators (widths {widths}) to {args.dst}")
    return 0
