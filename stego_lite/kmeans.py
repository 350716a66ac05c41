"""Batch k-means for analysis: k-means++ seeding, Lloyd iterations, restarts; euclidean or cosine.

    result = kmeans(x, k, metric="cosine", n_init=3, max_iter=100, tol=1e-4, seed=0)   # x: (N, D)
    result.labels, result.centroids, result.inertia, result.n_iter, result.converged

The mechanism chapters measure how k-means behaves on each representation with it, and fit the post hoc
cluster probe with it (`token_probes`). It runs where `x` is: the CPU, or a GPU for a CUDA tensor.

Speed without changing a result. Every assignment computes the plain costs, |x|^2 - 2 x.c + |c|^2 (or
1 - x.c for unit rows), clamped at 0, from one matrix product per chunk of rows, in place and in
cache-sized blocks. After the first iteration most rows are not recomputed: Hamerly's bounds (an upper
bound on a row's distance to its own centroid, a lower bound on the distance to any other, both moved by
how far the centroids moved) prove that its centroid cannot change. A row is recomputed, with the same
arithmetic, unless its bounds are apart by a margin larger than the rounding error of the float32 costs,
so the labels, centroids and iteration counts are those of recomputing every row (tests check this bit
for bit).
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

ROUNDING = 1e-5   # bound on the relative rounding error of a float32 cost (8 ulp is about 5e-7): a margin


@dataclass
class KMeansResult:
    centroids: Tensor            # (K, D); unit norm for metric="cosine"
    labels: Tensor               # (N,) int64, the final assignment
    inertia: float               # sum of squared distances (euclidean) or of 1 - cosine (cosine)
    n_iter: int                  # Lloyd iterations run in the best restart
    converged: bool              # whether the best restart met `tol` before `max_iter`
    inertia_history: list[float] = field(default_factory=list)  # per iteration, best restart
    restarts: list[dict] = field(default_factory=list)          # inertia / n_iter / converged of each restart


class _Rows:
    """The rows that k-means clusters, with what every assignment reuses (their squared norms).

    Costs are computed chunk by chunk (`chunk` rows: one matrix product each, so memory is chunk x K, never
    N x K x D), then turned into costs in place, in blocks of `block` rows that stay in the CPU's cache.
    """

    block = 4096

    def __init__(self, x: Tensor, metric: str, chunk: int) -> None:
        self.x, self.metric, self.chunk = x, metric, chunk
        self.squares = (x * x).sum(1, keepdim=True)   # (N, 1); all ones (up to rounding) for cosine
        self.total_squares = self.squares.double().sum()

    def chunks(self, n: int | None = None) -> range:
        return range(0, len(self.x) if n is None else n, self.chunk)

    def costs(self, start: int, centroids: Tensor, out: Tensor, rows: Tensor | None = None) -> Tensor:
        """Costs of rows start.. (of `rows`, default all) against `centroids` (K, D), into out (n, K)."""
        span = slice(start, start + len(out))
        picked = span if rows is None else rows[span]
        torch.mm(self.x[picked], centroids.T, out=out)
        squares = self.squares[picked]
        centre_squares = (centroids * centroids).sum(1) if self.metric == "euclidean" else None
        for b in range(0, len(out), self.block):
            part = out[b:b + self.block]
            if centre_squares is None:
                part.neg_().add_(1.0).clamp_min_(0)                                       # 1 - x.c
            else:
                part.mul_(-2).add_(squares[b:b + len(part)]).add_(centre_squares).clamp_min_(0)   # |x - c|^2
        return out

    def nearest(self, centroids: Tensor, rows: Tensor | None = None,
                second: bool = False) -> tuple[Tensor, Tensor, Tensor | None]:
        """Nearest centroid of every row (of `rows`) and its cost, and with `second` the next-lowest cost:
        (K, D) -> (n,) int64, (n,), (n,) or None."""
        n = len(self.x) if rows is None else len(rows)
        labels = torch.empty(n, dtype=torch.int64, device=self.x.device)
        costs = torch.empty(n, dtype=self.x.dtype, device=self.x.device)
        runner_up = torch.empty(n, dtype=self.x.dtype, device=self.x.device) if second else None
        buffer = self.x.new_empty(min(self.chunk, n), len(centroids))
        for start in self.chunks(n):
            cost = self.costs(start, centroids, buffer[:min(self.chunk, n - start)], rows)
            for b in range(0, len(cost), self.block):
                part, span = cost[b:b + self.block], slice(start + b, start + min(b + self.block, len(cost)))
                torch.min(part, dim=1, out=(costs[span], labels[span]))
                if second:
                    part.scatter_(1, labels[span, None], math.inf)
                    runner_up[span] = part.min(dim=1).values
        return labels, costs, runner_up

    def own_costs(self, centroids: Tensor, labels: Tensor, rows: Tensor) -> Tensor:
        """Cost of each of `rows` to its own centroid, row by row: (n,) labels of those rows -> (n,)."""
        dots = torch.cat([(self.x[rows[s:s + self.block]] * centroids[labels[s:s + self.block]]).sum(1)
                          for s in range(0, len(rows), self.block)]) if len(rows) else self.x.new_empty(0)
        if self.metric == "cosine":
            return (1.0 - dots).clamp_min(0)
        return (self.squares[rows, 0] - 2 * dots + (centroids * centroids).sum(1)[labels]).clamp_min(0)

    def distance(self, cost: Tensor) -> Tensor:
        """Euclidean distance from a cost, in float64: sqrt(cost), or sqrt(2 cost) for unit vectors."""
        cost = cost.double().clamp_min(0)
        return (2 * cost if self.metric == "cosine" else cost).sqrt()

    def margins(self, centroids: Tensor) -> Tensor:
        """Per row: a distance by which bounds must be apart so that rounding cannot decide the nearest
        centroid (the costs' rounding error is far below ROUNDING * (|x|^2 + |c|^2))."""
        biggest = (centroids.double() ** 2).sum(1).max()
        return 3 * (2 * ROUNDING * (self.squares[:, 0].double() + biggest)).sqrt()


def _update(rows: _Rows, labels: Tensor, old: Tensor) -> tuple[Tensor, float]:
    """New centroids, the mean of each cluster's rows (renormalised for cosine; an empty cluster keeps its
    old centroid), and the inertia of `labels` under the `old` centroids, from the same per-cluster sums
    (sum over a cluster of |x - c|^2 = sum |x|^2 - 2 c . sum x + n |c|^2; of 1 - x.c = n - c . sum x)."""
    K = len(old)
    sums = torch.zeros_like(old).index_add_(0, labels, rows.x)   # each cluster's rows, added in row order
    counts = torch.bincount(labels, minlength=K).to(sums.dtype)
    cross = (old.double() * sums.double()).sum()
    if rows.metric == "cosine":
        inertia = counts.double().sum() - cross
    else:
        inertia = rows.total_squares - 2 * cross + (counts.double() * (old.double() ** 2).sum(1)).sum()
    new = torch.where(counts[:, None] > 0, sums / counts.clamp_min(1)[:, None], old)
    return (F.normalize(new, dim=1) if rows.metric == "cosine" else new), inertia.item()


def kmeans_plus_plus(x: Tensor | _Rows, k: int, metric: str, generator: torch.Generator,
                     chunk: int = 65536) -> Tensor:
    """Greedy k-means++ seeding (scikit-learn's): each next centroid is the best of 2 + log(k)
    candidates drawn with probability proportional to their current cost: -> (k, D). Draws come from the
    CPU `generator` whatever the device, so a GPU run seeds as a CPU run does."""
    rows = x if isinstance(x, _Rows) else _Rows(x, metric, chunk)
    x = rows.x
    trials = 2 + int(math.log(k))
    centroids = x[torch.randint(len(x), (1,), generator=generator)]
    _, cost, _ = rows.nearest(centroids)
    for _ in range(1, k):
        weights = cost.double().cpu()
        candidates = (torch.multinomial(weights, trials, replacement=True, generator=generator)
                      if weights.sum() > 0 else torch.randint(len(x), (trials,), generator=generator))
        # cost of every row if each candidate were added: (N, trials), built chunk by chunk
        with_candidate, points = x.new_empty(len(x), trials), x[candidates.to(x.device)]
        for start in rows.chunks():
            part = rows.costs(start, points, with_candidate[start:start + rows.chunk])
            torch.minimum(cost[start:start + len(part), None], part, out=part)
        best = with_candidate.sum(0).argmin()
        centroids = torch.cat([centroids, x[candidates[best]][None]])
        cost = with_candidate[:, best].clone()
    return centroids


class _Assignment:
    """The label of every row for a sequence of centroids, recomputing only the rows whose Hamerly bounds
    do not prove that their nearest centroid stayed the same."""

    def __init__(self, rows: _Rows, centroids: Tensor) -> None:
        self.rows, self.centroids = rows, centroids
        self.labels, cost, second = rows.nearest(centroids, second=True)
        self.upper, self.lower = rows.distance(cost), rows.distance(second)

    def move(self, centroids: Tensor) -> None:
        """Assign every row to the nearest of the new `centroids` (K, D)."""
        rows = self.rows
        moved = (centroids.double() - self.centroids.double()).norm(dim=1)       # (K,)
        self.centroids = centroids
        self.upper += moved[self.labels]
        self.lower -= moved.max()
        between = torch.cdist(centroids.double(), centroids.double())
        between.fill_diagonal_(math.inf)
        bound = torch.maximum(0.5 * between.min(dim=1).values[self.labels], self.lower)   # (N,)
        margin = rows.margins(centroids)
        doubtful = (self.upper + margin >= bound).nonzero().flatten()
        # tighten the upper bound to the (rounded) distance to the own centroid, then test again
        own = rows.distance(rows.own_costs(centroids, self.labels[doubtful], doubtful)) + margin[doubtful]
        self.upper[doubtful] = torch.minimum(self.upper[doubtful], own)
        stale = doubtful[self.upper[doubtful] + margin[doubtful] >= bound[doubtful]]
        if len(stale):
            labels, cost, second = rows.nearest(centroids, stale, second=True)
            self.labels[stale] = labels
            self.upper[stale], self.lower[stale] = rows.distance(cost), rows.distance(second)


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
    x = x.detach().float()
    x = x if x.is_cuda else x.cpu()   # on a GPU the same torch code runs there
    if metric == "cosine":
        x = F.normalize(x, dim=1)
    rows = _Rows(x, metric, chunk)
    threshold = tol * x.var(dim=0).mean().item()
    generator = torch.Generator().manual_seed(seed)
    best: KMeansResult | None = None
    restarts = []
    for _ in range(n_init):
        centroids = kmeans_plus_plus(rows, k, metric, generator)
        assignment = _Assignment(rows, centroids)
        history, converged, n_iter = [], False, 0
        for n_iter in range(1, max_iter + 1):
            if n_iter > 1:
                assignment.move(centroids)
            if on_iteration is not None:
                on_iteration(n_iter, assignment.labels.cpu())
            new, inertia = _update(rows, assignment.labels, centroids)
            history.append(inertia)
            shift = ((new - centroids) ** 2).sum().item()
            centroids = new
            if shift <= threshold:
                converged = True
                break
        labels, cost, _ = rows.nearest(centroids)
        inertia = cost.sum().item()
        restarts.append({"inertia": inertia, "n_iter": n_iter, "converged": converged})
        if best is None or inertia < best.inertia:
            best = KMeansResult(centroids.cpu(), labels.cpu(), inertia, n_iter, converged, history)
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
