"""Reading images and label maps: every unreadable file is an error that names it, never a silent skip.

The atomic writers and locks that datasets use to build their folders are in `stego_lite.files`
(re-exported here).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from stego_lite.files import (  # noqa: F401  (re-exported: the writers datasets use)
    folder_lock, read_json, replace_tree, staging_dir, write_atomic, write_json_atomic,
)


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
