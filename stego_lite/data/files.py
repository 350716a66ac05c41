"""Reading images and label maps, and writing folders so that a reader never sees half of one.

Writers build a folder under a temporary name beside its destination and rename it into place when
it is complete; a JSON manifest written last (by `write_json_atomic`) marks a split as finished.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError


def _open(path: Path, what: str, advice_end: str) -> Image.Image:
    """Open and fully decode an image file; OSError naming the file if it is truncated or not an image."""
    try:
        with Image.open(path) as img:
            img.load()
    except FileNotFoundError:
        raise
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as err:
        raise OSError(f"cannot read {what} {path}: {err}. Replace or delete the file{advice_end}") from err
    return img


def read_rgb(path: str | Path) -> Image.Image:
    """Open an image file as 8-bit RGB: grayscale, palette, RGBA (alpha dropped), 16-bit and CMYK convert.

    Raises OSError naming the file when it is missing, truncated or not an image.
    """
    path = Path(path)
    img = _open(path, "image", "; datasets never skip an unreadable image silently.")
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):   # high bit depth grayscale: rescale to 8 bits
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I;16") else max(float(arr.max()), 1.0)
        arr = np.clip(arr / top * 255 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(np.repeat(arr[..., None], 3, axis=2))
    if img.mode in ("P", "PA", "LA", "RGBA") or "transparency" in img.info:
        img = img.convert("RGBA")   # palette and alpha: resolve the palette first, then drop alpha
    return img.convert("RGB")


def read_label(path: str | Path) -> np.ndarray:
    """Read a single-channel label PNG (mode L, P or 16-bit) as raw int64 ids: -> (H, W).

    A palette ('P') PNG gives its palette *indices*, which is how label PNGs store class ids.
    RGB(A) label images are refused: their colours would have to be mapped to ids first.
    """
    path = Path(path)
    img = _open(path, "label map", ".")
    if img.mode not in ("L", "P", "I", "I;16", "I;16B", "I;16L"):
        raise ValueError(f"label map {path} has mode {img.mode!r}; expected a single-channel PNG "
                         "(mode L, P or 16-bit) holding class ids. Convert colour-coded labels to ids first.")
    return np.asarray(img).astype(np.int64)


def apply_lut(raw: np.ndarray, lut: np.ndarray) -> np.ndarray:
    """Map raw ids through a lookup table; ids outside the table become -1 (ignore): (H, W) -> (H, W)."""
    out = np.full(raw.shape, -1, dtype=np.int64)
    inside = (raw >= 0) & (raw < len(lut))
    out[inside] = lut[raw[inside]]
    return out


def write_atomic(path: str | os.PathLike, write: Callable[[Path], object]) -> None:
    """Create `path` by `write(tmp)` on a temporary file beside it, then a rename: readers see the whole
    file or none, and a failed write leaves nothing behind. Every writer of caches and outputs uses it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json_atomic(path: Path, obj: Any) -> None:
    """Write JSON to `path` through a temporary file and a rename, so readers see all of it or nothing."""
    write_atomic(path, lambda tmp: tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n"))


def read_json(path: Path) -> dict[str, Any] | None:
    """A manifest's content, or None if it is missing or unreadable (then its split is rebuilt)."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


@contextlib.contextmanager
def folder_lock(folder: Path) -> Iterator[None]:
    """Hold an exclusive lock on `folder/.lock` (POSIX flock; no-op where fcntl is missing)."""
    folder.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:   # Windows: writers are not expected to race there
        yield
        return
    with open(folder / ".lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextlib.contextmanager
def staging_dir(parent: Path, prefix: str) -> Iterator[Path]:
    """A temporary folder inside `parent` (same file system, so renames out of it are atomic).

    It is removed on exit, whatever is left in it: move the finished parts out before leaving.
    """
    parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{prefix}-", dir=parent))
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def replace_tree(src: Path, dst: Path) -> None:
    """Move folder `src` to `dst`, replacing what was there (dst's old content is deleted first)."""
    if dst.exists():
        shutil.rmtree(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    os.replace(src, dst)
