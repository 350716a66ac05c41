"""Probes that read segmentations off a code map, and a batch k-means for analysis.

* `ClusterProbe`: STEGO's unsupervised probe, a spherical k-means whose centroids are trained by SGD
  on detached codes (reference §5.1). Its clusters are named by Hungarian matching (metrics.py).
* `LinearProbe`: a 1x1 convolution trained with cross-entropy on the labels (reference §5.2). It is
  *supervised*: it measures how much class information the code holds, it is not part of STEGO.
* `kmeans`: a full-batch k-means fit (k-means++, n_init, max_iter, tol) on an (N, D) tensor, cosine or
  euclidean, reporting inertia, iterations and convergence: the mechanism chapters measure how k-means
  behaves on each representation with it.

Both probes take codes (B, D, h, w) and expose `loss(code, label)`, so the training loop can train them
beside the head; they detach the code themselves, so they never change the head.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from stego_lite.data.base import IGNORE_INDEX


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
        seeds = _kmeans_plus_plus(x, len(self.clusters), "cosine", generator, chunk=65536)
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


# ---------------------------------------------------------------------------------------------------------
# Batch k-means for analysis


@dataclass
class KMeansResult:
    centroids: Tensor            # (K, D); unit norm for metric="cosine"
    labels: Tensor               # (N,) int64, the final assignment
    inertia: float               # sum of squared distances (euclidean) or of 1 - cosine (cosine)
    n_iter: int                  # Lloyd iterations run in the best restart
    converged: bool              # whether the best restart met `tol` before `max_iter`
    inertia_history: list[float] = field(default_factory=list)  # per iteration, best restart
    restarts: list[dict] = field(default_factory=list)          # inertia / n_iter / converged of each restart


def _costs(xb: Tensor, centroids: Tensor, metric: str) -> Tensor:
    """Cost of every row against every centroid: (n, D), (K, D) -> (n, K), from one matrix product."""
    dots = xb @ centroids.T
    if metric == "cosine":
        return (1.0 - dots).clamp_min(0)
    return ((xb * xb).sum(1, keepdim=True) - 2 * dots + (centroids * centroids).sum(1)).clamp_min(0)


def _nearest(x: Tensor, centroids: Tensor, metric: str, chunk: int) -> tuple[Tensor, Tensor]:
    """Nearest centroid of every row and its cost, in row chunks: (N, D), (K, D) -> (N,), (N,).

    Memory is chunk x K per step, never an N x K x D tensor.
    """
    labels = torch.empty(len(x), dtype=torch.int64)
    costs = torch.empty(len(x), dtype=x.dtype)
    for start in range(0, len(x), chunk):
        cost, idx = _costs(x[start:start + chunk], centroids, metric).min(dim=1)
        labels[start:start + chunk], costs[start:start + chunk] = idx, cost
    return labels, costs


def _centroids(x: Tensor, labels: Tensor, old: Tensor, metric: str) -> Tensor:
    """Mean of each cluster's rows (renormalised for cosine); an empty cluster keeps its old centroid."""
    K = len(old)
    sums = torch.zeros_like(old).index_add_(0, labels, x)
    counts = torch.bincount(labels, minlength=K).to(x.dtype)
    new = torch.where(counts[:, None] > 0, sums / counts.clamp_min(1)[:, None], old)
    return F.normalize(new, dim=1) if metric == "cosine" else new


def _kmeans_plus_plus(x: Tensor, k: int, metric: str, generator: torch.Generator, chunk: int) -> Tensor:
    """Greedy k-means++ seeding (scikit-learn's): each next centroid is the best of 2 + log(k)
    candidates drawn with probability proportional to their current cost."""
    trials = 2 + int(math.log(k))
    centroids = x[torch.randint(len(x), (1,), generator=generator)]
    _, cost = _nearest(x, centroids, metric, chunk)
    for _ in range(1, k):
        weights = cost.double()
        candidates = (torch.multinomial(weights, trials, replacement=True, generator=generator)
                      if weights.sum() > 0 else torch.randint(len(x), (trials,), generator=generator))
        # cost of every row if each candidate were added: (N, trials), built chunk by chunk
        with_candidate = torch.cat([torch.minimum(cost[s:s + chunk, None], _costs(x[s:s + chunk], x[candidates],
                                                                                   metric))
                                    for s in range(0, len(x), chunk)])
        best = with_candidate.sum(0).argmin()
        centroids = torch.cat([centroids, x[candidates[best]][None]])
        cost = with_candidate[:, best]
    return centroids


def kmeans(x: Tensor, k: int, *, metric: str = "euclidean", n_init: int = 3, max_iter: int = 100,
           tol: float = 1e-4, seed: int = 0, chunk: int = 65536,
           on_iteration: Callable[[int, Tensor], None] | None = None) -> KMeansResult:
    """Lloyd's k-means on rows of x (N, D): k-means++ seeding, `n_init` restarts, keep the lowest inertia.

    metric="cosine" is spherical k-means (rows and centroids normalised, cost 1 - cosine).
    Converged means the centroids moved less than `tol` times the data's mean per-feature variance
    (scikit-learn's rule) in the last iteration. `on_iteration(i, labels)` is called after each
    assignment step of every restart, e.g. to score the partition as it evolves.
    """
    if metric not in ("euclidean", "cosine"):
        raise ValueError(f"unknown metric {metric!r}; choose 'euclidean' or 'cosine'")
    if x.ndim != 2 or len(x) < k:
        raise ValueError(f"need an (N, D) tensor with N >= k={k}, got shape {tuple(x.shape)}")
    x = x.detach().float().cpu()
    if metric == "cosine":
        x = F.normalize(x, dim=1)
    threshold = tol * x.var(dim=0).mean().item()
    generator = torch.Generator().manual_seed(seed)
    best: KMeansResult | None = None
    restarts = []
    for _ in range(n_init):
        centroids = _kmeans_plus_plus(x, k, metric, generator, chunk)
        history, converged, n_iter = [], False, 0
        for n_iter in range(1, max_iter + 1):
            labels, cost = _nearest(x, centroids, metric, chunk)
            history.append(cost.sum().item())
            if on_iteration is not None:
                on_iteration(n_iter, labels)
            new = _centroids(x, labels, centroids, metric)
            shift = ((new - centroids) ** 2).sum().item()
            centroids = new
            if shift <= threshold:
                converged = True
                break
        labels, cost = _nearest(x, centroids, metric, chunk)
        inertia = cost.sum().item()
        restarts.append({"inertia": inertia, "n_iter": n_iter, "converged": converged})
        if best is None or inertia < best.inertia:
            best = KMeansResult(centroids, labels, inertia, n_iter, converged, history)
    best.restarts = restarts
    return best


def kmeans_maps(feats: Tensor, k: int, *, seed: int = 0, n_init: int = 3) -> tuple[Tensor, Tensor]:
    """Cosine k-means over every patch of every map, jointly: (N, C, h, w) -> ids (N, h, w), centroids
    (k, C)."""
    N, C, h, w = feats.shape
    result = kmeans(feats.permute(0, 2, 3, 1).reshape(-1, C), k, metric="cosine", n_init=n_init, seed=seed)
    return result.labels.reshape(N, h, w), result.centroids


def nearest_centroid_maps(feats: Tensor, centroids: Tensor) -> Tensor:
    """Each patch's most cosine-similar centroid (k, C): (N, C, h, w) -> (N, h, w) int64 (held-out maps)."""
    unit, centres = F.normalize(feats.float(), dim=1), F.normalize(centroids.float(), dim=1)
    sim = torch.einsum("nchw,kc->nkhw", unit, centres)
    return sim.argmax(dim=1)
