"""Safe loading and saving of weight files: nothing in a weight file is ever executed.

`.pth`/`.pt` checkpoints go through ``torch.load(..., weights_only=True)`` (tensors and plain
containers only); `.safetensors` files through `safetensors`. Every error names the file and says
what was expected; what the file holds is quoted only in bounded form (``short``), so a crafted
object (deep or self-sharing containers) can neither hang nor flood the message.

A zip archive (the format of ``torch.save``) is checked against its central directory before torch
reads it: all its entries together may inflate to at most ``MAX_INFLATION`` times the file's size
(plus 1 MiB) and never more than ``MAX_ARCHIVE_BYTES``, so a zip bomb is refused before anything is
inflated. Raise the module constants to load a larger (or compressed) checkpoint on purpose.
"""
from __future__ import annotations

import os
import pickle
import reprlib
import tempfile
import zipfile
from pathlib import Path
from typing import Dict, Iterable, List, Mapping, NamedTuple, Optional, Tuple, Union

import torch

PathLike = Union[str, "os.PathLike[str]"]

_TORCH_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt", ".tar")
_SAFETENSORS_SUFFIXES = (".safetensors",)
# Wrappers used by common training scripts around the state dict itself.
_WRAPPER_KEYS = ("state_dict", "model", "model_state_dict", "params")

# What a zip archive of weights may inflate to, all entries together: at most MAX_INFLATION times the
# file's size (plus _INFLATION_SLACK for tiny files) and never more than MAX_ARCHIVE_BYTES. torch.save
# stores its entries uncompressed (ratio 1); a zip bomb inflates thousands of times.
MAX_ARCHIVE_BYTES = 4 << 30
MAX_INFLATION = 16
_INFLATION_SLACK = 1 << 20


class _BoundedRepr(reprlib.Repr):
    def __init__(self) -> None:
        super().__init__()
        self.maxlevel = 3
        self.maxtuple = self.maxlist = self.maxarray = self.maxdict = 6
        self.maxset = self.maxfrozenset = self.maxdeque = 6
        self.maxstring, self.maxlong, self.maxother = 80, 40, 80

    def repr1(self, x: object, level: int) -> str:
        if isinstance(x, torch.Tensor):  # never print a (possibly crafted, huge) tensor's values
            return f"tensor(shape={tuple(x.shape)}, dtype={x.dtype})"
        return super().repr1(x, level)


_REPR = _BoundedRepr()


def short(obj: object, limit: int = 200) -> str:
    """A bounded ``repr`` of ``obj`` for error messages: containers cut after a few items and 3 levels,
    the whole at most ``limit`` characters. Safe on deep, self-sharing or recursive containers.

    Example:
        >>> a = []
        >>> for _ in range(40): a = [a, a]
        >>> short(a)
        '[[[[...], [...]], [[...], [...]]], [[[...], [...]], [[...], [...]]]]'
    """
    try:
        text = _REPR.repr(obj)
    except Exception:  # a stand-in whose repr fails: its type is enough
        text = f"<{type(obj).__name__}>"
    return text if len(text) <= limit else text[: max(limit - 3, 0)] + "..."


def short_text(text: str, limit: int = 300) -> str:
    """``text`` on one line, cut to ``limit`` characters (for quoting another error's message)."""
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: max(limit - 3, 0)] + "..."


def zip_size_problem(zf: zipfile.ZipFile, archive_bytes: int) -> Optional[str]:
    """What is wrong with the sizes a zip archive's central directory declares, or None.

    Refuses a stored entry claiming more (or fewer) bytes than it occupies, and entries inflating, all
    together, to more than ``min(MAX_ARCHIVE_BYTES, MAX_INFLATION * archive_bytes + 1 MiB)``. Nothing
    is inflated. The text continues a sentence whose subject is the file (``"<file> inflates to ..."``).
    """
    infos = zf.infolist()
    for info in infos:
        if info.compress_type == zipfile.ZIP_STORED and info.file_size != info.compress_size:
            return (f"has a stored (uncompressed) entry {short(info.filename, 80)} of {info.compress_size} bytes "
                    f"that claims {info.file_size} bytes (corrupted or crafted); refused before reading it")
    total = sum(info.file_size for info in infos)
    cap = min(MAX_ARCHIVE_BYTES, MAX_INFLATION * archive_bytes + _INFLATION_SLACK)
    if total > cap:
        big = max(infos, key=lambda info: info.file_size)
        return (f"inflates to {total} bytes ({len(infos)} entries; the largest, {short(big.filename, 80)}, "
                f"{big.file_size} bytes from {big.compress_size}), more than the {cap} bytes allowed for an "
                f"archive of {archive_bytes} bytes (at most {MAX_INFLATION}x its size plus 1 MiB, and "
                f"pdl_ext.io.weights.MAX_ARCHIVE_BYTES = {MAX_ARCHIVE_BYTES}); refused before inflating "
                f"anything (a zip bomb?)")
    return None


def _check_torch_zip(path: Path) -> None:
    """Refuses a zip whose entries would inflate beyond the caps, before torch.load inflates anything."""
    with open(path, "rb") as f:
        head = f.read(4)
    if head != b"PK\x03\x04":
        return  # torch.load reads a zip only when the file starts with a zip entry header; else the legacy format
    try:
        with zipfile.ZipFile(path) as zf:
            problem = zip_size_problem(zf, path.stat().st_size)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, ValueError, NotImplementedError) as e:
        raise ValueError(
            f"load_state_dict: {path} is not a readable PyTorch checkpoint (truncated or corrupted download?); "
            f"its zip directory cannot be read. Details: {short_text(e)}"
        ) from None
    if problem:
        raise ValueError(f"load_state_dict: {path} {problem}")


def _sniff(path: Path) -> Optional[str]:
    """Recognises a file by its first bytes: "torch" (zip or legacy pickle), "safetensors" or None."""
    with open(path, "rb") as f:
        head = f.read(16)
    if head.startswith(b"PK") or head[:2] == b"\x80\x02":
        return "torch"
    # safetensors: little-endian u64 header length, then a JSON object
    if len(head) >= 9 and head[8:9] == b"{":
        return "safetensors"
    return None


def _load_torch(path: Path) -> object:
    _check_torch_zip(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise ValueError(
            f"load_state_dict: {path} holds objects other than tensors and plain containers, which are "
            f"not loaded for safety (weights_only=True). Re-save it as a plain state dict "
            f"(torch.save(model.state_dict(), ...)) or as .safetensors. Details: {_first_line(e)}"
        ) from None
    except Exception as e:  # torch.load raises many kinds on a damaged file (EOFError, KeyError, ...)
        raise ValueError(
            f"load_state_dict: {path} is not a readable PyTorch checkpoint (truncated or corrupted "
            f"download?); expected a file written by torch.save. Details: {_first_line(e)}"
        ) from None


def _first_line(e: BaseException) -> str:
    return short_text((str(e).splitlines() or [type(e).__name__])[0])


class Layout(NamedTuple):
    """How a state dict differs from the expected layout: key lists and (key, expected, got) shapes."""

    missing: List[str]
    unexpected: List[str]
    wrong_shapes: List[Tuple[str, Tuple[int, ...], Tuple[int, ...]]]


def compare_layout(sd: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor]) -> Layout:
    """The one state-dict layout check (VGG, NIMA and MDF loaders): keys missing from ``sd``, keys
    ``sd`` has beyond ``expected``, and tensors present in both whose shapes differ. Each caller words
    its error (and may ignore ``unexpected``, as VGG does for ``classifier.*``)."""
    missing = [k for k in expected if k not in sd]
    unexpected = sorted(k for k in sd if k not in expected)
    wrong = [(k, tuple(v.shape), tuple(sd[k].shape)) for k, v in expected.items() if k in sd and sd[k].shape != v.shape]
    return Layout(missing, unexpected, wrong)


def check_float_tensors(sd: Dict[str, torch.Tensor], keys, fn: str, source: object) -> None:
    """Refuses integer, bool or complex tensors where float parameters go (load_state_dict would cast them)."""
    bad = [f"{k}: {sd[k].dtype}" for k in keys if not sd[k].is_floating_point()]
    if bad:
        raise ValueError(f"{fn}: {source} holds non-float tensors for float parameters (wrong dtype): {bad[:4]}")


def _load_safetensors(path: Path) -> Dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as e:
        raise ValueError(
            f"load_state_dict: {path} is not a readable safetensors file (truncated or corrupted?); "
            f"expected a file written by safetensors.torch.save_file. Details: {short_text(e)}"
        ) from None


def _key_text(key: object) -> str:
    text = key if isinstance(key, str) else short(key, 60)
    return text if len(text) <= 60 else text[:57] + "..."


def _unwrap(obj: object, path: Path) -> Dict[str, torch.Tensor]:
    # Peel {"state_dict": {...}} / {"model": {...}} wrappers, as many levels as there are.
    while isinstance(obj, Mapping) and not any(isinstance(v, torch.Tensor) for v in obj.values()):
        inner = next((obj[k] for k in _WRAPPER_KEYS if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            break
        obj = inner
    if not isinstance(obj, Mapping):
        raise ValueError(f"load_state_dict: {path} must hold a state dict (name -> tensor), got {type(obj).__name__}")
    sd = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not sd:
        raise ValueError(
            f"load_state_dict: {path} holds no tensors; expected a state dict (name -> tensor), "
            f"possibly under 'state_dict' or 'model'; top-level keys: {sorted(map(_key_text, obj))[:10]}"
        )
    # Checkpoints of DataParallel/DDP-wrapped models prefix every key with "module.".
    if all(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    return sd


def load_state_dict(path: PathLike) -> Dict[str, torch.Tensor]:
    """Loads a state dict from a `.pth`/`.pt` checkpoint or a `.safetensors` file, on the CPU, safely.

    Args:
        path: the file. `.pth`, `.pt`, `.bin`, `.ckpt`, `.tar` are read with
            ``torch.load(..., map_location="cpu", weights_only=True)``; `.safetensors` with safetensors.
            Other suffixes are recognised by their first bytes.

    Returns:
        ``dict[str, Tensor]``. A checkpoint wrapping its weights as ``{"state_dict": ...}`` or
        ``{"model": ...}`` is unwrapped, non-tensor entries are dropped, and a ``module.`` prefix
        on every key (DDP checkpoints) is removed.

    Raises:
        FileNotFoundError: the file does not exist. ValueError: it is truncated, of another format, or
        holds something else than tensors.

    Example:
        >>> import tempfile, os, torch
        >>> p = os.path.join(tempfile.mkdtemp(), "w.safetensors")
        >>> _ = save_state_dict({"w": torch.ones(2)}, p)
        >>> load_state_dict(p)["w"].tolist()
        [1.0, 1.0]
    """
    path = Path(path).expanduser()
    if not path.is_file():
        what = "a directory, not a file" if path.is_dir() else "not found"
        raise FileNotFoundError(f"load_state_dict: {path}: {what}; expected a .pth/.pt or .safetensors weight file")
    suffix = path.suffix.lower()
    if suffix in _SAFETENSORS_SUFFIXES:
        kind = "safetensors"
    elif suffix in _TORCH_SUFFIXES:
        kind = "torch"
    else:
        kind = _sniff(path)
        if kind is None:
            raise ValueError(
                f"load_state_dict: {path} is neither a PyTorch checkpoint nor a safetensors file "
                f"(unknown suffix {suffix!r} and unrecognised content); expected .pth/.pt or .safetensors"
            )
    if kind == "safetensors":
        return _unwrap(_load_safetensors(path), path)
    return _unwrap(_load_torch(path), path)


def save_state_dict(
    state_dict: Mapping[str, torch.Tensor], path: PathLike, metadata: Optional[Mapping[str, str]] = None
) -> Path:
    """Saves tensors to a `.safetensors` file, atomically (a crash never leaves a truncated file).

    Args:
        state_dict: name -> tensor (any device; copied to the CPU, shared storage is fine).
        path: destination; its directory is created.
        metadata: optional str -> str pairs stored in the file header (e.g. epoch, metrics as JSON).

    Returns:
        The path written.

    Example:
        >>> import tempfile, os, torch
        >>> save_state_dict({"w": torch.zeros(3)}, os.path.join(tempfile.mkdtemp(), "w.safetensors")).suffix
        '.safetensors'
    """
    from safetensors.torch import save

    path = Path(path).expanduser()
    bad = [k for k, v in state_dict.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise TypeError(f"save_state_dict: every value must be a torch.Tensor, got other types for {bad[:5]}")
    tensors, seen = {}, set()
    for k, v in state_dict.items():
        v = v.detach().to("cpu")
        ptr = v.untyped_storage().data_ptr()
        # safetensors refuses tensors sharing storage (tied weights, views): copy all but the first
        tensors[str(k)] = v.clone().contiguous() if ptr in seen and v.numel() else v.contiguous()
        seen.add(ptr)
    meta = {str(k): str(v) for k, v in (metadata or {}).items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    # serialised in memory and written with open(): save_file would leave the file mode 0600
    data = save(tensors, metadata=meta or None)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def _output_error(e: OSError, message: str) -> OSError:
    # keep the documented user-error kinds; anything else (read-only file system, ...) is a PermissionError
    if isinstance(e, FileExistsError):
        return NotADirectoryError(message)
    if isinstance(e, (FileNotFoundError, PermissionError, NotADirectoryError, IsADirectoryError)):
        return type(e)(message)
    return PermissionError(message)


def check_output_path(path: PathLike, what: str, *, directory: bool = False) -> Path:
    """Checks, before any work, that an output can be written: creates its folder and writes (then
    removes) a probe file there. Every command and function that writes calls this first, so a wrong
    path fails at once rather than after the work.

    Args:
        path: the file to write, or with ``directory=True`` the folder to write into.
        what: how the caller names it in the message, e.g. ``"--out"`` or ``"train_mdf: out"``.
        directory: ``path`` is a folder (created if missing) rather than a file.

    Returns:
        ``path`` as a ``Path`` (``~`` expanded).

    Raises:
        NotADirectoryError, IsADirectoryError, FileNotFoundError, PermissionError: the path cannot be
        written; the message names ``what``, the path and the reason.

    Example:
        >>> import tempfile, os
        >>> check_output_path(os.path.join(tempfile.mkdtemp(), "sub", "w.safetensors"), "--out").name
        'w.safetensors'
    """
    path = Path(path).expanduser()
    where = f"{what} {str(path)!r}"
    folder = path if directory else path.parent
    if directory and path.exists() and not path.is_dir():
        raise NotADirectoryError(f"{where}: exists and is not a directory")
    if not directory and path.is_dir():
        raise IsADirectoryError(f"{where}: is a directory; expected a file name")
    blocker = next((p for p in (folder, *folder.parents) if p.exists() or p.is_symlink()), None)
    if blocker is not None and not blocker.is_dir():
        raise NotADirectoryError(f"{where}: {str(blocker)!r} is a file, not a directory")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise _output_error(e, f"{where}: cannot create the directory {str(folder)!r} ({e.strerror or e})") from None
    try:
        fd, probe = tempfile.mkstemp(prefix=".pdl-ext-probe-", dir=folder)
        os.close(fd)
        os.remove(probe)
    except OSError as e:
        raise _output_error(e, f"{where}: cannot write in {str(folder)!r} ({e.strerror or e})") from None
    if not directory and path.exists() and not os.access(path, os.W_OK):
        raise PermissionError(f"{where}: the file exists and is not writable")
    return path


def hub_checkpoint_dir() -> Path:
    """The directory where torch.hub keeps downloaded weights: ``torch.hub.get_dir()/checkpoints``."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def find_in_hub_cache(filenames: Iterable[str]) -> Optional[Path]:
    """The first of `filenames` present in the torch hub cache (``torch.hub.get_dir()/checkpoints``).

    Args:
        filenames: candidate file names, e.g. ``["vgg16-397923af.pth"]``.

    Returns:
        Its path, or None when none is there.

    Example:
        >>> find_in_hub_cache(["surely-not-there-0000.pth"]) is None
        True
    """
    root = hub_checkpoint_dir()
    for name in filenames:
        candidate = root / name
        if candidate.is_file():
            return candidate
    return None
