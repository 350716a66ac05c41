"""Training sources: batches of anchors and their sampled KNN positives, from cached features or images.

    source = FeatureSource.from_cache(backbone, dataset)   # features and KNN lists extracted once, on disk
    source = ImageSource(backbone, dataset, nns)            # the backbone runs on every batch
    batch = source.batch(indices, positives, device)        # Batch(feats, feats_pos, label)

The training loop (`train.train`, `train_heads.train_heads`) reads (anchor, positive) pairs through this
one interface, so it does not care where features come from: `FeatureSource` is cheap but needs the
features of the whole dataset on disk; `ImageSource` is for datasets too large to cache. Both are named
by a `key`, after which run folders are named.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple

import torch
from torch import Tensor
from torch.utils.data import Dataset

from stego_lite.backbone import Backbone
from stego_lite.env import loader_options
from stego_lite.features import cached_features, feature_key
from stego_lite.knn import N_STORED, nearest_neighbors


class Batch(NamedTuple):
    """One training batch: anchors, their positives and the anchors' labels (for probes and diagnostics)."""

    feats: Tensor          # (B, C, h, w) anchors' frozen features
    feats_pos: Tensor      # (B, C, h, w) their KNN positives' features
    label: Tensor | None   # (B, H, W) int64 anchors' labels, -1 = ignore (None if the source has none)


class FeatureSource:
    """Training batches from frozen features (N, C, h, w), KNN lists (N, k) and labels (N, H, W).

    `key` names the data (the feature cache's key): run folders are named after it.
    """

    def __init__(self, feats: Tensor, nns: Tensor, labels: Tensor | None = None, *,
                 key: str = "") -> None:
        if feats.ndim != 4 or nns.ndim != 2 or nns.shape[0] != feats.shape[0]:
            raise ValueError(f"need feats (N, C, h, w) and nns (N, k) with the same N, "
                             f"got {tuple(feats.shape)} and {tuple(nns.shape)}")
        if labels is not None and labels.shape[0] != feats.shape[0]:
            raise ValueError(f"labels {tuple(labels.shape)} do not match {feats.shape[0]} feature maps")
        self.feats, self.nns, self.labels, self.key = feats, nns, labels, key
        self.in_dim = feats.shape[1]

    @classmethod
    def from_cache(cls, backbone: Backbone, dataset: Dataset, *, k: int = N_STORED, batch_size: int = 64,
                   device: torch.device | str | None = None, progress: bool = False) -> FeatureSource:
        """Extract (once) and read the dataset's features, labels and KNN lists from the disk cache."""
        fs = cached_features(backbone, dataset, batch_size=batch_size, device=device, progress=progress)
        nns = nearest_neighbors(backbone, dataset, k=k, features=fs)
        return cls(fs.feats, nns, fs.labels, key=fs.key.name)

    def __len__(self) -> int:
        return self.feats.shape[0]

    def batch(self, indices: Tensor, positives: Tensor, device: torch.device) -> Batch:
        """Features of the images `indices` and `positives` (B,), moved to `device`."""
        label = self.labels[indices].long().to(device) if self.labels is not None else None
        feats, feats_pos = self.feats[indices].float(), self.feats[positives].float()
        return Batch(feats.to(device), feats_pos.to(device), label)


class ImageSource:
    """Training batches computed from images: the backbone runs on every anchor and positive.

    On CUDA the images of a batch are read by a pool of threads (`env.loader_options`' worker count;
    decoding must keep up with the GPU) into pinned memory; elsewhere one by one.
    """

    def __init__(self, backbone: Backbone, dataset: Dataset, nns: Tensor) -> None:
        if nns.shape[0] != len(dataset):
            raise ValueError(f"KNN lists cover {nns.shape[0]} images but the dataset has {len(dataset)}")
        self.backbone, self.dataset, self.nns = backbone, dataset, nns
        self.key = "images-" + feature_key(backbone, dataset).name
        self.in_dim = backbone.embed_dim
        self._readers: ThreadPoolExecutor | None = None

    def __len__(self) -> int:
        return len(self.dataset)

    def _features(self, indices: Tensor, device: torch.device) -> tuple[Tensor, Tensor]:
        options = loader_options(device)
        if options.get("num_workers") and self._readers is None:
            self._readers = ThreadPoolExecutor(options["num_workers"], thread_name_prefix="stego-images")
        read = self._readers.map if options.get("num_workers") else map
        items = list(read(self.dataset.__getitem__, [int(i) for i in indices]))
        img = torch.stack([item["image"] for item in items])  # (B, 3, H, W)
        label = torch.stack([item["label"] for item in items])
        if options.get("pin_memory"):
            img, label = img.pin_memory(), label.pin_memory()
        img, label = img.to(device, non_blocking=True), label.to(device, non_blocking=True)
        return self.backbone.features(img), label

    def batch(self, indices: Tensor, positives: Tensor, device: torch.device) -> Batch:
        """Load the images `indices` and `positives` (B,) and run the backbone on `device`."""
        feats, label = self._features(indices, device)
        feats_pos, _ = self._features(positives, device)
        return Batch(feats, feats_pos, label)
