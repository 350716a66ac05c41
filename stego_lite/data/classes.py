"""Class names, label mappings and colour maps of the STEGO datasets (reference §4.2-4.4).

Every mapping is a lookup table `lut[raw_id] -> class id`; raw ids outside the table, and entries of -1,
become the ignore index.
"""
from __future__ import annotations

import numpy as np

from .base import pascal_palette

# ---- COCO-Stuff-27 ([S:data.py] Coco.fine_to_coarse, [S:train_segmentation.py] get_class_labels)
# Names in coarse-id order: 0-11 are "things", 12-26 "stuff". STEGO names both 2 and 14 "food" and both
# 3 and 15 "furniture"; the stuff ones get a "-stuff" suffix here so that names are unique.
COCOSTUFF27_CLASSES = (
    "electronic", "appliance", "food", "furniture", "indoor", "kitchen", "accessory", "animal", "outdoor",
    "person", "sports", "vehicle", "ceiling", "floor", "food-stuff", "furniture-stuff", "rawmaterial",
    "textile", "wall", "window", "building", "ground", "plant", "sky", "solid", "structural", "water",
)
# Thing ids 0..90 map by ranges (fine ids as in the stuffthingmaps PNGs: 0 = person).
_COCO_THING_RANGES = (
    (0, 0, 9), (1, 8, 11), (9, 14, 8), (15, 24, 7), (25, 32, 6), (33, 42, 10), (43, 50, 5), (51, 60, 2),
    (61, 70, 3), (71, 76, 0), (77, 82, 1), (83, 90, 4),
)
# Stuff ids 91..181, one coarse id each (91 banner -> 17 textile, ..., 181 wood -> 24 solid).
_COCO_STUFF_COARSE = (
    17, 17, 22, 20, 20, 22, 15, 25, 16, 13,   # 91-100
    12, 12, 17, 17, 23, 15, 15, 17, 15, 21,   # 101-110
    15, 25, 13, 13, 13, 13, 13, 22, 26, 14,   # 111-120
    14, 15, 22, 21, 21, 24, 20, 22, 15, 17,   # 121-130
    16, 15, 22, 24, 21, 17, 25, 16, 21, 17,   # 131-140
    22, 16, 21, 21, 25, 21, 26, 21, 24, 20,   # 141-150
    17, 14, 21, 26, 15, 23, 20, 21, 24, 15,   # 151-160
    24, 22, 25, 15, 20, 17, 17, 22, 14, 18,   # 161-170
    18, 18, 18, 18, 18, 18, 26, 26, 19, 19,   # 171-180
    24,                                       # 181
)


def _coco_fine_to_coarse() -> dict[int, int]:
    table = {fine: coarse for lo, hi, coarse in _COCO_THING_RANGES for fine in range(lo, hi + 1)}
    table.update({91 + i: coarse for i, coarse in enumerate(_COCO_STUFF_COARSE)})
    return table


COCO_FINE_TO_COARSE: dict[int, int] = _coco_fine_to_coarse()   # 182 entries; 255 (unlabeled) is absent


def _lut(table: dict[int, int], size: int = 256) -> np.ndarray:
    lut = np.full(size, -1, dtype=np.int64)
    for raw, cls in table.items():
        lut[raw] = cls
    return lut


COCO_LUT = _lut(COCO_FINE_TO_COARSE)

# ---- Cityscapes-27: labelIds 7..33 -> 0..26; 0..6 (void classes) and everything above 33 -> ignore
CITYSCAPES27_CLASSES = (
    "road", "sidewalk", "parking", "rail track", "building", "wall", "fence", "guard rail", "bridge",
    "tunnel", "pole", "polegroup", "traffic light", "traffic sign", "vegetation", "terrain", "sky", "person",
    "rider", "car", "truck", "bus", "caravan", "trailer", "train", "motorcycle", "bicycle",
)
CITYSCAPES_FIRST_ID = 7
CITYSCAPES_LUT = _lut({CITYSCAPES_FIRST_ID + k: k for k in range(len(CITYSCAPES27_CLASSES))})
CITYSCAPES27_PALETTE = np.array([   # the official Cityscapes colours of labelIds 7..33
    (128, 64, 128), (244, 35, 232), (250, 170, 160), (230, 150, 140), (70, 70, 70), (102, 102, 156),
    (190, 153, 153), (180, 165, 180), (150, 100, 100), (150, 120, 90), (153, 153, 153), (153, 153, 153),
    (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152), (70, 130, 180), (220, 20, 60),
    (255, 0, 0), (0, 0, 142), (0, 0, 70), (0, 60, 100), (0, 0, 90), (0, 0, 110), (0, 80, 100),
    (0, 0, 230), (119, 11, 32)], dtype=np.uint8)

# ---- Potsdam-3: fine 0 roads, 1 buildings, 2 low vegetation, 3 tree, 4 car, 5 clutter; 255 unlabeled
POTSDAM3_CLASSES = ("roads and cars", "buildings and clutter", "trees and vegetation")
POTSDAM_FINE_TO_COARSE = {0: 0, 4: 0, 1: 1, 5: 1, 2: 2, 3: 2}
POTSDAM_LUT = _lut(POTSDAM_FINE_TO_COARSE)

COCOSTUFF27_PALETTE = pascal_palette(len(COCOSTUFF27_CLASSES))
POTSDAM3_PALETTE = pascal_palette(len(POTSDAM3_CLASSES))

# name -> (classes, palette), also used to label five-crop folders of these datasets
CLASS_INFO: dict[str, tuple[tuple[str, ...], np.ndarray]] = {
    "cocostuff27": (COCOSTUFF27_CLASSES, COCOSTUFF27_PALETTE),
    "cityscapes": (CITYSCAPES27_CLASSES, CITYSCAPES27_PALETTE),
    "potsdam": (POTSDAM3_CLASSES, POTSDAM3_PALETTE),
}
