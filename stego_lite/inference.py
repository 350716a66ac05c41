"""Segment your own images with a trained STEGO model: label maps and colour overlays.

    model = load_checkpoint("cocostuff27")                         # or a STEGO .ckpt, or a save_model file
    results = stego_lite.segment("photos/", model, crf=True)       # a folder, files, PIL images or arrays
    results[0].cluster, results[0].cluster_overlay                  # (H, W) ids, (H, W, 3) uint8, at the
                                                                    # input image's size
    write_segmentations(results, "out/")                            # PNG masks and overlays, atomically
    written, failed = segment_folder("photos/", model, "out/")     # one by one; unreadable files reported

The same from a shell: `python -m stego_lite segment --checkpoint cocostuff27 --images photos --out out`.

Masks and overlays come at each input image's own size (the label map is resized by nearest neighbour,
so ids stay ids): they overlay the image. `keep_model_res=True` keeps the model's resolution instead
(shorter side `res`, trimmed to the patch grid). Output files are named after the input's stem; two
inputs with the same stem (photo.jpg, photo.png) are refused before anything is written.

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
ImageLike = Union[str, os.PathLike, Image.Image, np.ndarray, torch.Tensor]
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
    image: np.ndarray          # (H, W, 3) uint8: the input image (keep_model_res: as the model saw it)
    cluster: np.ndarray        # (H, W) int64 cluster ids (class ids when an assignment was given; -1 unmatched)
    linear: np.ndarray         # (H, W) int64 linear-probe classes
    cluster_overlay: np.ndarray  # (H, W, 3) uint8, image blended with the cluster colours
    linear_overlay: np.ndarray   # (H, W, 3) uint8


def list_images(folder: str | os.PathLike) -> list[Path]:
    """Regular image files directly inside `folder` (by suffix), sorted by name."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"no folder {folder}")
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def check_unique_names(paths: Iterable[Path]) -> None:
    """ValueError naming the files whose outputs would overwrite each other (the same stem)."""
    by_stem: dict[str, list[str]] = {}
    for path in paths:
        by_stem.setdefault(Path(path).stem, []).append(Path(path).name)
    clashes = [" and ".join(names) for names in by_stem.values() if len(names) > 1]
    if clashes:
        raise ValueError(f"{'; '.join(clashes)} would write the same output files (they are named after "
                         "the file name without its extension): rename one of each, or segment them into "
                         "different --out folders")


def _as_items(images: ImageLike | Iterable[ImageLike]) -> list[tuple[str, ImageLike]]:
    """(name, image-like) pairs from a folder, a file, an image, an array, a tensor or a list of these."""
    if isinstance(images, (str, os.PathLike)) and Path(images).is_dir():
        return [(p.stem, p) for p in list_images(images)]
    single = (str, os.PathLike, Image.Image)
    if isinstance(images, single) or (isinstance(images, (np.ndarray, torch.Tensor)) and images.ndim <= 3):
        images = [images]
    items = list(images)
    paths = [x for x in items if isinstance(x, (str, os.PathLike))]
    check_unique_names(paths)
    return [(Path(x).stem if isinstance(x, (str, os.PathLike)) else f"image{i}", x) for i, x in enumerate(items)]


def _to_pil(image: ImageLike) -> Image.Image:
    if isinstance(image, (str, os.PathLike)):
        return read_rgb(image)
    if isinstance(image, torch.Tensor):
        image = _tensor_to_array(image)
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8:
            raise ValueError(f"arrays must be uint8 (H, W[, 3]), got {image.dtype}; scale to 0..255 first")
        image = Image.fromarray(image)
    if not isinstance(image, Image.Image):
        raise TypeError(f"cannot segment a {type(image).__name__}: pass a path, a folder, a PIL image, a "
                        "uint8 array (H, W[, 3]) or a tensor (3, H, W)")
    return image.convert("RGB")


def _tensor_to_array(image: torch.Tensor) -> np.ndarray:
    """A (3, H, W) or (H, W) tensor, uint8 or float in [0, 1] (as torchvision's ToTensor gives) -> uint8."""
    t = image.detach().cpu()
    if t.ndim == 3 and t.shape[0] in (1, 3):
        t = t.permute(1, 2, 0).squeeze(-1)
    if t.ndim not in (2, 3) or (t.ndim == 3 and t.shape[-1] != 3):
        raise ValueError(f"a tensor image is (3, H, W) or (H, W), got shape {tuple(image.shape)}")
    if t.is_floating_point():
        if t.min() < 0 or t.max() > 1:
            raise ValueError("a float tensor image holds values in [0, 1] (as ToTensor gives), got "
                             f"{t.min().item():.3g}..{t.max().item():.3g}; pass un-normalised images")
        t = (t * 255).round()
    return t.to(torch.uint8).numpy()


def overlay(image: np.ndarray, ids: np.ndarray, palette: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Blend colour-coded ids into an image: (H, W, 3) uint8, (H, W) ids -> (H, W, 3) uint8; -1 stays bare."""
    colours = palette[np.clip(ids, 0, len(palette) - 1)].astype(np.float32)
    blended = (1 - alpha) * image.astype(np.float32) + alpha * colours
    blended[ids < 0] = image[ids < 0]
    return blended.round().astype(np.uint8)


@torch.no_grad()
def segment(images: ImageLike | Iterable[ImageLike], model: StegoModel, *, crf: bool = False,
            res: int | None | str = "model", flip_tta: bool = True, assignment: np.ndarray | None = None,
            device: torch.device | str = "cpu", keep_model_res: bool = False) -> list[Segmentation]:
    """Segment each image: shorter side resized to `res` (None keeps the size), trimmed to the patch grid;
    the label maps and overlays then come back at the input image's size (`keep_model_res`: at the
    model's).

    res="model" takes the model's own size (`model.res`: what it was trained or evaluated at), else 320.
    `assignment` (class -> cluster, as `evaluate(...)["cluster"]["assignment"]`) renames cluster ids to
    class ids. Raises OSError naming the file for an unreadable image; `segment_folder` and the command
    line report such files and carry on with the others.
    """
    items = _as_items(images)   # refuses inputs whose outputs would overwrite each other
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
    for name, item in items:
        pil = _to_pil(item)
        img, _ = transform(pil, np.zeros((pil.height, pil.width), dtype=np.int64))
        img = img[None].to(device)
        cluster_lp, linear_lp = model.log_probs(img, flip_tta=flip_tta)
        if crf:
            cluster_lp, linear_lp = crf_refine(img, cluster_lp).log(), crf_refine(img, linear_lp).log()
        cluster = cluster_lp.argmax(1)[0].cpu()
        if assignment is not None:
            cluster = relabel(cluster, assignment)
        linear = linear_lp.argmax(1)[0].cpu()
        if keep_model_res:
            shown = _displayed(img[0].cpu())
        else:
            shown = np.asarray(pil)
            cluster, linear = (resize_labels(ids, (pil.height, pil.width)) for ids in (cluster, linear))
        cluster, linear = cluster.numpy(), linear.numpy()
        palette = class_palette if assignment is not None else cluster_palette
        results.append(Segmentation(name, shown, cluster, linear, overlay(shown, cluster, palette),
                                    overlay(shown, linear, class_palette)))
    return results


def resize_labels(ids: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """A label map (h, w) int64 at `size` (H, W) by nearest neighbour (pixel centres): ids stay ids."""
    if tuple(ids.shape) == tuple(size):
        return ids
    scaled = torch.nn.functional.interpolate(ids[None, None].double(), size=size, mode="nearest-exact")
    return scaled[0, 0].long()


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
    `<name>_cluster_overlay.png` / `<name>_linear_overlay.png` into `out`; returns the paths.

    Two results of the same name are refused (ValueError) before anything is written."""
    results = list(results)
    names = [r.name for r in results]
    if len(set(names)) != len(names):
        raise ValueError(f"several results are named {sorted({n for n in names if names.count(n) > 1})}: "
                         "their files would overwrite each other; give them distinct names")
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
    files = list_images(folder)
    check_unique_names(files)
    written, failed = [], []
    for path in progress_bar(files, enabled=progress, desc="segment", unit="image"):
        try:
            results = segment(path, model, **kwargs)
        except (OSError, ValueError) as err:
            # an unreadable file: PIL's own reason says it best (the path is reported beside it)
            failed.append((path, str(err.__cause__ or err) if isinstance(err, OSError) else str(err)))
            continue
        written += write_segmentations(results, out)
    return written, failed
