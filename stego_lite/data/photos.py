"""Real photos without labels, offline: the sample images that ship with scikit-image and scikit-learn.

    SamplePhotos()                        # the photos themselves (shorter side resized, centre crop)
    PhotoCrops("train"), PhotoCrops("val")  # deterministic square crops and flips of them, for training STEGO

Nothing is downloaded: scikit-image keeps these photos inside its package (`skimage.data`) and scikit-learn
its two (`sklearn.datasets.load_sample_images`). Labels are all -1 (ignore): the set is for unsupervised
training and for looking at, never for scores. A crop is drawn from (seed, split, photo, index) alone, so
the same arguments give the same crops in any session; "val" crops come from another stream than "train"
crops. They are held out from training but come from the same photos: there are no others offline.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image

from .base import IGNORE_INDEX, SegDataset, pascal_palette
from .transforms import SegTransform

# (name, where): scikit-image's colour photos (the camera man is grey, made RGB), scikit-learn's two
SAMPLE_PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "motorcycle", "camera", "china", "flower")
_SPLIT_STREAM = {"train": 0, "val": 1}


def sample_photo(name: str) -> np.ndarray:
    """One of SAMPLE_PHOTOS as uint8 RGB (H, W, 3), read from the installed package."""
    if name in ("china", "flower"):
        from sklearn.datasets import load_sample_image

        return np.asarray(load_sample_image(f"{name}.jpg"))
    from skimage import data as skdata

    if name not in SAMPLE_PHOTOS:
        raise ValueError(f"unknown sample photo {name!r}; choose from {SAMPLE_PHOTOS}")
    image = skdata.stereo_motorcycle()[0] if name == "motorcycle" else getattr(skdata, name)()
    return np.repeat(image[..., None], 3, axis=2) if image.ndim == 2 else image


class SamplePhotos(SegDataset):
    """The sample photos, each resized so that its shorter side is `res` and centre-cropped to a square."""

    name = "sample-photos"
    classes = ()
    palette = pascal_palette(0)

    def __init__(self, photos: Sequence[str] = SAMPLE_PHOTOS, *, res: int = 224,
                 patch_size: int = 14) -> None:
        super().__init__(SegTransform(res, resize="bilinear", patch_size=patch_size))
        self.photos, self.split = tuple(photos), "all"
        self.images = [sample_photo(name) for name in self.photos]

    def __len__(self) -> int:
        return len(self.photos)

    def load(self, index: int) -> tuple[Image.Image, np.ndarray]:
        image = self.images[index]
        return Image.fromarray(image), np.full(image.shape[:2], IGNORE_INDEX, dtype=np.int64)


class PhotoCrops(SamplePhotos):
    """`per_photo` square crops of every sample photo, each `min_scale`-1 of the shorter side at a random
    place, flipped with probability 1/2, resized to `res` x `res`. Item i is crop i // n_photos of photo
    i % n_photos, so every batch mixes photos."""

    name = "photo-crops"

    def __init__(self, split: str = "train", *, per_photo: int = 24, photos: Sequence[str] = SAMPLE_PHOTOS,
                 res: int = 224, min_scale: float = 0.5, seed: int = 0, patch_size: int = 14) -> None:
        if split not in _SPLIT_STREAM:
            raise ValueError(f"split must be one of {sorted(_SPLIT_STREAM)}, got {split!r}")
        if not 0 < min_scale <= 1:
            raise ValueError(f"min_scale must be in (0, 1], got {min_scale}")
        super().__init__(photos, res=res, patch_size=patch_size)
        self.split, self.per_photo = split, per_photo
        self.boxes = [self._box(i, seed, min_scale) for i in range(len(self))]

    def _box(self, index: int, seed: int, min_scale: float) -> tuple[int, int, int, bool]:
        """(top, left, side, flip) of crop `index`, from its own random stream."""
        photo, crop = index % len(self.photos), index // len(self.photos)
        rng = np.random.default_rng([seed, _SPLIT_STREAM[self.split], photo, crop])
        H, W = self.images[photo].shape[:2]
        side = int(round(min(H, W) * rng.uniform(min_scale, 1.0)))
        top, left = int(rng.integers(0, H - side + 1)), int(rng.integers(0, W - side + 1))
        return top, left, side, bool(rng.random() < 0.5)

    def __len__(self) -> int:
        return len(self.photos) * self.per_photo

    def photo_of(self, index: int) -> str:
        """The name of the photo that crop `index` comes from."""
        return self.photos[index % len(self.photos)]

    def load(self, index: int) -> tuple[Image.Image, np.ndarray]:
        top, left, side, flip = self.boxes[index]
        crop = self.images[index % len(self.photos)][top:top + side, left:left + side]
        crop = crop[:, ::-1] if flip else crop
        label = np.full((side, side), IGNORE_INDEX, dtype=np.int64)
        return Image.fromarray(np.ascontiguousarray(crop)), label
