"""Frozen features of a whole dataset, extracted once and cached on disk: what makes CPU training cheap.

    fs = cached_features(backbone, dataset)     # FeatureSet: feats (N, C, h, w), labels (N, H, W), key
    fs.feats[i]                                 # the backbone's features of dataset[i]["image"]

The cache file's name is a `FeatureKey`: backbone name, patch size, a fingerprint of its weights, the
dataset's name, split, crop, image resolution, size and a fingerprint of its content. A different
configuration therefore never reuses a stale file (STEGO's KNN files collide across patch sizes,
reference §9.10). Files are written by the keyed cache (`stego_lite.cache`: atomic, locked, verified by a
checksum on reading). The KNN lists (`stego_lite.knn`) use the same key.
"""
from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Subset

from stego_lite import cache, distributed
from stego_lite.backbone import Backbone
from stego_lite.env import cache_dir, loader_options
from stego_lite.files import save_torch_atomic
from stego_lite.progress import progress as progress_bar

FORMAT_VERSION = 2   # bump when the file layout or the extraction changes, so old files are not reused


@dataclass(frozen=True)
class FeatureKey:
    """Everything that decides a dataset's frozen features; `name` is the cache file's stem."""

    backbone: str       # registry name, e.g. "dino_vitb8"
    patch_size: int
    weights: str        # fingerprint of the backbone's parameters, buffers and repr
    dataset: str        # dataset name, e.g. "cocostuff27"
    split: str
    crop: str           # "center" | "random" | "none" | "five" (five-crop folders) | "unknown"
    res: str            # image size fed to the backbone, "HxW"
    n_images: int
    content: str        # fingerprint of the first and last images (not the folder: data may move)

    @property
    def name(self) -> str:
        """Readable file stem with a hash of every field: backbone-p8-dataset-split-crop-res-nN-<hash>."""
        digest = hashlib.sha1(repr(dataclasses.astuple(self)).encode()).hexdigest()[:12]
        return (f"{self.backbone}-p{self.patch_size}-{self.dataset}-{self.split}-{self.crop}-{self.res}"
                f"-n{self.n_images}-{digest}")


class FeatureSet(NamedTuple):
    """A dataset's frozen features and labels, in dataset order."""

    feats: Tensor    # (N, C, h, w) float
    labels: Tensor   # (N, H, W) int64, -1 = ignore
    key: FeatureKey


def weights_fingerprint(backbone: Backbone) -> str:
    """Hash of a backbone's parameters, buffers (persistent or not) and repr: -> 16 hex digits.

    Remembered on the backbone until a tensor is replaced, moved or changed in place (its storage address
    or version counter changes): hashing a ViT-B's 344 MB takes about a second, and every cache key
    asks for it.
    """
    tensors = {**dict(backbone.named_parameters()), **dict(backbone.named_buffers())}
    state = (repr(backbone), tuple((name, t.data_ptr(), t._version, str(t.device))
                                   for name, t in sorted(tensors.items())))
    memo = backbone.__dict__.get("_fingerprint")
    if memo is not None and memo[0] == state:
        return memo[1]
    digest = hashlib.sha1(repr(backbone).encode())
    for name, tensor in sorted(tensors.items()):
        digest.update(f"{name}{tuple(tensor.shape)}{tensor.dtype}".encode())
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    backbone.__dict__["_fingerprint"] = (state, digest.hexdigest()[:16])
    return backbone.__dict__["_fingerprint"][1]


def _crop_of(dataset: Dataset) -> str:
    if type(dataset).__name__ == "FiveCropDataset":
        return "five"
    return str(getattr(getattr(dataset, "transform", None), "crop", "unknown"))


def feature_key(backbone: Backbone, dataset: Dataset) -> FeatureKey:
    """The cache key of `dataset`'s features under `backbone` (reads the dataset's first and last item).

    A `torch.utils.data.Subset` is keyed by its parent dataset and its indices.
    """
    n = len(dataset)
    if n == 0:
        raise ValueError(f"dataset {dataset!r} is empty: nothing to extract")
    base, split_suffix = dataset, ""
    content = hashlib.sha1()
    if isinstance(dataset, Subset):
        base, split_suffix = dataset.dataset, "-subset"
        content.update(repr(list(dataset.indices)).encode())
    first, last = dataset[0]["image"], dataset[n - 1]["image"]
    for image in (first, last):
        content.update(image.contiguous().numpy().tobytes())
    H, W = first.shape[-2:]
    return FeatureKey(
        backbone=backbone.name, patch_size=backbone.patch_size, weights=weights_fingerprint(backbone),
        dataset=str(getattr(base, "name", type(base).__name__)),
        split=str(getattr(base, "split", "")) + split_suffix, crop=_crop_of(base), res=f"{H}x{W}", n_images=n,
        content=content.hexdigest()[:16])


def batches(backbone: Backbone, dataset: Dataset, *, batch_size: int = 64,
            device: torch.device | str | None = None, num_workers: int | None = None,
            progress: bool = False) -> Iterator[tuple[Tensor, Tensor]]:
    """Frozen features of the dataset in order, by batch: feats (B, C, h, w) on CPU, labels (B, H, W).

    `num_workers` None: the device's loader settings (`env.loader_options`: workers and pinned memory on
    CUDA, none on the CPU).
    """
    backbone.eval()  # a Backbone is always in eval mode; this also covers subclasses that override train()
    if device is None:
        param = next(backbone.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
    options = loader_options(device)
    if num_workers is not None:
        options["num_workers"] = num_workers
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, **options)
    for item in progress_bar(loader, enabled=progress, desc=f"{backbone.name} features", unit="batch"):
        yield backbone.features(item["image"].to(device, non_blocking=True)).cpu(), item["label"]


def extract_features(backbone: Backbone, dataset: Dataset, *, batch_size: int = 64,
                     device: torch.device | str | None = None, num_workers: int | None = None,
                     progress: bool = False) -> FeatureSet:
    """Frozen features of every image, without caching: -> FeatureSet (N, C, h, w), (N, H, W)."""
    feats, labels = [], []
    for f, label in batches(backbone, dataset, batch_size=batch_size, device=device, num_workers=num_workers,
                            progress=progress):
        feats.append(f)
        labels.append(label)
    return FeatureSet(torch.cat(feats), torch.cat(labels), feature_key(backbone, dataset))


def cache_path(key: FeatureKey, kind: str = "features", suffix: str = "") -> Path:
    """Where a cached result for `key` lives: <cache>/<kind>/<key.name><suffix>.pt."""
    return cache_dir() / kind / f"{key.name}{suffix}.pt"


def cached_features(backbone: Backbone, dataset: Dataset, *, batch_size: int = 64,
                    device: torch.device | str | None = None, num_workers: int | None = None,
                    progress: bool = False) -> FeatureSet:
    """Frozen features of every image, extracted on the first call and read from disk afterwards.

    feats (N, C, h, w) in the backbone's dtype, labels (N, H, W) int64. The file is memory-mapped on
    reading, so several processes share one copy in memory.
    """
    if distributed.world_size() > 1:   # under torchrun: every rank extracts its shards (stego_lite.sharded)
        from stego_lite import sharded

        return sharded.cached_features(backbone, dataset, batch_size=batch_size, device=device,
                                       num_workers=num_workers, progress=progress)
    key = feature_key(backbone, dataset)
    path = cache_path(key)

    def compute() -> dict[str, Any]:
        fs = extract_features(backbone, dataset, batch_size=batch_size, device=device,
                              num_workers=num_workers, progress=progress)
        return feature_record(fs.feats, fs.labels)

    data = load_or_compute(path, key, compute)
    return FeatureSet(data["feats"], data["labels"].long(), key)


def feature_record(feats: Tensor, labels: Tensor) -> dict[str, Tensor]:
    """What a feature cache file holds: the features as extracted, the labels in their smallest type."""
    return {"feats": feats.contiguous(), "labels": _compact_labels(labels)}


def _compact_labels(labels: Tensor) -> Tensor:
    """Store labels in the smallest integer type that holds them (int8 or int16): (N, H, W)."""
    top = int(labels.max()) if labels.numel() else 0
    return labels.to(torch.int8 if top < 128 else torch.int16 if top < 32768 else torch.int64).contiguous()


def load_or_compute(path: Path, key: FeatureKey, compute: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """The dict of tensors cached at `path` for `key` (memory-mapped), or computed and stored once."""
    return cache.load_or_compute(path, dataclasses.asdict(key), compute, version=FORMAT_VERSION, mmap=True)


save_atomic = save_torch_atomic   # the name earlier chapters and tests import
