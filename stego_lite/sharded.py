"""Feature extraction and KNN lists split over the ranks of a torchrun job, into the one keyed cache.

    fs = sharded.cached_features(backbone, dataset)    # what features.cached_features runs under torchrun
    nns = sharded.nearest_neighbors(backbone, dataset, key, k=30)   # what knn.nearest_neighbors runs

The dataset is cut into shards of whole batches (`shard_size`), so every image is
computed in the batch it has in one process and its features are the same to the bit. Rank r takes a
contiguous run of shards (`distributed.row_range`). Each shard is a keyed cache file of its own,
`<cache>/features/<key>.shards/<first>-<end>.pt`, written once and atomically by the rank that computed it:
a rerun after an interruption finds the finished shards and computes only the others, with any number of
ranks. Rank 0 then assembles the file that a one-process run writes (the same content, so either run
reads the other's) and removes the shards.

KNN lists: each rank pools the descriptors of its rows (from the feature cache, or from the backbone over
its shards, kept as shard files likewise), the (N, C) descriptors are all-gathered, and each rank ranks
its rows against all N in the chunks one process uses; the lists are gathered and rank 0 writes them.
Memory per rank: the N x C descriptors and one chunk x N block of similarities, never N x N.
"""
from __future__ import annotations

import dataclasses
import shutil
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor
from torch.utils.data import Dataset, Subset

from stego_lite import cache, distributed
from stego_lite.backbone import Backbone
from stego_lite.features import (
    FORMAT_VERSION, FeatureKey, FeatureSet, batches, cache_path, feature_key, feature_record,
)
from stego_lite.knn import DESCRIPTOR_BLOCK, global_descriptors, knn_indices

SHARD_BATCHES = 8   # batches per shard at most: the unit of work, of resuming and of load balance
MIN_SHARDS = 64     # fewer batches per shard until there are this many shards, so that many ranks get work


def shard_size(n: int, batch_size: int) -> int:
    """Images per shard: whole batches, at most SHARD_BATCHES, and MIN_SHARDS shards if n allows.

    It depends on n and the batch only, not on the number of ranks, so a rerun with another number of
    ranks finds the same shards.
    """
    return batch_size * max(1, min(SHARD_BATCHES, n // (batch_size * MIN_SHARDS)))


def shard_ranges(n: int, size: int, of_rank: int | None = None) -> list[tuple[int, int]]:
    """The shards of rows 0..n-1 of `of_rank` (default: this rank): [(first, end), ...] of `size` rows
    each (the dataset's last one may be shorter)."""
    lo, hi = distributed.row_range(n, size, of_rank)
    return [(first, min(first + size, hi)) for first in range(lo, hi, size)]


def shards_folder(key: FeatureKey, kind: str, suffix: str = "") -> Path:
    """Where the shards of the cache file `cache_path(key, kind, suffix)` are kept until it is written."""
    return cache_path(key, kind, suffix).with_suffix(".shards")


def cached_shards(folder: Path, spec: dict, n: int, size: int,
                  compute: Callable[[int, int], dict[str, Tensor]]) -> list[dict[str, Tensor]]:
    """This rank's shards, each `compute(first, end)` once and kept in `folder` (memory-mapped on reading)."""
    return [cache.load_or_compute(*_shard(folder, spec, first, end),
                                  lambda first=first, end=end: compute(first, end), version=FORMAT_VERSION,
                                  mmap=True)
            for first, end in shard_ranges(n, size)]


def _shard(folder: Path, spec: dict, first: int, end: int) -> tuple[Path, dict]:
    """The file of the shard of rows first..end-1, and its cache spec."""
    return folder / f"{first:09d}-{end:09d}.pt", {**spec, "rows": [first, end]}


def _all_shards(folder: Path, spec: dict, n: int, size: int) -> list[dict[str, Tensor]]:
    """Every rank's shards, read on rank 0 after they were written."""
    parts = []
    for r in range(distributed.world_size()):
        for first, end in shard_ranges(n, size, r):
            path, shard_spec = _shard(folder, spec, first, end)
            part = cache.read(path, shard_spec, version=FORMAT_VERSION, mmap=True)
            if part is None:
                raise OSError(f"rank 0 cannot read {path}, which rank {r} wrote: every rank must see the "
                              "same cache folder (put $STEGO_LITE_CACHE on a file system every node mounts)")
            parts.append(part)
    return parts


def _run(backbone: Backbone, dataset: Dataset, first: int, end: int, **options) -> tuple[Tensor, Tensor]:
    """Features (n, C, h, w) and labels (n, H, W) of images first..end-1, in the batches one process uses."""
    feats, labels = zip(*batches(backbone, Subset(dataset, range(first, end)), **options))
    return torch.cat(feats), torch.cat(labels)


def cached_features(backbone: Backbone, dataset: Dataset, *, batch_size: int = 64,
                    device: torch.device | str | None = None, num_workers: int = 0,
                    progress: bool = False) -> FeatureSet:
    """`features.cached_features` split over the ranks (see the module docstring); any rank count works."""
    key, n = feature_key(backbone, dataset), len(dataset)
    size = shard_size(n, batch_size)
    distributed.check_same({"features": key.name, "shard_size": size}, "the feature extraction")
    spec, folder = dataclasses.asdict(key), shards_folder(key, "features")
    options = {"batch_size": batch_size, "device": device, "num_workers": num_workers,
               "progress": progress and distributed.is_main()}

    def extract(first: int, end: int) -> dict[str, Tensor]:
        return feature_record(*_run(backbone, dataset, first, end, **options))

    def compute() -> dict[str, Tensor] | None:   # every rank: its shards; rank 0: the file from all of them
        cached_shards(folder, {**spec, "batch_size": batch_size}, n, size, extract)
        distributed.barrier("waiting for every rank's feature shards")
        if not distributed.is_main():
            return None
        parts = _all_shards(folder, {**spec, "batch_size": batch_size}, n, size)
        # the shards' compact label types promote to the widest of them; feature_record compacts again
        return feature_record(torch.cat([p["feats"] for p in parts]), torch.cat([p["labels"] for p in parts]))

    data = distributed.load_or_compute(cache_path(key), spec, compute, version=FORMAT_VERSION, mmap=True)
    if distributed.is_main():
        shutil.rmtree(folder, ignore_errors=True)
    return FeatureSet(data["feats"], data["labels"].long(), key)


def nearest_neighbors(backbone: Backbone, dataset: Dataset, key: FeatureKey, *, k: int,
                      features: FeatureSet | None = None, batch_size: int = 64,
                      device: torch.device | str | None = None, chunk_size: int = 256,
                      progress: bool = False) -> Tensor:
    """`knn.nearest_neighbors` split over the ranks (see the module docstring): -> (N, k) int64."""
    n = len(dataset)
    size = shard_size(n, batch_size)
    distributed.check_same({"knn": key.name, "k": k, "chunk_size": chunk_size, "shard_size": size,
                            "from_features": features is not None}, "the KNN lists")
    spec, folder = dataclasses.asdict(key), shards_folder(key, "knn", "-descriptors")

    def describe(first: int, end: int) -> dict[str, Tensor]:
        feats, _ = _run(backbone, dataset, first, end, batch_size=batch_size, device=device,
                        progress=progress and distributed.is_main())
        return {"desc": global_descriptors(feats)}

    def compute() -> dict[str, Tensor]:
        if features is not None:   # pooled from the feature cache, in knn's blocks
            block, channels = DESCRIPTOR_BLOCK, features.feats.shape[1]
            lo, hi = distributed.row_range(n, block)
            mine = [global_descriptors(features.feats[i:min(i + block, hi)]) for i in range(lo, hi, block)]
        else:                      # the backbone over this rank's shards, kept until the lists are written
            block, channels = size, backbone.embed_dim
            mine = [part["desc"] for part in cached_shards(folder, {**spec, "descriptors": batch_size}, n,
                                                           size, describe)]
        mine = torch.cat(mine) if mine else torch.empty(0, channels)
        desc = distributed.all_gather_rows(mine, n, block, "gathering the image descriptors")
        lo, hi = distributed.row_range(n, chunk_size)
        nns = knn_indices(desc, k, chunk_size=chunk_size, rows=(lo, hi))
        return {"nns": distributed.all_gather_rows(nns, n, chunk_size, "gathering the KNN lists")}

    path = cache_path(key, "knn", f"-k{k}")
    nns = distributed.load_or_compute(path, spec, compute, version=FORMAT_VERSION, mmap=True)["nns"]
    if distributed.is_main():
        shutil.rmtree(folder, ignore_errors=True)
    return nns
