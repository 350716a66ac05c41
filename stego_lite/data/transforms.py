"""STEGO's image/label transform: resize the shorter side (NEAREST, even for RGB), crop, ImageNet-normalise.

STEGO's `get_transform(res, is_label, crop)` applies `Resize(res, NEAREST)`, `CenterCrop(res)`, `ToTensor`
and `Normalize(IMAGENET_MEAN, IMAGENET_STD)`; labels get the same resize and crop. `SegTransform` does the
same with one set of random draws for image and label, so they stay aligned under random crops and flips.
`resize="bilinear"` is the documented switch to smooth resizing of the image (labels stay NEAREST).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from torch import Tensor

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_RESAMPLE = {"nearest": Image.NEAREST, "bilinear": Image.BILINEAR}
_CROPS = ("center", "random", "none")


def normalize(image: np.ndarray) -> Tensor:
    """uint8 RGB -> ImageNet-normalised float32: (H, W, 3) -> (3, H, W)."""
    x = torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1).float().div_(255)   # (3, H, W)
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return (x - mean) / std


def denormalize(image: Tensor) -> Tensor:
    """Undo ImageNet normalisation for display, clamped to [0, 1]: (3, H, W) or (B, 3, H, W) -> same.

    For matplotlib/plotly use `denormalize(img).permute(1, 2, 0).numpy()` -> (H, W, 3).
    """
    if image.ndim not in (3, 4) or image.shape[-3] != 3:
        raise ValueError(f"expected an image of shape (3, H, W) or (B, 3, H, W), got {tuple(image.shape)}")
    mean = torch.tensor(IMAGENET_MEAN, dtype=image.dtype, device=image.device).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=image.dtype, device=image.device).view(3, 1, 1)
    return (image * std + mean).clamp(0, 1)


def resized_size(height: int, width: int, res: int) -> tuple[int, int]:
    """(H, W) after scaling the shorter side to `res`, truncating the longer one as torchvision does."""
    if height <= width:
        return res, int(res * width / height)
    return int(res * height / width), res


@dataclass(frozen=True)
class SegTransform:
    """Joint image/label transform: PIL RGB image and (H, W) int64 label -> (3, h, w) float32, (h, w) int64.

    Order: resize shorter side to `res` -> crop -> optional horizontal flip -> ImageNet normalisation.
    STEGO's train transform is `SegTransform(224)`, its evaluation transform `SegTransform(320)`.
    Random choices (crop offset, flip) use torch's global generator, which DataLoader seeds per worker.
    """

    res: int | None = 224            # shorter side after resizing; None keeps the image's own size
    crop: str = "center"             # "center" | "random" | "none" (keep the size, trimmed to the patch grid)
    crop_size: int | None = None     # side of the square crop; None means `res` (STEGO)
    resize: str = "nearest"          # "nearest": STEGO, also for RGB; "bilinear": smooth image, NEAREST label
    hflip: float = 0.0               # probability of a horizontal flip (STEGO: 0 for the loss images)
    patch_size: int = 8              # every output side is a multiple of this

    def __post_init__(self) -> None:
        if self.resize not in _RESAMPLE:
            raise ValueError(f"unknown resize {self.resize!r}; choose one of {sorted(_RESAMPLE)}")
        if self.crop not in _CROPS:
            raise ValueError(f"unknown crop {self.crop!r}; choose one of {_CROPS}")
        if not 0.0 <= self.hflip <= 1.0:
            raise ValueError(f"hflip is a probability, got {self.hflip}")
        side = self.crop_size or self.res
        if self.crop != "none":
            if side is None:
                raise ValueError(f"crop={self.crop!r} needs res or crop_size; pass crop='none' to keep sizes")
            if side % self.patch_size:
                lower, upper = side - side % self.patch_size, side + -side % self.patch_size
                raise ValueError(f"crop side {side} is not a multiple of patch_size {self.patch_size}; "
                                 f"use e.g. {lower} or {upper}")
        if self.res is not None and self.crop_size is not None and self.crop_size > self.res:
            raise ValueError(f"crop_size {self.crop_size} is larger than res {self.res}")

    def __call__(self, image: Image.Image, label: np.ndarray) -> tuple[Tensor, Tensor]:
        if image.mode != "RGB":
            raise ValueError(f"SegTransform expects an RGB image, got mode {image.mode!r}")
        W, H = image.size
        if label.shape != (H, W):
            raise ValueError(f"label shape {label.shape} does not match image size (H, W) = {(H, W)}")
        if self.res is not None:
            H, W = resized_size(H, W, self.res)
            image = image.resize((W, H), _RESAMPLE[self.resize])
            # one int32 PIL image keeps -1 intact and uses exactly the image's NEAREST sampling grid
            label_img = Image.fromarray(label.astype(np.int32), mode="I")
            label = np.asarray(label_img.resize((W, H), Image.NEAREST))
        img = np.asarray(image)   # (H, W, 3) uint8
        top, left, h, w = self._crop_box(H, W)
        img, label = img[top:top + h, left:left + w], label[top:top + h, left:left + w]
        if self.hflip and torch.rand(()) < self.hflip:
            img, label = img[:, ::-1], label[:, ::-1]
        return normalize(img), torch.from_numpy(np.array(label, dtype=np.int64))

    def _crop_box(self, H: int, W: int) -> tuple[int, int, int, int]:
        """(top, left, h, w) of the crop in an (H, W) image."""
        if self.crop == "none":
            h, w = H - H % self.patch_size, W - W % self.patch_size
            if h == 0 or w == 0:
                raise ValueError(f"image of size {(H, W)} is smaller than one {self.patch_size}-px patch")
            return (H - h) // 2, (W - w) // 2, h, w
        side = self.crop_size or self.res
        if side > H or side > W:
            raise ValueError(f"cannot crop {side}x{side} from an image of size {(H, W)}; "
                             f"set res >= {side} so that the image is resized first")
        if self.crop == "center":   # torchvision's rounding
            return int(round((H - side) / 2.0)), int(round((W - side) / 2.0)), side, side
        top = int(torch.randint(0, H - side + 1, ()))
        left = int(torch.randint(0, W - side + 1, ()))
        return top, left, side, side


def default_transform(split: str, patch_size: int = 8) -> SegTransform:
    """STEGO's resolutions: 224 for training splits, 320 for evaluation, both centre-cropped, NEAREST."""
    return SegTransform(224 if split.startswith("train") or split == "all" else 320, patch_size=patch_size)
