"""OpenAI's own CLIP checkpoint files (``RN50.pt``, ``ViT-B-16.pt``, ...) read as data, never run.

OpenAI's ``clip`` package downloads each model as a TorchScript archive: a zip holding the model's
compiled code (``code/``), its pickled object tree (``data.pkl``) and one record per tensor storage
(``data/<key>``). ``torch.jit.load`` would compile and run that code, and ``torch.load(weights_only=True)``
refuses TorchScript archives outright (torch/serialization.py: "Cannot use weights_only=True with
TorchScript archives"). So this module reads ``data.pkl`` with a restricted unpickler: the only globals it
resolves are the tensor-rebuild function, ``OrderedDict`` and the storage types; every TorchScript class
(``__torch__.*``) becomes an inert record of its attributes. Nothing from the file is called, and a file
that names any other global is refused. The tensors of that object tree, named by their attribute paths,
are the model's parameters and buffers, as ``torch.jit.load(...).state_dict()`` would list them.
"""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path

import torch

# The storage classes a TorchScript pickle names (torch/storage.py's legacy typed storages).
STORAGE_DTYPES = {
    "FloatStorage": torch.float32, "HalfStorage": torch.float16, "BFloat16Storage": torch.bfloat16,
    "DoubleStorage": torch.float64, "LongStorage": torch.int64, "IntStorage": torch.int32,
    "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool,
}
# Buffers OpenAI's archives carry besides the weights (clip/model.py's build_model deletes the same three;
# clip/clip.py reads ``model.input_resolution``): their presence marks a file as OpenAI's CLIP.
OPENAI_MARKERS = ("input_resolution", "context_length", "vocab_size")


class ArchiveError(ValueError):
    """The file is not a TorchScript archive this reader accepts; the message says why."""


class _ScriptObject:
    """An inert stand-in for a TorchScript object: keeps the state the pickle gives it, runs nothing."""

    qualname = ""

    def __setstate__(self, state):
        self.state = state


class _Storage:
    """A storage named by the pickle: its dtype, read from the archive on demand."""

    def __init__(self, dtype: torch.dtype):
        self.dtype = dtype


def _rebuild_tensor(storage: torch.Tensor, offset: int, size, stride, *_unused) -> torch.Tensor:
    # torch._utils._rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad, hooks[, meta])
    return torch.as_strided(storage, tuple(size), tuple(stride), offset)


# The TorchScript pickler wraps typed lists and containers in these (torch/jit/_pickle.py); for reading
# they are the identity, so they are written here rather than resolved from torch.
_TYPED_LISTS = {"build_intlist": list, "build_doublelist": list, "build_boollist": list,
                "build_tensorlist": list, "restore_type_tag": lambda value, _tag: value}


class _Unpickler(pickle.Unpickler):
    def __init__(self, file, archive: zipfile.ZipFile, prefix: str):
        super().__init__(file)
        self.archive = archive
        self.prefix = prefix
        self.storages: dict[str, torch.Tensor] = {}
        self.classes: dict[str, type] = {}

    def find_class(self, module: str, name: str):
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild_tensor
        if (module, name) == ("collections", "OrderedDict"):
            return dict  # only ever the (empty) backward-hooks argument of a tensor
        if module == "torch.jit._pickle" and name in _TYPED_LISTS:
            return _TYPED_LISTS[name]
        if module == "torch" and name in STORAGE_DTYPES:
            return _Storage(STORAGE_DTYPES[name])
        if module == "__torch__" or module.startswith("__torch__."):
            qualname = f"{module}.{name}"
            if qualname not in self.classes:
                self.classes[qualname] = type(name, (_ScriptObject,), {"qualname": qualname})
            return self.classes[qualname]
        raise ArchiveError(f"it names {module}.{name}, which a weights-only reader does not resolve")

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage" and isinstance(pid[1], _Storage)):
            raise ArchiveError(f"unexpected persistent id {pid!r:.80}")
        _, storage, key, _location, numel = pid
        if key not in self.storages:
            record = f"{self.prefix}/data/{key}"
            info = self.archive.getinfo(record)
            itemsize = torch.empty((), dtype=storage.dtype).element_size()
            if info.file_size != numel * itemsize:
                raise ArchiveError(f"record {record} holds {info.file_size} bytes, not {numel} x {itemsize}")
            buf = bytearray(info.file_size)
            with self.archive.open(info) as f:
                f.readinto(buf)
            flat = torch.frombuffer(buf, dtype=storage.dtype) if numel else torch.empty(0, dtype=storage.dtype)
            self.storages[key] = flat
        return self.storages[key]


def _archive_prefix(archive: zipfile.ZipFile) -> str | None:
    """The archive's top folder when it is a TorchScript archive (it has a ``constants.pkl``), else None."""
    names = archive.namelist()
    tops = {n.split("/", 1)[0] for n in names if n.count("/") == 1 and n.endswith("/constants.pkl")}
    if len(tops) != 1:
        return None
    top = tops.pop()
    return top if f"{top}/data.pkl" in names else None


def is_torchscript_archive(path: str | Path) -> bool:
    try:
        with zipfile.ZipFile(path) as archive:
            return _archive_prefix(archive) is not None
    except (OSError, zipfile.BadZipFile):
        return False


def _collect(obj, prefix: str, out: dict[str, torch.Tensor], depth: int = 0) -> None:
    if depth > 64:
        raise ArchiveError("its module tree is nested more than 64 levels deep")
    state = getattr(obj, "state", None)
    if not isinstance(state, dict):
        return
    for name, value in state.items():
        if isinstance(value, torch.Tensor):
            out[prefix + name] = value
        elif isinstance(value, _ScriptObject):
            _collect(value, f"{prefix}{name}.", out, depth + 1)


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The parameters and buffers of a TorchScript archive, by name, without executing anything in it."""
    try:
        with zipfile.ZipFile(path) as archive:
            prefix = _archive_prefix(archive)
            if prefix is None:
                raise ArchiveError("it is not a TorchScript archive (no data.pkl next to a constants.pkl)")
            byteorder = f"{prefix}/byteorder"
            if byteorder in archive.namelist() and archive.read(byteorder).strip() not in (b"little", b""):
                raise ArchiveError("its tensors are stored big-endian; only little-endian archives are read")
            with archive.open(f"{prefix}/data.pkl") as f:
                root = _Unpickler(f, archive, prefix).load()
    except (OSError, zipfile.BadZipFile, KeyError, pickle.UnpicklingError, EOFError) as exc:
        raise ArchiveError(f"it could not be read as a TorchScript archive ({type(exc).__name__}: {exc})") from None
    if not isinstance(root, _ScriptObject):
        raise ArchiveError("its data.pkl does not hold a TorchScript module")
    out: dict[str, torch.Tensor] = {}
    _collect(root, "", out)
    if not out:
        raise ArchiveError("it holds no tensors")
    return out


def is_openai_clip(state_dict: dict) -> bool:
    """True for the key layout of OpenAI's CLIP archives (the marker buffers and both towers' weights)."""
    return all(k in state_dict for k in (*OPENAI_MARKERS, "text_projection", "token_embedding.weight")) and (
        "visual.proj" in state_dict or "visual.attnpool.c_proj.weight" in state_dict)
