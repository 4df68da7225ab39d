"""Safe loading and saving of weight files: nothing in a weight file is ever executed.

`.pth`/`.pt` checkpoints go through ``torch.load(..., weights_only=True)`` (tensors and plain
containers only); `.safetensors` files through `safetensors`. Every error names the file and says
what was expected.
"""
from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path
from typing import Dict, Iterable, Mapping, Optional, Union

import torch

PathLike = Union[str, "os.PathLike[str]"]

_TORCH_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt", ".tar")
_SAFETENSORS_SUFFIXES = (".safetensors",)
# Wrappers used by common training scripts around the state dict itself.
_WRAPPER_KEYS = ("state_dict", "model", "model_state_dict", "params")


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
    return (str(e).splitlines() or [type(e).__name__])[0]


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
            f"expected a file written by safetensors.torch.save_file. Details: {e}"
        ) from None


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
            f"possibly under 'state_dict' or 'model'; top-level keys: {sorted(map(str, obj))[:10]}"
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
