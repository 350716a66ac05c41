"""Datasets: SynthStuff (offline), STEGO's real datasets in their layout, five-crop, own images.

Every dataset is a torch `Dataset` of dicts

    image  (3, H, W) float32, ImageNet-normalised     label  (H, W) int64, -1 = ignore     index  int

with `classes` (names in label order) and `palette` ((n_classes, 3) uint8). `load(i)` gives the
untransformed full-resolution PIL image and label; the `transform` (a `SegTransform`) does the rest.

    ds = SYNTHSTUFF_OFFLINE.dataset("train")       # generated under $STEGO_LITE_CACHE on first use
    ds = CocoStuff27(split="val")                   # reads $STEGO_LITE_DATA/cocostuff/...

Modules: `transforms` (STEGO's resize/crop/normalise), `scenes` (the SynthStuff renderer and its scene types),
`nuisance` (SynthStuff's per-image nuisance), `synthstuff`, `stego_sets` (COCO-Stuff-27, Cityscapes-27,
Potsdam-3, five-crop folders, image folders), `photos` (the unlabelled sample photos of scikit-image and
scikit-learn, and crops of them), `classes` (names, mappings, colour maps), `fivecrop`, `download`, `files`.
"""
from __future__ import annotations

from .base import IGNORE_INDEX, LAYOUTS, DatasetNotFoundError, FirstImages, SegDataset, pascal_palette
from .classes import (
    CITYSCAPES27_CLASSES, COCO_FINE_TO_COARSE, COCOSTUFF27_CLASSES, POTSDAM3_CLASSES, POTSDAM_FINE_TO_COARSE,
)
from .download import PREPARED_ZIPS, DownloadError, download_prepared
from .fivecrop import five_crop, five_crop_boxes
from .files import read_label, read_rgb
from .photos import SAMPLE_PHOTOS, PhotoCrops, SamplePhotos, sample_photo
from .stego_sets import DATASETS, Cityscapes27, CocoStuff27, FiveCropDataset, ImageFolder, Potsdam3
from .synthstuff import (
    GENERATOR_VERSION, SYNTHSTUFF_OFFLINE, SynthStuff, SynthStuffConfig, generate_synthstuff,
    synthstuff_sample,
)
from .transforms import IMAGENET_MEAN, IMAGENET_STD, SegTransform, default_transform, denormalize, normalize

__all__ = [
    "CITYSCAPES27_CLASSES", "COCOSTUFF27_CLASSES", "COCO_FINE_TO_COARSE", "DATASETS", "GENERATOR_VERSION",
    "IGNORE_INDEX", "IMAGENET_MEAN", "IMAGENET_STD", "LAYOUTS", "POTSDAM3_CLASSES", "POTSDAM_FINE_TO_COARSE",
    "PREPARED_ZIPS", "SAMPLE_PHOTOS", "SYNTHSTUFF_OFFLINE", "Cityscapes27", "CocoStuff27", "DatasetNotFoundError",
    "DownloadError", "FiveCropDataset", "FirstImages", "ImageFolder", "PhotoCrops", "Potsdam3", "SamplePhotos",
    "SegDataset", "SegTransform",
    "SynthStuff", "SynthStuffConfig", "default_transform", "denormalize", "download_prepared", "five_crop",
    "five_crop_boxes", "generate_synthstuff", "normalize", "pascal_palette", "read_label", "read_rgb",
    "sample_photo", "synthstuff_sample",
]
