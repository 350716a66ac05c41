"""Nearest-neighbour images by global feature similarity: STEGO's positive pairs (reference §3.1, §3.7).

    desc = global_descriptors(feats)        # (N, C, h, w) -> (N, C): average-pooled, L2-normalised
    nns = knn_indices(desc, k=30)           # (N, 30): rank 0 is normally the image itself
    pos = sample_positives(nns, idx)        # one positive per image, uniform over ranks 1..7

`knn_indices` works in row chunks, so memory is O(N k + chunk N), never N x N. `nearest_neighbors` runs
the frozen backbone (always in eval mode: STEGO's precompute script leaves dropout on, §9.9) over a
dataset and caches the lists on disk under the same key as the feature cache, which includes the patch
size (STEGO's file names do not, §9.10).

The training loop reads (anchor, positive) pairs from the sources built on these lists (`sources`).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

from stego_lite import distributed
from stego_lite.backbone import Backbone
from stego_lite.features import FeatureSet, batches, cache_path, feature_key, load_or_compute

N_STORED = 30        # neighbours stored per image (STEGO's precompute_knns.py)
DESCRIPTOR_BLOCK = 1024   # feature maps pooled at a time when the descriptors come from the feature cache
NUM_NEIGHBORS = 7    # positives are drawn uniformly from ranks 1..NUM_NEIGHBORS (STEGO's num_neighbors)


def global_descriptors(feats: Tensor) -> Tensor:
    """Average-pooled, L2-normalised patch features: (N, C, h, w) -> (N, C)."""
    if feats.ndim != 4:
        raise ValueError(f"expected features of shape (N, C, h, w), got {tuple(feats.shape)}")
    return F.normalize(feats.float().mean(dim=(2, 3)), dim=1)


def knn_indices(desc: Tensor, k: int = N_STORED, *, chunk_size: int = 256,
                rows: tuple[int, int] | None = None) -> Tensor:
    """Indices of the k most cosine-similar rows, most similar first: (N, C) -> (N, k) int64.

    Rows are compared `chunk_size` at a time against all N rows, so memory stays O(N k + chunk_size N).
    `rows` = (lo, hi) ranks only those rows, in the chunks of the full call (lo is a multiple of
    chunk_size): -> (hi - lo, k), what one rank of a torchrun job computes.
    """
    N = desc.shape[0]
    if desc.ndim != 2:
        raise ValueError(f"expected descriptors of shape (N, C), got {tuple(desc.shape)}")
    if not 1 <= k <= N:
        raise ValueError(f"k must be between 1 and the number of images N = {N}, got k = {k}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    lo, hi = rows if rows is not None else (0, N)
    if lo % chunk_size or not 0 <= lo <= hi <= N:
        raise ValueError(f"rows {rows} must lie in [0, {N}] and start at a multiple of chunk_size "
                         f"{chunk_size}")
    desc = F.normalize(desc.float(), dim=1)
    out = torch.empty(hi - lo, k, dtype=torch.long, device=desc.device)
    for start in range(lo, hi, chunk_size):
        end = min(start + chunk_size, hi)
        sim = desc[start:end] @ desc.T  # (chunk, N) cosine similarities
        out[start - lo:end - lo] = sim.topk(k, dim=1).indices
    return out


def sample_positives(nns: Tensor, indices: Tensor, *, num_neighbors: int = NUM_NEIGHBORS,
                     generator: torch.Generator | None = None) -> Tensor:
    """One KNN positive per image, uniform over ranks 1..num_neighbors: (N, k), (B,) -> (B,) int64."""
    if not 1 <= num_neighbors < nns.shape[1]:
        raise ValueError(f"num_neighbors must be between 1 and k - 1 = {nns.shape[1] - 1} "
                         f"(rank 0 is the image itself), got {num_neighbors}")
    rank = torch.randint(1, num_neighbors + 1, (len(indices),), generator=generator)
    return nns[indices.cpu(), rank].to(indices.device)


def nearest_neighbors(backbone: Backbone, dataset: Dataset, *, k: int = N_STORED,
                      features: FeatureSet | None = None, batch_size: int = 64,
                      device: torch.device | str | None = None, chunk_size: int = 256,
                      progress: bool = False) -> Tensor:
    """The k nearest images of every image of `dataset` under `backbone`, cached: -> (N, k) int64.

    With `features` (from `cached_features` of the same backbone and dataset) no image is read again;
    otherwise the backbone runs over the dataset, keeping only the (N, C) pooled descriptors in memory.
    """
    key = feature_key(backbone, dataset)
    if features is not None and features.key != key:
        raise ValueError(f"features were extracted for {features.key.name}, not for this backbone and "
                         f"dataset ({key.name}); pass the FeatureSet of the same backbone and dataset, "
                         "or none")
    if distributed.world_size() > 1:   # under torchrun: split over the ranks (stego_lite.sharded)
        from stego_lite import sharded

        return sharded.nearest_neighbors(backbone, dataset, key, k=k, features=features,
                                         batch_size=batch_size, device=device, chunk_size=chunk_size,
                                         progress=progress)

    def compute() -> dict[str, Tensor]:
        if features is not None:
            desc = torch.cat([global_descriptors(features.feats[i:i + DESCRIPTOR_BLOCK])
                              for i in range(0, len(features.feats), DESCRIPTOR_BLOCK)])
        else:
            desc = torch.cat([global_descriptors(f) for f, _ in batches(
                backbone, dataset, batch_size=batch_size, device=device, progress=progress)])
        return {"nns": knn_indices(desc, k, chunk_size=chunk_size)}

    return load_or_compute(cache_path(key, "knn", f"-k{k}"), key, compute)["nns"]


_MOVED_TO_SOURCES = ("Batch", "FeatureSource", "ImageSource")


def __getattr__(name: str):
    """`knn.FeatureSource` and the like, which moved to `sources`: imported on first use, because `sources`
    imports this module."""
    if name in _MOVED_TO_SOURCES:
        from stego_lite import sources

        return getattr(sources, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
