"""Five-crop preparation, as STEGO's crop_datasets.py: four corners and the centre at crop ratio 0.5.

Each full-resolution image i gives crops 5i..5i+4 (torchvision's five_crop order: top-left, top-right,
bottom-left, bottom-right, centre), each (int(H * ratio), int(W * ratio)). Images are saved as JPEG
(Pillow's default quality 75, like STEGO), labels as PNG holding label + 1 (so -1 -> 0).
The split is written into a temporary folder and moved into place; a manifest written last marks it done.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..env import data_dir
from ..files import folder_lock, read_json, replace_tree, staging_dir, write_json_atomic
from ..progress import progress as progress_bar
from .base import SegDataset


def five_crop_boxes(height: int, width: int, crop_ratio: float = 0.5) -> list[tuple[int, int, int, int]]:
    """(top, left, h, w) of the five crops of an (H, W) image: corners TL, TR, BL, BR, then the centre."""
    if not 0 < crop_ratio <= 1:
        raise ValueError(f"crop_ratio must be in (0, 1], got {crop_ratio}")
    h, w = int(height * crop_ratio), int(width * crop_ratio)
    if h == 0 or w == 0:
        raise ValueError(f"crop ratio {crop_ratio} of an image of size {(height, width)} is empty")
    centre = (int(round((height - h) / 2.0)), int(round((width - w) / 2.0)))   # torchvision's center_crop
    return [(0, 0, h, w), (0, width - w, h, w), (height - h, 0, h, w), (height - h, width - w, h, w),
            (*centre, h, w)]


_WORKER: dict[str, Any] = {}


def _init_worker(dataset: SegDataset) -> None:
    _WORKER["dataset"] = dataset


def _crop_range(args: tuple[SegDataset | None, int, int, Path, Path, float, int]) -> None:
    """Write the crops of source images [start, stop)."""
    dataset, start, stop, image_dir, label_dir, crop_ratio, quality = args
    dataset = dataset or _WORKER["dataset"]
    for i in range(start, stop):
        image, label = dataset.load(i)
        if label.max(initial=-1) > 254:
            raise ValueError(f"image {i} of {dataset!r} has class id {label.max()}; "
                             "a +1-encoded 8-bit PNG label holds ids up to 254")
        img = np.asarray(image)                    # (H, W, 3) uint8
        stored = (label + 1).astype(np.uint8)      # (H, W); 0 = ignore
        for k, (top, left, h, w) in enumerate(five_crop_boxes(*label.shape, crop_ratio)):
            n = 5 * i + k
            box = (slice(top, top + h), slice(left, left + w))
            Image.fromarray(img[box]).save(image_dir / f"{n}.jpg", "JPEG", quality=quality)
            Image.fromarray(stored[box]).save(label_dir / f"{n}.png", "PNG")


def five_crop(source: str | SegDataset, split: str = "train", *, root: str | Path | None = None,
              out_root: str | Path | None = None, crop_ratio: float = 0.5, jpeg_quality: int = 75,
              workers: int = 0, overwrite: bool = False, progress: bool = False) -> Path:
    """Write the five-crop version of a dataset split; return `<out_root>/cropped/<name>_five_crop_<ratio>`.

    `source` is a dataset name ("cocostuff27", "cityscapes", "potsdam", read from `root`) or any
    `SegDataset` (its `load` gives the full-resolution image and label). The result is read back by
    `FiveCropDataset(name, split, root=out_root, crop_ratio=crop_ratio)`. An already complete split with
    the same source size is kept unless `overwrite`. `workers` > 0 crops in that many processes.
    """
    if isinstance(source, str):
        from .stego_sets import DATASETS

        if source not in DATASETS:
            raise ValueError(f"unknown dataset {source!r}; choose one of {sorted(DATASETS)} "
                             "or pass a dataset object")
        source = DATASETS[source](root, split)
    base = Path(out_root or root or data_dir()).expanduser()
    folder = base / "cropped" / f"{source.name}_five_crop_{crop_ratio}"
    five_crop_boxes(64, 64, crop_ratio)   # validates the ratio before any work
    record = {"source": source.name, "split": split, "n_source": len(source), "n_crops": 5 * len(source),
              "crop_ratio": crop_ratio, "jpeg_quality": jpeg_quality}
    manifest = folder / f"{split}.json"
    with folder_lock(folder):
        if not overwrite and read_json(manifest) == record:
            return folder
        manifest.unlink(missing_ok=True)
        with staging_dir(folder, split) as tmp:
            image_dir, label_dir = tmp / "img" / split, tmp / "label" / split
            image_dir.mkdir(parents=True)
            label_dir.mkdir(parents=True)
            step = 16
            in_process = None if workers else source   # workers get the dataset once, from _init_worker
            jobs = [(in_process, s, min(s + step, len(source)), image_dir, label_dir, crop_ratio,
                     jpeg_quality) for s in range(0, len(source), step)]
            _run(jobs, source, workers, progress)
            replace_tree(image_dir, folder / "img" / split)
            replace_tree(label_dir, folder / "label" / split)
        write_json_atomic(manifest, record)
    return folder


def _run(jobs: list, source: SegDataset, workers: int, progress: bool) -> None:
    bar = progress_bar(enabled=progress, total=len(jobs), desc="five-crop", unit="chunk")
    if workers:
        from stego_lite.workers import process_pool

        n = min(workers, os.cpu_count() or 1)
        with process_pool(n, _init_worker, (source,)) as pool:
            for _ in pool.map(_crop_range, jobs):
                bar.update()
    else:
        for job in jobs:
            _crop_range(job)
            bar.update()
    bar.close()
