"""The real STEGO datasets, read from STEGO's on-disk layout (reference §4.1), and a folder of own images.

`root` is always the data root that holds `cocostuff/`, `cityscapes/`, `potsdam/` and `cropped/`
(STEGO's `pytorch_data_dir`); it defaults to `stego_lite.env.data_dir()` ($STEGO_LITE_DATA).
Files are listed when a dataset is built and opened when an item is read; a missing one raises
`DatasetNotFoundError` with the expected layout, never a silent skip.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from ..env import data_dir
from .base import DatasetNotFoundError, SegDataset, missing, pascal_palette
from .classes import (
    CITYSCAPES27_CLASSES, CITYSCAPES27_PALETTE, CITYSCAPES_LUT, CLASS_INFO, COCO_LUT, COCOSTUFF27_CLASSES,
    COCOSTUFF27_PALETTE, POTSDAM3_CLASSES, POTSDAM3_PALETTE, POTSDAM_LUT,
)
from .files import apply_lut, read_label, read_rgb
from .transforms import SegTransform, default_transform


def _root(root: str | Path | None) -> Path:
    return Path(root).expanduser() if root is not None else data_dir()


def _read_list(path: Path, kind: str, root: Path) -> list[str]:
    if not path.is_file():
        raise missing(kind, path, root, what="list file")
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def _check_split(split: str, choices: Sequence[str]) -> None:
    if split not in choices:
        raise ValueError(f"unknown split {split!r}; choose one of {list(choices)}")


class CocoStuff27(SegDataset):
    """COCO-Stuff with STEGO's 27 coarse classes (12 things, then 15 stuff); fine 255 -> ignore.

    Lists as in STEGO: train reads `Coco164kFull_Stuff_Coarse.txt`, val the IIC-curated
    `Coco164kFull_Stuff_Coarse_7.txt` (2,175 images); `image_list` picks another file in `curated/<split>/`.
    """

    name = "cocostuff27"
    classes = COCOSTUFF27_CLASSES
    palette = COCOSTUFF27_PALETTE
    _LISTS = {"train": "Coco164kFull_Stuff_Coarse.txt", "val": "Coco164kFull_Stuff_Coarse_7.txt"}

    def __init__(self, root: str | Path | None = None, split: str = "train", *, image_list: str | None = None,
                 transform: SegTransform | None = None) -> None:
        _check_split(split, tuple(self._LISTS))
        super().__init__(transform or default_transform(split))
        self.root, self.split = _root(root), split
        self.folder = self.root / "cocostuff"
        if not self.folder.is_dir():
            raise missing("cocostuff", self.folder, self.root, what="folder")
        subdir = f"{split}2017"
        ids = _read_list(self.folder / "curated" / subdir / (image_list or self._LISTS[split]), "cocostuff",
                         self.root)
        self.image_files = [self.folder / "images" / subdir / f"{i}.jpg" for i in ids]
        self.label_files = [self.folder / "annotations" / subdir / f"{i}.png" for i in ids]

    def __len__(self) -> int:
        return len(self.image_files)

    def load(self, index: int) -> tuple[Image.Image, np.ndarray]:
        for path in (self.image_files[index], self.label_files[index]):
            if not path.is_file():
                raise missing("cocostuff", path, self.root)
        return read_rgb(self.image_files[index]), apply_lut(read_label(self.label_files[index]), COCO_LUT)


class Cityscapes27(SegDataset):
    """Cityscapes (gtFine labelIds) with the 27 classes of labelIds 7..33; other ids -> ignore.

    Files are listed city by city in sorted order (torchvision's Cityscapes, which STEGO uses, follows
    the file system's order instead).
    """

    name = "cityscapes"
    classes = CITYSCAPES27_CLASSES
    palette = CITYSCAPES27_PALETTE

    def __init__(self, root: str | Path | None = None, split: str = "train", *,
                 transform: SegTransform | None = None) -> None:
        _check_split(split, ("train", "val", "test"))
        super().__init__(transform or default_transform(split))
        self.root, self.split = _root(root), split
        self.folder = self.root / "cityscapes"
        image_dir, label_dir = self.folder / "leftImg8bit" / split, self.folder / "gtFine" / split
        for folder in (image_dir, label_dir):
            if not folder.is_dir():
                raise missing("cityscapes", folder, self.root, what="folder")
        self.image_files = sorted(image_dir.glob("*/*_leftImg8bit.png"))
        if not self.image_files:
            raise missing("cityscapes", image_dir / "<city>" / "*_leftImg8bit.png", self.root)
        self.label_files = [
            label_dir / f.parent.name / f.name.replace("_leftImg8bit.png", "_gtFine_labelIds.png")
            for f in self.image_files]
        # an image is found by listing, so a missing one would only shrink the split: its label tells
        listed = set(self.label_files)
        for label in sorted(label_dir.glob("*/*_gtFine_labelIds.png")):
            if label not in listed:
                image = image_dir / label.parent.name / label.name.replace("_gtFine_labelIds", "_leftImg8bit")
                raise missing("cityscapes", image, self.root)

    def __len__(self) -> int:
        return len(self.image_files)

    def load(self, index: int) -> tuple[Image.Image, np.ndarray]:
        for path in (self.image_files[index], self.label_files[index]):
            if not path.is_file():
                raise missing("cityscapes", path, self.root)
        label = apply_lut(read_label(self.label_files[index]), CITYSCAPES_LUT)
        return read_rgb(self.image_files[index]), label


class Potsdam3(SegDataset):
    """ISPRS Potsdam 200-px tiles from IIC's `.mat` files, RGB only, 3 coarse classes (255 -> ignore).

    Splits as in STEGO: train = `labelled_train.txt`, val = `labelled_test.txt`; the splits that contain
    unlabelled tiles (`unlabelled_train`, `all`) give all -1 labels where a tile has no `gt` file.
    """

    name = "potsdam"
    classes = POTSDAM3_CLASSES
    palette = POTSDAM3_PALETTE
    _LISTS = {"train": ("labelled_train.txt",), "val": ("labelled_test.txt",),
              "train+val": ("labelled_train.txt", "labelled_test.txt"),
              "unlabelled_train": ("unlabelled_train.txt",), "all": ("all.txt",)}

    def __init__(self, root: str | Path | None = None, split: str = "train", *,
                 transform: SegTransform | None = None) -> None:
        _check_split(split, tuple(self._LISTS))
        super().__init__(transform or default_transform(split))
        self.root, self.split = _root(root), split
        self.folder = self.root / "potsdam"
        if not self.folder.is_dir():
            raise missing("potsdam", self.folder, self.root, what="folder")
        self.ids = [tile for name in self._LISTS[split]
                    for tile in _read_list(self.folder / name, "potsdam", self.root)]
        self.labels_required = split in ("train", "val", "train+val")

    def __len__(self) -> int:
        return len(self.ids)

    def _mat(self, path: Path, key: str) -> np.ndarray:
        from scipy.io import loadmat

        if not path.is_file():
            raise missing("potsdam", path, self.root)
        try:
            content = loadmat(str(path))
        except Exception as err:   # scipy raises several types for damaged files
            raise OSError(f"cannot read {path}: {err}") from err
        if key not in content:
            found = sorted(k for k in content if not k.startswith("__"))
            raise ValueError(f"{path} has no key {key!r} (found {found}); expected IIC's Potsdam .mat layout")
        return np.asarray(content[key])

    def load(self, index: int) -> tuple[Image.Image, np.ndarray]:
        tile = self.ids[index]
        img = self._mat(self.folder / "imgs" / f"{tile}.mat", "img")
        if img.ndim != 3 or img.shape[2] < 3:
            raise ValueError(f"Potsdam tile {tile}: 'img' has shape {img.shape}, expected (H, W, 3 or 4)")
        img = img[:, :, :3]   # STEGO drops the infrared channel
        if img.dtype != np.uint8:   # floats in [0, 1], as torchvision's to_pil_image assumes
            img = np.clip(np.asarray(img, dtype=np.float64) * 255, 0, 255).astype(np.uint8)
        gt_path = self.folder / "gt" / f"{tile}.mat"
        if gt_path.is_file() or self.labels_required:
            gt = np.squeeze(self._mat(gt_path, "gt"))
            if gt.shape != img.shape[:2]:
                raise ValueError(f"{gt_path}: 'gt' has shape {gt.shape}, the image is {img.shape[:2]}")
            label = apply_lut(gt.astype(np.int64), POTSDAM_LUT)
        else:
            label = np.full(img.shape[:2], -1, dtype=np.int64)
        return Image.fromarray(np.ascontiguousarray(img)), label


class FiveCropDataset(SegDataset):
    """Five-crop folders written by `five_crop` or STEGO's crop_datasets.py: labels stored +1 (0 = ignore).

    Reads `<root>/cropped/<dataset>_five_crop_<crop_ratio>/{img,label}/<split>/<i>.jpg|.png`.
    `classes` defaults to the named dataset's classes (cocostuff27, cityscapes, potsdam).
    """

    def __init__(self, dataset: str = "cocostuff27", split: str = "train", *, root: str | Path | None = None,
                 crop_ratio: float = 0.5, classes: Sequence[str] | None = None,
                 transform: SegTransform | None = None) -> None:
        super().__init__(transform or default_transform(split))
        self.name, self.split, self.root = dataset, split, _root(root)
        if classes is None and dataset not in CLASS_INFO:
            raise ValueError(f"no class names known for {dataset!r}; pass classes=[...] "
                             f"(known: {sorted(CLASS_INFO)})")
        self.classes = tuple(classes) if classes is not None else CLASS_INFO[dataset][0]
        self.palette = CLASS_INFO[dataset][1] if classes is None else pascal_palette(len(self.classes))
        self.folder = self.root / "cropped" / f"{dataset}_five_crop_{crop_ratio}"
        self.image_dir, self.label_dir = self.folder / "img" / split, self.folder / "label" / split
        for folder in (self.image_dir, self.label_dir):
            if not folder.is_dir():
                raise missing("cropped", folder, self.root, what="folder")
        stems = [{f.stem for f in folder.iterdir() if f.suffix == suffix}
                 for folder, suffix in ((self.image_dir, ".jpg"), (self.label_dir, ".png"))]
        self.n = max(len(found) for found in stems)   # crops 0..n-1, each with its image and its label
        for found, folder, suffix in zip(stems, (self.image_dir, self.label_dir), (".jpg", ".png")):
            absent = sorted(set(map(str, range(self.n))) - found, key=int)
            if absent:
                raise missing("cropped", folder / f"{absent[0]}{suffix}", self.root,
                              what=f"crop ({len(absent)} of {self.n} missing)")
        self.lut = np.arange(-1, len(self.classes))   # stored value v -> class v - 1; 0 -> ignore

    def __len__(self) -> int:
        return self.n

    def load(self, index: int) -> tuple[Image.Image, np.ndarray]:
        image_path, label_path = self.image_dir / f"{index}.jpg", self.label_dir / f"{index}.png"
        for path in (image_path, label_path):
            if not path.is_file():
                raise missing("cropped", path, self.root)
        return read_rgb(image_path), apply_lut(read_label(label_path), self.lut)


class ImageFolder(SegDataset):
    """Own images in STEGO's "directory" layout: `<folder>/imgs/<split>/*`, labels optional.

    Labels, if `<folder>/labels/` exists, are `<folder>/labels/<split>/<image stem>.png` with class ids
    0..n_classes-1; 255 and any id >= n_classes become -1. Without labels every label is -1.
    Every non-hidden file in `imgs/<split>/` is read as an image: an unreadable one raises naming it.
    """

    name = "directory"

    def __init__(self, folder: str | Path, split: str = "train", *, n_classes: int | None = None,
                 classes: Sequence[str] | None = None, transform: SegTransform | None = None,
                 files: Sequence[str] | None = None) -> None:
        super().__init__(transform or default_transform(split))
        self.folder, self.split = Path(folder).expanduser(), split
        self.image_dir = self.folder / "imgs" / split
        if not self.image_dir.is_dir():
            raise missing("directory", self.image_dir, self.folder, what="folder")
        if files is None:
            self.image_files = sorted(f for f in self.image_dir.iterdir()
                                      if f.is_file() and not f.name.startswith("."))
        else:   # an explicit list of file names inside imgs/<split>/ (a split list)
            self.image_files = [self.image_dir / f for f in files]
        if not self.image_files:
            raise missing("directory", self.image_dir / "<name>.jpg", self.folder, what="image")
        self.has_labels = (self.folder / "labels").is_dir()
        if classes is not None:
            self.classes = tuple(classes)
        elif n_classes is not None:
            self.classes = tuple(f"class {k}" for k in range(n_classes))
        elif self.has_labels:
            raise ValueError(f"{self.folder} has labels: pass n_classes=... or classes=[...] so that "
                             "ids outside the classes can be ignored")
        self.palette = pascal_palette(len(self.classes))
        self.label_files: list[Path] = []
        if self.has_labels:
            label_dir = self.folder / "labels" / split
            self.label_files = [label_dir / f"{f.stem}.png" for f in self.image_files]
            absent = [p for p in self.label_files if not p.is_file()]
            if absent:
                raise DatasetNotFoundError(
                    f"{len(absent)} of {len(self.label_files)} label maps are missing, e.g. {absent[0]}; "
                    f"every image in {self.image_dir} needs labels/{split}/<image stem>.png, or remove "
                    f"{self.folder / 'labels'} to use the images without labels.")
        ids = np.arange(max(256, self.n_classes))
        self.lut = np.where(ids < self.n_classes, ids, -1)   # 255 and ids >= n_classes -> ignore

    def __len__(self) -> int:
        return len(self.image_files)

    def load(self, index: int) -> tuple[Image.Image, np.ndarray]:
        path = self.image_files[index]
        if not path.is_file():
            raise missing("directory", path, self.folder, what="image")
        image = read_rgb(path)
        if not self.has_labels:
            return image, np.full((image.height, image.width), -1, dtype=np.int64)
        label = apply_lut(read_label(self.label_files[index]), self.lut)
        if label.shape != (image.height, image.width):
            raise ValueError(f"label {self.label_files[index]} has shape {label.shape} but image {path} "
                             f"is {(image.height, image.width)} (H, W)")
        return image, label


DATASETS: dict[str, type[SegDataset]] = {
    "cocostuff27": CocoStuff27, "cityscapes": Cityscapes27, "potsdam": Potsdam3,
}
