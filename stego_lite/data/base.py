"""What every dataset shares: the item format, and errors that show the expected layout.

Items are dicts: `image` (3, H, W) float32 ImageNet-normalised, `label` (H, W) int64 with -1 = ignore,
`index` int. Every dataset has `classes` (names, in label order) and `palette` ((n_classes, 3) uint8).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from torch.utils.data import Dataset, Subset

from .transforms import SegTransform

IGNORE_INDEX = -1
STEGO_ZIP_URL = "https://marhamilresearch4.blob.core.windows.net/stego-public/pytorch_data/{name}.zip"

# Expected folders under the data root (STEGO's `pytorch_data_dir`), and where the data comes from.
LAYOUTS = {
    "cocostuff": """\
cocostuff/images/{train2017,val2017}/<id>.jpg
cocostuff/annotations/{train2017,val2017}/<id>.png      # stuffthingmaps: fine ids 0..181, 255 = unlabeled
cocostuff/curated/{train2017,val2017}/Coco164kFull_Stuff_Coarse.txt, ..._Coarse_7.txt   # image-id lists""",
    "cityscapes": """\
cityscapes/leftImg8bit/{train,val}/<city>/<city>_<seq>_<frame>_leftImg8bit.png
cityscapes/gtFine/{train,val}/<city>/<city>_<seq>_<frame>_gtFine_labelIds.png""",
    "potsdam": """\
potsdam/imgs/<id>.mat      # key "img": RGBIR uint8 (200, 200, 4); only RGB is used
potsdam/gt/<id>.mat        # key "gt": (200, 200) ids 0..5, 255 = unlabeled
potsdam/{labelled_train,labelled_test,unlabelled_train,all}.txt   # id lists""",
    "cropped": """\
cropped/<dataset>_five_crop_<ratio>/img/{train,val}/<i>.jpg
cropped/<dataset>_five_crop_<ratio>/label/{train,val}/<i>.png    # label + 1 (0 = ignore)""",
    "directory": """\
<folder>/imgs/{train,val}/<name>.<jpg|png|...>
<folder>/labels/{train,val}/<name>.png      # optional; single-channel class ids, 255 = ignore""",
}

_SOURCES = {
    "cocostuff": "COCO-Stuff 164k (github.com/nightrome/cocostuff) with IIC's curated lists",
    "cityscapes": "www.cityscapes-dataset.com (leftImg8bit_trainvaltest.zip, gtFine_trainvaltest.zip)",
    "potsdam": "ISPRS Potsdam, cut into 200-px tiles by IIC's potsdam_prepare.py",
}


class DatasetNotFoundError(FileNotFoundError):
    """A dataset file or folder is missing; the message shows the expected layout and where to get it."""


def missing(kind: str, path: Path, root: Path, what: str = "file") -> DatasetNotFoundError:
    """Build the error for a missing `path` of dataset family `kind` (a key of LAYOUTS) under `root`."""
    lines = [f"{what} not found: {path}", f"Expected layout under {root}:"]
    lines += ["  " + line for line in LAYOUTS[kind].splitlines()]
    if kind in _SOURCES:
        url = STEGO_ZIP_URL.format(name=kind)
        lines += [
            "Get STEGO's prepared copy (zip), either of:",
            f"  python -m stego_lite download {kind} --root {root}",
            f"  stego_lite.data.download_prepared({kind!r}, root={str(root)!r})",
            f"which fetch {url} and unpack it under the root;",
            f"or build it from the original: {_SOURCES[kind]}.",
        ]
    elif kind == "cropped":
        lines.append("Write it with: python -m stego_lite five-crop <dataset> --root <data root>")
    lines.append("The data root defaults to $STEGO_LITE_DATA (see stego_lite.env.data_dir()).")
    return DatasetNotFoundError("\n".join(lines))


def pascal_palette(n: int) -> np.ndarray:
    """PASCAL VOC's colour map (bits of the class id spread over R, G, B), as STEGO uses: -> (n, 3) uint8."""
    ids = np.arange(n)
    palette = np.zeros((n, 3), dtype=np.int64)
    for shift in range(7, -1, -1):
        for channel in range(3):
            palette[:, channel] |= ((ids >> channel) & 1) << shift
        ids = ids >> 3
    return palette.astype(np.uint8)


class SegDataset(Dataset):
    """Base class: subclasses set `name`, `classes`, `palette` and implement `__len__` and `load`."""

    name: str = "segmentation"
    classes: tuple[str, ...] = ()
    palette: np.ndarray = np.zeros((0, 3), dtype=np.uint8)

    def __init__(self, transform: SegTransform) -> None:
        self.transform = transform

    @property
    def n_classes(self) -> int:
        return len(self.classes)

    def __len__(self) -> int:
        raise NotImplementedError

    def load(self, index: int) -> tuple[Image.Image, np.ndarray]:
        """Full-resolution RGB image and its label: -> PIL image (W, H), (H, W) int64 with -1 = ignore."""
        raise NotImplementedError

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {type(self).__name__} of length {len(self)}")
        image, label = self.load(index)
        image_t, label_t = self.transform(image, label)
        return {"image": image_t, "label": label_t, "index": int(index)}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(n={len(self)}, n_classes={self.n_classes})"


class FirstImages(Subset):
    """The first `n` items of a dataset, which still answers as that dataset does (classes, palette, load,
    name, split, ...); a `Subset`, so that feature caches key it by its parent and its indices."""

    def __init__(self, dataset: Dataset, n: int) -> None:
        if n < 1:
            raise ValueError(f"need at least one image, got n={n}")
        super().__init__(dataset, range(min(n, len(dataset))))

    def __getattr__(self, name: str) -> Any:
        if name == "dataset":   # not set yet (e.g. while unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.dataset, name)

    def __repr__(self) -> str:
        return f"FirstImages({self.dataset!r}, n={len(self)})"
