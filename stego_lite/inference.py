"""Segment your own images with a trained STEGO model: label maps and colour overlays.

    model = load_checkpoint("cocostuff27")                         # or a STEGO .ckpt, or a save_model file
    results = stego_lite.segment("photos/", model, crf=True)       # a folder, files, PIL images or arrays
    results[0].cluster, results[0].cluster_overlay                  # (H, W) ids, (H, W, 3) uint8
    write_segmentations(results, "out/")                            # PNG masks and overlays, atomically
    written, failed = segment_folder("photos/", model, "out/")     # one by one; unreadable files reported

The same from a shell: `python -m stego_lite segment --checkpoint cocostuff27 --images photos --out out`.

`cluster` holds the cluster probe's unsupervised segments. Their ids mean nothing by themselves; with
an `assignment` from an evaluation (`evaluate(...)["cluster"]["assignment"]`, class -> cluster) they
are renamed to class ids. `linear` holds the (supervised) linear probe's classes.
"""
from __future__ import annotations

import os
import pickle
from collections.abc import Iterable
from pathlib import Path
from typing import NamedTuple, Union

import numpy as np
import torch
from PIL import Image

from stego_lite.data import SegTransform, pascal_palette, read_rgb
from stego_lite.evaluate import crf_refine
from stego_lite.files import write_atomic
from stego_lite.metrics import relabel
from stego_lite.model import ModelFileError, StegoModel, load_model
from stego_lite.progress import progress as progress_bar

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
ImageLike = Union[str, os.PathLike, Image.Image, np.ndarray]
DEFAULT_RES = 320  # STEGO's evaluation size, for a model that does not say which size it wants


def load_checkpoint(checkpoint: str | os.PathLike, *, progress: bool = True) -> StegoModel:
    """A model to segment with: a released STEGO name (see released.RELEASED; downloaded once), the path
    of a STEGO Lightning .ckpt file, or a file written by `evaluate.save_model`."""
    from stego_lite.released import RELEASED, load_released

    if isinstance(checkpoint, str) and checkpoint in RELEASED:
        return StegoModel.from_released(load_released(checkpoint, progress=progress))
    path = Path(checkpoint).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"{str(checkpoint)!r} is neither a released STEGO model "
                                f"({', '.join(RELEASED)}) nor a file: pass one of those names, the path of a "
                                "STEGO .ckpt file, or a model file written by stego_lite.evaluate.save_model")
    try:
        return load_model(path, progress=progress)
    except ModelFileError as not_ours:
        try:
            return StegoModel.from_released(load_released(path, progress=progress))
        except (ValueError, pickle.UnpicklingError) as not_stego:
            raise ValueError(f"{path} is neither a stego_lite model file nor a STEGO checkpoint.\n"
                             f"  As a model file: {not_ours}\n  As a STEGO checkpoint: {not_stego}") from None


class Segmentation(NamedTuple):
    name: str                  # file stem, or "image<i>" for in-memory images
    image: np.ndarray          # (H, W, 3) uint8, the image as the model saw it (resized, trimmed)
    cluster: np.ndarray        # (H, W) int64 cluster ids (class ids when an assignment was given; -1 unmatched)
    linear: np.ndarray         # (H, W) int64 linear-probe classes
    cluster_overlay: np.ndarray  # (H, W, 3) uint8, image blended with the cluster colours
    linear_overlay: np.ndarray   # (H, W, 3) uint8


def list_images(folder: str | os.PathLike) -> list[Path]:
    """Image files directly inside `folder`, sorted by name."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"no folder {folder}")
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def _as_items(images: ImageLike | Iterable[ImageLike]) -> list[tuple[str, ImageLike]]:
    """(name, image-like) pairs from a folder, a file, an image, an array or a list of these."""
    if isinstance(images, (str, os.PathLike)) and Path(images).is_dir():
        return [(p.stem, p) for p in list_images(images)]
    if isinstance(images, (str, os.PathLike, Image.Image)) or (isinstance(images, np.ndarray) and images.ndim <= 3):
        images = [images]
    return [(Path(x).stem if isinstance(x, (str, os.PathLike)) else f"image{i}", x) for i, x in enumerate(images)]


def _to_pil(image: ImageLike) -> Image.Image:
    if isinstance(image, (str, os.PathLike)):
        return read_rgb(image)
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8:
            raise ValueError(f"arrays must be uint8 (H, W[, 3]), got {image.dtype}; scale to 0..255 first")
        image = Image.fromarray(image)
    return image.convert("RGB")


def overlay(image: np.ndarray, ids: np.ndarray, palette: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Blend colour-coded ids into an image: (H, W, 3) uint8, (H, W) ids -> (H, W, 3) uint8; -1 stays bare."""
    colours = palette[np.clip(ids, 0, len(palette) - 1)].astype(np.float32)
    blended = (1 - alpha) * image.astype(np.float32) + alpha * colours
    blended[ids < 0] = image[ids < 0]
    return blended.round().astype(np.uint8)


@torch.no_grad()
def segment(images: ImageLike | Iterable[ImageLike], model: StegoModel, *, crf: bool = False,
            res: int | None | str = "model", flip_tta: bool = True, assignment: np.ndarray | None = None,
            device: torch.device | str = "cpu") -> list[Segmentation]:
    """Segment each image: shorter side resized to `res` (None keeps the size), trimmed to the patch grid.

    res="model" takes the model's own size (`model.res`: what it was trained or evaluated at), else 320.
    `assignment` (class -> cluster, as `evaluate(...)["cluster"]["assignment"]`) renames cluster ids to
    class ids. Raises OSError naming the file for an unreadable image; `segment_folder` and the command
    line report such files and carry on with the others.
    """
    model.eval().to(device)
    if res == "model":
        res = model.res or DEFAULT_RES
    n_clusters = model.cluster_probe.clusters.shape[0]
    if assignment is not None:
        assignment = check_assignment(assignment, model.n_classes, n_clusters)
    transform = SegTransform(res, crop="none", patch_size=model.backbone.patch_size)
    cluster_palette = pascal_palette(max(n_clusters, model.n_classes))
    class_palette = getattr(model, "palette", None)
    class_palette = pascal_palette(model.n_classes) if class_palette is None else np.asarray(class_palette)
    results = []
    for name, item in _as_items(images):
        pil = _to_pil(item)
        img, _ = transform(pil, np.zeros((pil.height, pil.width), dtype=np.int64))
        img = img[None].to(device)
        cluster_lp, linear_lp = model.log_probs(img, flip_tta=flip_tta)
        if crf:
            cluster_lp, linear_lp = crf_refine(img, cluster_lp).log(), crf_refine(img, linear_lp).log()
        cluster = cluster_lp.argmax(1)[0].cpu()
        if assignment is not None:
            cluster = relabel(cluster, assignment)
        cluster, linear = cluster.numpy(), linear_lp.argmax(1)[0].cpu().numpy()
        shown = _displayed(img[0].cpu())
        palette = class_palette if assignment is not None else cluster_palette
        results.append(Segmentation(name, shown, cluster, linear, overlay(shown, cluster, palette),
                                    overlay(shown, linear, class_palette)))
    return results


def check_assignment(assignment, n_classes: int, n_clusters: int) -> np.ndarray:
    """A class -> cluster assignment as int64 (n_classes,), distinct cluster ids in [0, n_clusters)."""
    assignment = np.asarray(assignment)
    if (assignment.shape != (n_classes,) or not np.issubdtype(assignment.dtype, np.integer)
            or len(set(assignment.tolist())) != n_classes or assignment.min() < 0
            or assignment.max() >= n_clusters):
        raise ValueError(f"an assignment gives each of the {n_classes} classes its own cluster id in "
                         f"[0, {n_clusters}), as evaluate(...)['cluster']['assignment'] does; got "
                         f"{assignment.tolist()}")
    return assignment.astype(np.int64)


def _displayed(img: torch.Tensor) -> np.ndarray:
    from stego_lite.data import denormalize

    return (denormalize(img).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)


def _save_png(array: np.ndarray, path: Path) -> None:
    """Write a PNG atomically: a temporary file in the same folder, then a rename."""
    write_atomic(path, lambda tmp: Image.fromarray(array).save(tmp, format="PNG"))


def write_segmentations(results: Iterable[Segmentation], out: str | os.PathLike) -> list[Path]:
    """Write `<name>_cluster.png` / `<name>_linear.png` (ids as 8-bit PNG, 255 = unmatched) and
    `<name>_cluster_overlay.png` / `<name>_linear_overlay.png` into `out`; returns the paths."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for r in results:
        for kind, array in (("cluster", r.cluster), ("linear", r.linear)):
            path = out / f"{r.name}_{kind}.png"
            _save_png(np.where(array < 0, 255, array).astype(np.uint8), path)
            written.append(path)
        for kind, array in (("cluster_overlay", r.cluster_overlay), ("linear_overlay", r.linear_overlay)):
            path = out / f"{r.name}_{kind}.png"
            _save_png(array, path)
            written.append(path)
    return written


def segment_folder(folder: str | os.PathLike, model: StegoModel, out: str | os.PathLike, *,
                   progress: bool = False, **kwargs) -> tuple[list[Path], list[tuple[Path, str]]]:
    """Segment every image of `folder` into `out`, one by one; a file that cannot be read (or is too
    small to segment) is reported, not fatal. `kwargs` go to `segment`.

    Returns (written paths, [(file, error message)]).
    """
    if kwargs.get("assignment") is not None:  # checked once here: a bad one is not a per-image problem
        kwargs["assignment"] = check_assignment(kwargs["assignment"], model.n_classes,
                                                model.cluster_probe.clusters.shape[0])
    written, failed = [], []
    for path in progress_bar(list_images(folder), enabled=progress, desc="segment", unit="image"):
        try:
            results = segment(path, model, **kwargs)
        except (OSError, ValueError) as err:
            # an unreadable file: PIL's own reason says it best (the path is reported beside it)
            failed.append((path, str(err.__cause__ or err) if isinstance(err, OSError) else str(err)))
            continue
        written += write_segmentations(results, out)
    return written, failed
