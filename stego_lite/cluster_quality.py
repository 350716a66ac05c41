"""Cluster distinctness: how well labelled classes separate in a representation (reference §8).

    scores = distinctness(codes, labels)     # (n, D), (n,) -> silhouette, Davies-Bouldin, ...

Four standard indices (`DISTINCTNESS`), on the L2-normalised rows because that is the geometry the cosine
cluster probe sees: silhouette (cosine distance), Davies-Bouldin and Calinski-Harabasz (Euclidean on the
unit rows) and the ratio of intra- to inter-class cosine distance. They follow scikit-learn's conventions
(e.g. 0 for a singleton's silhouette) in float64 torch; the silhouette needs O(n^2) distances, computed
in chunks, so the studies run it on a sample of a few thousand tokens.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def _class_index(labels: Tensor) -> tuple[Tensor, int]:
    """Labels -> contiguous ids 0..k-1 (as scikit-learn's LabelEncoder) and k."""
    classes, index = torch.unique(torch.as_tensor(labels), return_inverse=True)
    if len(classes) < 2:
        raise ValueError(f"need at least 2 distinct labels, got {len(classes)}")
    return index, len(classes)


def pairwise_distances(x: Tensor, y: Tensor, metric: str = "euclidean") -> Tensor:
    """Euclidean or cosine (1 - cos) distances of every row pair: (n, D), (m, D) -> (n, m) float64."""
    x, y = x.double(), y.double()
    if metric == "cosine":
        return (1 - F.normalize(x, dim=1) @ F.normalize(y, dim=1).T).clamp(0, 2)
    if metric == "euclidean":
        squared = (x * x).sum(1, keepdim=True) - 2 * x @ y.T + (y * y).sum(1)
        return squared.clamp_min(0).sqrt()
    raise ValueError(f"unknown metric {metric!r}; choose 'euclidean' or 'cosine'")


def silhouette(x: Tensor, labels: Tensor, *, metric: str = "euclidean", chunk: int = 2048) -> float:
    """Mean silhouette (b - a) / max(a, b) over the rows of x (n, D) labelled `labels` (n,).

    a: mean distance to the other members of the own class, b: the lowest mean distance to another
    class; 0 for a member of a singleton class (scikit-learn's convention). O(n^2) distances, in chunks.
    """
    index, k = _class_index(labels)
    onehot = F.one_hot(index, k).double()                          # (n, k)
    sizes = onehot.sum(0)
    values = []
    for start in range(0, len(x), chunk):
        sums = pairwise_distances(x[start:start + chunk], x, metric) @ onehot   # (chunk, k)
        own = index[start:start + chunk]
        own_size = sizes[own]
        a = sums.gather(1, own[:, None])[:, 0] / (own_size - 1).clamp_min(1)
        mean_other = (sums / sizes).scatter(1, own[:, None], float("inf"))
        b = mean_other.min(1).values
        s = (b - a) / torch.maximum(a, b).clamp_min(1e-300)
        values.append(torch.where(own_size > 1, s, torch.zeros_like(s)))
    return torch.cat(values).mean().item()


def davies_bouldin(x: Tensor, labels: Tensor) -> float:
    """Davies-Bouldin index (lower = more distinct): the mean over classes of the worst ratio
    (s_i + s_j) / |c_i - c_j|, s = mean distance of a class's members to its centroid c."""
    index, k = _class_index(labels)
    x = x.double()
    onehot = F.one_hot(index, k).double()
    centroids = (onehot.T @ x) / onehot.sum(0)[:, None]
    spread = (onehot.T @ (x - centroids[index]).norm(dim=1)) / onehot.sum(0)
    separation = pairwise_distances(centroids, centroids).fill_diagonal_(0)
    if not spread.abs().gt(1e-8).any() or not separation.abs().gt(1e-8).any():   # as scikit-learn
        return 0.0
    separation = separation.masked_fill(separation == 0, torch.inf)   # the diagonal (and equal centroids)
    return ((spread[:, None] + spread[None, :]) / separation).max(1).values.mean().item()


def calinski_harabasz(x: Tensor, labels: Tensor) -> float:
    """Calinski-Harabasz index (higher = more distinct): between-class over within-class dispersion,
    each divided by its degrees of freedom (k - 1 and n - k)."""
    index, k = _class_index(labels)
    x = x.double()
    onehot = F.one_hot(index, k).double()
    sizes = onehot.sum(0)
    centroids = (onehot.T @ x) / sizes[:, None]
    between = (sizes * ((centroids - x.mean(0)) ** 2).sum(1)).sum()
    within = ((x - centroids[index]) ** 2).sum()
    if within == 0:
        return 1.0
    return (between * (len(x) - k) / (within * (k - 1))).item()


def class_cosine_distances(x: Tensor, labels: Tensor, n_classes: int) -> Tensor:
    """Mean cosine distance (1 - cos) between the members of every two classes: -> (K, K) float64.

    Off the diagonal: over all pairs (i in c, j in c'); on it: over pairs of distinct members. From the
    class sums of the unit rows, O(n D): sum over pairs of cos(i, j) = <sum_c u_i, sum_c' u_j>. NaN for a
    class with too few members.
    """
    labels = torch.as_tensor(labels)
    keep = labels >= 0
    units = F.normalize(x[keep].double(), dim=1)
    onehot = F.one_hot(labels[keep].long(), n_classes).double()
    sums, sizes = onehot.T @ units, onehot.sum(0)
    dots = sums @ sums.T                                            # sum of cos over ordered pairs
    pairs = sizes[:, None] * sizes[None, :]
    dots.diagonal().sub_(sizes)                                     # drop the n_c self-pairs (cos = 1)
    pairs.diagonal().sub_(sizes)
    return 1 - dots / pairs


def intra_inter_ratio(x: Tensor, labels: Tensor) -> float:
    """Mean cosine distance of same-class pairs over that of different-class pairs (lower = more distinct),
    pooled over all pairs of distinct rows."""
    index, k = _class_index(labels)
    units = F.normalize(x.double(), dim=1)
    onehot = F.one_hot(index, k).double()
    sums, sizes = onehot.T @ units, onehot.sum(0)
    dots, pairs = sums @ sums.T, sizes[:, None] * sizes[None, :]
    same_cos, same_pairs = dots.trace() - sizes.sum(), pairs.trace() - sizes.sum()
    other_cos, other_pairs = dots.sum() - dots.trace(), pairs.sum() - pairs.trace()
    return ((1 - same_cos / same_pairs) / (1 - other_cos / other_pairs)).item()


DISTINCTNESS = ("silhouette", "davies_bouldin", "calinski_harabasz", "intra_inter")
HIGHER_IS_DISTINCT = ("silhouette", "calinski_harabasz")   # for the other two, lower is more distinct


def more_distinct(a: float, b: float, metric: str) -> bool:
    """Whether the value `a` of the index `metric` (one of DISTINCTNESS) is more distinct than `b`."""
    return a > b if metric in HIGHER_IS_DISTINCT else a < b


def distinctness(x: Tensor, labels: Tensor) -> dict[str, float]:
    """All four metrics on the rows of x with labels >= 0, after L2-normalising the rows (the geometry
    the cosine cluster probe sees): silhouette with cosine distance, Davies-Bouldin and Calinski-Harabasz
    (Euclidean on the unit rows), and the intra/inter cosine-distance ratio."""
    labels = torch.as_tensor(labels)
    keep = labels >= 0
    units, labels = F.normalize(x[keep].double(), dim=1), labels[keep]
    return {"silhouette": silhouette(units, labels, metric="cosine"),
            "davies_bouldin": davies_bouldin(units, labels),
            "calinski_harabasz": calinski_harabasz(units, labels),
            "intra_inter": intra_inter_ratio(units, labels)}

