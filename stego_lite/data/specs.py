"""Data specs: which dataset a preset trains and evaluates on, at which sizes (see `stego_lite.profiles`).

    spec = StegoData("cocostuff27", five_crop=True)    # STEGO's layout under $STEGO_LITE_DATA
    spec.split("train"), spec.split("val")               # datasets at the spec's training / evaluation size
    spec.resized(32, 32, 512, 32)                        # the same data, smaller (a profile's `Scale`)

A new dataset for a preset is one `DataSpec`: a small frozen dataclass with a name, its sizes, and
`split(name)` that builds the dataset.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from torch.utils.data import Dataset

    from stego_lite.data import SynthStuffConfig

def world_suffix(scenes: bool, nuisance: bool) -> str:
    """What a SynthStuff world's switches add to its names: '', '-scenes', '-nuisance', '-scenes-nuisance'."""
    return "-scenes" * scenes + "-nuisance" * nuisance


class DataSpec(Protocol):
    """A dataset's splits at a profile's sizes."""

    name: str          # the dataset's name, as in feature-cache keys
    train_res: int     # training images are train_res x train_res (px)
    eval_res: int      # evaluation centre crops (px)
    five_crop: bool    # the training split is five crops of each image (reference §4.5)

    def split(self, split: str) -> Dataset: ...

    def resized(self, train_res: int, eval_res: int, train_images: int | None,
                val_images: int | None) -> DataSpec: ...


@dataclass(frozen=True)
class SynthStuffData:
    """SynthStuff, generated on first use; `config` None means `data.SYNTHSTUFF_OFFLINE`, read when used,
    with the fields named in `changes` replaced (e.g. a world's sizes and switches)."""

    config: SynthStuffConfig | None = None
    root: str | None = None      # where the generated folders live (default: under $STEGO_LITE_CACHE)
    name: str = "synthstuff"
    five_crop: bool = False
    changes: tuple[tuple[str, Any], ...] = ()   # (field, value) pairs of SynthStuffConfig

    def resolved(self) -> SynthStuffConfig:
        from stego_lite import data

        config = self.config if self.config is not None else data.SYNTHSTUFF_OFFLINE
        return dataclasses.replace(config, **dict(self.changes))

    @property
    def train_res(self) -> int:
        return self.resolved().image_size

    @property
    def eval_res(self) -> int:
        return self.resolved().image_size

    def split(self, split: str) -> Dataset:
        return self.resolved().dataset(split, root=self.root)

    def resized(self, train_res: int, eval_res: int, train_images: int | None,
                val_images: int | None) -> SynthStuffData:
        """Smaller generated images (one size for both splits: `train_res`) and fewer of them; the sizes join
        `changes`, so that they replace a world's sizes there too."""
        config = self.resolved()
        sizes = {"image_size": train_res, "n_train": train_images or config.n_train,
                 "n_val": val_images or config.n_val}
        return dataclasses.replace(self, changes=tuple({**dict(self.changes), **sizes}.items()))


@dataclass(frozen=True)
class StegoData:
    """One of STEGO's datasets in its on-disk layout under $STEGO_LITE_DATA (stego_lite.data.DATASETS)."""

    name: str                    # "cocostuff27" | "cityscapes" | "potsdam"
    five_crop: bool = False
    train_res: int = 224
    eval_res: int = 320          # STEGO evaluates at 320 px
    root: str | None = None      # the data root (default: $STEGO_LITE_DATA)
    train_images: int | None = None   # read only the first N images of the split (None: all)
    val_images: int | None = None

    def split(self, split: str) -> Dataset:
        from stego_lite import data

        res = self.train_res if split == "train" else self.eval_res
        transform = data.SegTransform(res)
        if split == "train" and self.five_crop:
            dataset = data.FiveCropDataset(self.name, "train", root=self.root, transform=transform)
        else:
            dataset = data.DATASETS[self.name](root=self.root, split=split, transform=transform)
        limit = self.train_images if split == "train" else self.val_images
        return dataset if limit is None else data.FirstImages(dataset, limit)

    def resized(self, train_res: int, eval_res: int, train_images: int | None,
                val_images: int | None) -> StegoData:
        return dataclasses.replace(self, train_res=train_res, eval_res=eval_res, train_images=train_images,
                                   val_images=val_images)


@dataclass(frozen=True)
class PhotoData:
    """Unlabelled crops and flips of the sample photos of scikit-image and scikit-learn (`data.PhotoCrops`)."""

    per_photo: int = 24          # training crops of each of the 8 photos
    val_per_photo: int = 2       # held-out crops of each photo ("val": another random stream)
    train_res: int = 224         # crops are resized to train_res x train_res (16 x 16 patches of 14 px)
    clusters: int = 8            # no classes to count: how many clusters the probe and k-means look for
    name: str = "photo-crops"
    five_crop: bool = False

    eval_res = property(lambda self: self.train_res)

    def split(self, split: str) -> Dataset:
        from stego_lite import data

        per_photo = self.per_photo if split == "train" else self.val_per_photo
        return data.PhotoCrops(split, per_photo=per_photo, res=self.train_res)
