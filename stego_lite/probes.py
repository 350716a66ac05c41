"""Probes that read segmentations off a code map (and, re-exported from `stego_lite.kmeans`, a batch k-means).

* `ClusterProbe`: STEGO's unsupervised probe, a spherical k-means whose centroids are trained by SGD
  on detached codes (reference §5.1). Its clusters are named by Hungarian matching (metrics.py).
* `LinearProbe`: a 1x1 convolution trained with cross-entropy on the labels (reference §5.2). It is
  *supervised*: it measures how much class information the code holds, it is not part of STEGO.
* `kmeans` (module `stego_lite.kmeans`): a full-batch k-means fit (k-means++, n_init, max_iter, tol) on an
  (N, D) tensor, cosine or euclidean, reporting inertia, iterations and convergence: the mechanism
  chapters measure how k-means behaves on each representation with it.

Both probes take codes (B, D, h, w) and expose `loss(code, label)`, so the training loop can train them
beside the head; they detach the code themselves, so they never change the head.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from stego_lite.data.base import IGNORE_INDEX
from stego_lite.kmeans import (  # noqa: F401 (kmeans and the map helpers re-exported)
    KMeansResult, kmeans, kmeans_maps, kmeans_plus_plus, nearest_centroid_maps,
)


class ClusterProbe(nn.Module):
    """Cosine k-means with K learned centroids: code (B, D, h, w) -> cosine to each centroid (B, K, h, w).

    Centroids start as random normal vectors, as in STEGO. Only the nearest centroid of a position gets
    gradient, so a centroid that starts far from every code never moves (a "dead" cluster): on toy
    codes with 3 well-separated classes this happened in about half of the random seeds.
    `init_from_codes` seeds the centroids with k-means++ on real codes instead, which avoids it.
    """

    def __init__(self, dim: int, n_clusters: int) -> None:
        super().__init__()
        self.clusters = nn.Parameter(torch.randn(n_clusters, dim))

    @torch.no_grad()
    def init_from_codes(self, code: Tensor, seed: int = 0) -> ClusterProbe:
        """Seed the centroids by spherical k-means++ on the positions of `code` (B, D, h, w); returns self."""
        x = F.normalize(code.detach().permute(0, 2, 3, 1).reshape(-1, code.shape[1]).float().cpu(), dim=1)
        generator = torch.Generator().manual_seed(seed)
        seeds = kmeans_plus_plus(x, len(self.clusters), "cosine", generator)
        self.clusters.copy_(seeds.to(self.clusters))
        return self

    def forward(self, code: Tensor) -> Tensor:
        """Cosine similarity of every position's code to every centroid: (B, D, h, w) -> (B, K, h, w)."""
        return torch.einsum("bdhw,kd->bkhw", F.normalize(code, dim=1), F.normalize(self.clusters, dim=1))

    def loss(self, code: Tensor, label: Tensor | None = None) -> Tensor:
        """Minus the mean cosine to the nearest centroid (only that centroid gets gradient); labels unused."""
        cos = self(code.detach())
        return -cos.max(dim=1).values.mean()

    def predict(self, code: Tensor) -> Tensor:
        """Hard cluster ids: (B, D, h, w) -> (B, h, w) int64."""
        return self(code).argmax(dim=1)

    def log_probs(self, code: Tensor, alpha: float = 2.0) -> Tensor:
        """Soft assignment log softmax(alpha * cos) (B, K, h, w), STEGO's CRF unaries (alpha = 2)."""
        return F.log_softmax(alpha * self(code), dim=1)


class LinearProbe(nn.Module):
    """A supervised 1x1 convolution: code (B, D, h, w) -> class logits (B, K, h, w)."""

    def __init__(self, dim: int, n_classes: int) -> None:
        super().__init__()
        self.linear = nn.Conv2d(dim, n_classes, 1)

    def forward(self, code: Tensor) -> Tensor:
        return self.linear(code)

    def loss(self, code: Tensor, label: Tensor) -> Tensor:
        """Cross-entropy of the logits, bilinearly upsampled to the labels (B, H, W), ignoring -1."""
        logits = self(code.detach())
        logits = F.interpolate(logits, size=label.shape[-2:], mode="bilinear", align_corners=False)
        return F.cross_entropy(logits, label, ignore_index=IGNORE_INDEX)

    def predict(self, code: Tensor) -> Tensor:
        """Class ids: (B, D, h, w) -> (B, h, w) int64."""
        return self(code).argmax(dim=1)
