"""Results computed once and kept on disk, keyed by what decides them: the one recipe behind every cache.

    path = keyed_path(cache_dir() / "analysis", "heads-seed0", spec)   # <folder>/<stem>-<digest>.pt
    value = load_or_compute(path, spec, compute, version=1)

A spec is anything JSON can write (dicts, lists, strings, numbers); `digest(spec)` hashes its canonical
JSON. It must name only what decides the result, never where the data or the cache lie, so that moving
either does not force a recompute. The file holds the value with its spec, version and a checksum of its
content; a read verifies all three, so a file of another spec or version, or one whose bytes were damaged,
is computed again. Values are what `torch.load(weights_only=True)` reads back: tensors, numbers,
strings, and lists and dicts of them.

Writes are atomic (temporary file, then rename) under an OS lock on the result's own lock file, so
concurrent processes compute once and a killed one leaves neither a lock nor a partial file that counts:
temporary files of dead writers are removed by the next writer.
"""
from __future__ import annotations

import hashlib
import json
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import torch

from stego_lite.files import file_lock, remove_stale_temporaries, write_atomic

T = TypeVar("T")
_DAMAGED = (OSError, RuntimeError, EOFError, ValueError, KeyError, TypeError, pickle.UnpicklingError)


def digest(spec: Any, length: int = 16) -> str:
    """A short hex digest of `spec`'s canonical JSON (sorted keys; other objects by their str)."""
    text = json.dumps(spec, sort_keys=True, default=str)
    return hashlib.sha1(text.encode()).hexdigest()[:length]


def keyed_path(folder: Path, stem: str, spec: Any, suffix: str = ".pt") -> Path:
    """Where the result for `spec` lives: <folder>/<stem>-<digest(spec)><suffix>."""
    return Path(folder) / f"{stem}-{digest(spec)}{suffix}"


def checksum(value: Any) -> str:
    """A digest of a value's content: tensors by dtype, shape and bytes, containers recursively."""
    h = hashlib.sha1()
    _update(h, value)
    return h.hexdigest()


def _update(h: Any, value: Any) -> None:
    if isinstance(value, torch.Tensor):
        t = value.detach().cpu().contiguous()
        h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.view(-1).view(torch.uint8).numpy().tobytes())
    elif isinstance(value, dict):
        h.update(f"D{len(value)}".encode())
        for k in sorted(value, key=str):
            h.update(f"K{k!r}".encode())
            _update(h, value[k])
    elif isinstance(value, list | tuple):
        h.update(f"L{len(value)}".encode())
        for item in value:
            _update(h, item)
    else:
        h.update(f"V{value!r}".encode())


def read(path: Path, spec: Any, *, version: int, mmap: bool = False) -> Any | None:
    """The value stored at `path` for `spec` and `version`, or None if it is missing, stale or damaged."""
    if not path.is_file():
        return None
    try:
        stored = torch.load(path, map_location="cpu", mmap=mmap, weights_only=True)
        if stored["spec"] != canonical(spec) or stored["version"] != version:
            return None
        if stored["checksum"] != checksum(stored["value"]):
            return None
        return stored["value"]
    except _DAMAGED:
        return None


def write(path: Path, spec: Any, value: Any, *, version: int) -> None:
    """Store `value` at `path` with its spec, version and checksum, atomically."""
    record = {"spec": canonical(spec), "version": version, "checksum": checksum(value), "value": value}
    write_atomic(path, lambda tmp: torch.save(record, tmp))


def load_or_compute(path: Path, spec: Any, compute: Callable[[], T], *, version: int,
                    mmap: bool = False) -> T:
    """The value cached at `path` for `spec`, or `compute()` stored there and returned as read back.

    Under the file's lock, a second process waits for the first and then reads its result. With `mmap`,
    tensors are memory-mapped, so several processes share one copy in memory.
    """
    value = read(path, spec, version=version, mmap=mmap)
    if value is not None:
        return value
    with file_lock(path.with_name(f".{path.name}.lock"), what=str(path)):
        value = read(path, spec, version=version, mmap=mmap)   # another process may have written it
        if value is not None:
            return value
        remove_stale_temporaries(path)
        write(path, spec, compute(), version=version)
    value = read(path, spec, version=version, mmap=mmap)
    if value is None:
        raise OSError(f"{path} could not be read back after writing it; is the disk full?")
    return value


def canonical(spec: Any) -> Any:
    """The spec as JSON reads it back (tuples become lists, keys strings), so stored and asked compare."""
    return json.loads(json.dumps(spec, sort_keys=True, default=str))
