from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from sklearn.cluster import KMeans
from sklearn.metrics import adjusted_rand_score

from stego_lite.probes import ClusterProbe, LinearProbe, kmeans


def blobs(n_per: int, centers: torch.Tensor, spread: float, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(len(centers)).repeat_interleave(n_per)
    return centers[labels] + spread * torch.randn(len(labels), centers.shape[1], generator=g), labels


def test_kmeans_recovers_separated_blobs() -> None:
    g = torch.Generator().manual_seed(1)
    x, labels = blobs(300, 10 * torch.randn(5, 8, generator=g), 0.5)
    result = kmeans(x, 5, seed=0)
    assert adjusted_rand_score(labels, result.labels) >= 0.99
    assert result.converged and result.n_iter < 100
    assert len(result.restarts) == 3 and result.inertia == min(r["inertia"] for r in result.restarts)


def test_kmeans_inertia_matches_scikit_learn() -> None:
    g = torch.Generator().manual_seed(2)
    x, _ = blobs(400, 3 * torch.randn(6, 10, generator=g), 1.0)
    ours = kmeans(x, 6, n_init=5, seed=0)
    theirs = KMeans(6, n_init=5, random_state=0).fit(x.numpy())
    assert ours.inertia == pytest.approx(theirs.inertia_, rel=0.01)
    # the reported inertia is the cost of the returned partition
    direct = ((x - ours.centroids[ours.labels]) ** 2).sum().item()
    assert ours.inertia == pytest.approx(direct, rel=1e-5)


def test_cosine_kmeans_clusters_directions() -> None:
    g = torch.Generator().manual_seed(3)
    directions = F.normalize(torch.randn(4, 16, generator=g), dim=1)
    x, labels = blobs(200, directions, 0.05)
    x = x * torch.rand(len(x), 1, generator=g).mul(10).add(0.1)  # scale must not matter
    result = kmeans(x, 4, metric="cosine")
    assert adjusted_rand_score(labels, result.labels) >= 0.99
    assert torch.allclose(result.centroids.norm(dim=1), torch.ones(4), atol=1e-5)


def test_kmeans_reports_non_convergence_and_history() -> None:
    x, _ = blobs(200, torch.randn(8, 4), 2.0)
    seen = []
    result = kmeans(x, 8, max_iter=2, tol=0.0, n_init=1, on_iteration=lambda i, lab: seen.append(i))
    assert result.n_iter == 2 and not result.converged
    assert seen == [1, 2] and len(result.inertia_history) == 2


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_kmeans_assignment_in_chunks_and_blocks_is_the_plain_formula(metric, monkeypatch) -> None:
    """Row chunks (one matrix product each) and cache-sized blocks, in place: bit for bit the plain costs."""
    import stego_lite.kmeans as K

    g = torch.Generator().manual_seed(4)
    x = torch.randn(333, 12, generator=g)
    x = F.normalize(x, dim=1) if metric == "cosine" else x
    centroids = torch.randn(5, 12, generator=g)
    centroids = F.normalize(centroids, dim=1) if metric == "cosine" else centroids
    monkeypatch.setattr(K._Rows, "block", 7)
    labels, costs, second = K._Rows(x, metric, chunk=50).nearest(centroids, second=True)
    plain = plain_costs(x, centroids, metric)
    assert torch.equal(costs, plain.min(dim=1).values) and torch.equal(labels, plain.argmin(dim=1))
    assert torch.equal(second, plain.sort(dim=1).values[:, 1])
    # and the nearest centroid it is (distances computed another way)
    other = torch.cdist(x.double(), centroids.double()).argmin(dim=1)
    assert (labels == other).float().mean() == 1.0


def plain_costs(x: torch.Tensor, c: torch.Tensor, metric: str) -> torch.Tensor:
    dots = x @ c.T
    return ((1.0 - dots) if metric == "cosine"
            else (x * x).sum(1, keepdim=True) - 2 * dots + (c * c).sum(1)).clamp_min(0)


def plain_lloyd(x: torch.Tensor, centroids: torch.Tensor, metric: str, max_iter: int, tol: float):
    """Lloyd's iterations recomputing every row's costs: the labels after each, the centroids, n_iter."""
    threshold, seen = tol * x.var(dim=0).mean().item(), []
    for n_iter in range(1, max_iter + 1):
        labels = plain_costs(x, centroids, metric).argmin(dim=1)
        seen.append(labels)
        sums = torch.zeros_like(centroids).index_add_(0, labels, x)
        counts = torch.bincount(labels, minlength=len(centroids)).float()[:, None]
        new = torch.where(counts > 0, sums / counts.clamp_min(1), centroids)
        new = F.normalize(new, dim=1) if metric == "cosine" else new
        shift, centroids = ((new - centroids) ** 2).sum().item(), new
        if shift <= threshold:
            break
    return seen, centroids, n_iter


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
@pytest.mark.parametrize("spread", [1.0, 0.5])
def test_kmeans_with_bounds_equals_recomputing_every_row(metric, spread, monkeypatch) -> None:
    """Hamerly's bounds skip rows, never change a label: every iteration equals the plain algorithm."""
    import stego_lite.kmeans as K

    g = torch.Generator().manual_seed(5)
    x, _ = blobs(300, spread * torch.randn(8, 16, generator=g), 1.0, seed=5)
    unit = F.normalize(x, dim=1) if metric == "cosine" else x
    recomputed, nearest = [], K._Rows.nearest
    monkeypatch.setattr(K._Rows, "nearest", lambda self, c, rows=None, second=False: recomputed.append(
        len(self.x) if rows is None else len(rows)) or nearest(self, c, rows, second))
    seen = []
    result = kmeans(x, 8, metric=metric, n_init=1, max_iter=60, seed=3,
                    on_iteration=lambda i, labels: seen.append(labels.clone()))
    moves = recomputed[2:-1]   # after k-means++ and the first full assignment, before the final one
    start = K.kmeans_plus_plus(unit, 8, metric, torch.Generator().manual_seed(3))
    expected, centroids, n_iter = plain_lloyd(unit, start, metric, max_iter=60, tol=1e-4)
    assert result.n_iter == n_iter >= 5 and len(seen) == len(expected)
    assert len(moves) == n_iter - 1 and moves[-1] < 0.25 * len(x)   # the bounds spared most rows
    assert all(torch.equal(a, b) for a, b in zip(seen, expected))
    assert torch.equal(result.centroids, centroids)
    assert result.inertia == plain_costs(unit, centroids, metric).min(dim=1).values.sum().item()


def test_kmeans_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="unknown metric"):
        kmeans(torch.randn(10, 2), 2, metric="manhattan")
    with pytest.raises(ValueError, match="N >= k=5"):
        kmeans(torch.randn(3, 2), 5)


def separable_codes(n: int = 8, dim: int = 6, n_classes: int = 3, seed: int = 0):
    """Codes whose class is encoded by a class-specific direction, labels at 2x the code resolution."""
    g = torch.Generator().manual_seed(seed)
    label_small = torch.randint(0, n_classes, (n, 6, 6), generator=g)
    directions = 4 * torch.randn(n_classes, dim, generator=g)
    code = directions[label_small].permute(0, 3, 1, 2) + 0.3 * torch.randn(n, dim, 6, 6, generator=g)
    label = label_small.repeat_interleave(2, 1).repeat_interleave(2, 2)
    return code, label_small, label


def train(probe, code, label, steps=150):
    opt = torch.optim.Adam(probe.parameters(), lr=2e-2)
    for _ in range(steps):
        opt.zero_grad()
        probe.loss(code, label).backward()
        opt.step()


def test_linear_probe_learns_separable_codes() -> None:
    code, label_small, label = separable_codes()
    label[0, 0, 0] = -1  # ignored pixels are fine
    torch.manual_seed(0)
    probe = LinearProbe(6, 3)
    train(probe, code, label)
    assert (probe.predict(code) == label_small).float().mean() >= 0.95


@pytest.mark.parametrize("seed", range(3))
def test_cluster_probe_learns_separable_codes_without_labels(seed: int) -> None:
    from stego_lite.metrics import confusion_matrix, hungarian_metrics

    code, label_small, _ = separable_codes(seed=seed)
    torch.manual_seed(seed)
    probe = ClusterProbe(6, 3).init_from_codes(code, seed=seed)
    before = probe.loss(code).item()
    train(probe, code, None)
    assert probe.loss(code).item() < before
    m = hungarian_metrics(confusion_matrix(probe.predict(code), label_small, 3))
    assert m["accuracy"] >= 95


def test_a_centroid_far_from_every_code_never_moves() -> None:
    # Codes in the positive orthant; a centroid pointing the other way is never anyone's nearest.
    code = torch.rand(4, 6, 5, 5) + 0.1
    probe = ClusterProbe(6, 3)
    with torch.no_grad():
        probe.clusters[:2] = code[0, :, :2, 0].T
        probe.clusters[2] = -torch.ones(6)
    start = probe.clusters.detach().clone()
    train(probe, code, None, steps=20)
    assert torch.equal(probe.clusters[2], start[2]) and not torch.equal(probe.clusters[0], start[0])


def test_probes_never_send_gradient_to_the_code() -> None:
    code, _, label = separable_codes()
    code.requires_grad_(True)
    (ClusterProbe(6, 3).loss(code) + LinearProbe(6, 3).loss(code, label)).backward()
    assert code.grad is None


def test_cluster_probe_shapes_and_soft_assignment() -> None:
    probe = ClusterProbe(5, 4)
    code = torch.randn(2, 5, 3, 3)
    cos = probe(code)
    assert cos.shape == (2, 4, 3, 3) and cos.abs().max() <= 1 + 1e-6
    log_p = probe.log_probs(code, alpha=2.0)
    assert torch.allclose(log_p.exp().sum(1), torch.ones(2, 3, 3))
    assert torch.allclose(log_p, torch.log_softmax(2 * cos, 1))
    assert torch.equal(probe.predict(code), cos.argmax(1))
