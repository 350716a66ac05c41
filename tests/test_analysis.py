"""The mechanism analysis: reducers vs scikit-learn, JL distances, distinctness metrics, the multi-head loss,
exact pixel-resolution probes, the sweep table and its cache."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn import metrics
from sklearn.decomposition import PCA as SkPCA
from sklearn.preprocessing import StandardScaler
from sklearn.random_projection import johnson_lindenstrauss_min_dim

from stego_lite import analysis as A
from stego_lite.features import FeatureKey, FeatureSet
from stego_lite.knn import FeatureSource
from stego_lite.loss import LossConfig, stego_loss, stego_losses
from stego_lite.probes import ClusterProbe
from stego_lite.train import TrainConfig


def labelled_blobs(n: int = 600, dim: int = 10, k: int = 5,
                   seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, k, (n,), generator=g)
    x = torch.randn(n, dim, generator=g) + 1.5 * torch.randn(k, dim, generator=g)[y] + 0.5
    return x, y


# --- reducers ----------------------------------------------------------------------------------------------


def test_pca_matches_scikit_learn_on_standardised_tokens() -> None:
    x, _ = labelled_blobs(dim=12)
    x[:, 3] *= 40.0                                   # very different channel scales: standardising matters
    ours = A.PCA(5).fit(x)
    z = StandardScaler().fit_transform(x.numpy().astype(np.float64))
    theirs = SkPCA(12).fit(z)
    np.testing.assert_allclose(ours.explained_variance_ratio, theirs.explained_variance_ratio_, rtol=1e-6,
                               atol=1e-9)
    projected, reference = ours.transform(x).numpy(), theirs.transform(z)[:, :5]
    signs = np.sign((projected * reference).sum(0))   # components are defined up to sign
    np.testing.assert_allclose(projected * signs, reference, atol=1e-4)
    assert ours.with_dim(2).transform(x).shape == (len(x), 2) and ours.dim == 5


def test_pca_rejects_a_dim_beyond_the_channels() -> None:
    with pytest.raises(ValueError, match="dim=13"):
        A.PCA(13).fit(torch.randn(50, 12))


def test_random_projection_preserves_distances_within_the_jl_bound() -> None:
    # Dasgupta & Gupta: at D = johnson_lindenstrauss_min_dim(n, eps) each pair's squared distance leaves
    # [(1 - eps), (1 + eps)] x its original with probability <= 2 / n^2, so fewer than one of the n(n-1)/2
    # pairs per projection is expected outside (and the bound holds for all pairs with probability >= 1/n).
    g = torch.Generator().manual_seed(0)
    n, eps, seeds = 40, 0.5, range(5)
    x = torch.randn(n, 3000, generator=g)
    dim = int(johnson_lindenstrauss_min_dim(n, eps=eps))
    before = torch.pdist(x.double()) ** 2
    outside, means = 0, []
    for seed in seeds:
        rp = A.RandomProjection(dim, seed=seed, standardize=False).fit(x)
        ratio = torch.pdist(rp.transform(x).double()) ** 2 / before
        outside += int(((ratio < 1 - eps) | (ratio > 1 + eps)).sum())
        means.append(ratio.mean().item())
    assert outside <= len(seeds), outside                 # expected < 1 per projection
    assert abs(np.mean(means) - 1) < 0.02                 # unbiased: E|Rx|^2 = |x|^2 with entries N(0, 1/D)
    assert rp.matrix.std().item() == pytest.approx(dim ** -0.5, rel=0.05)


def test_random_projection_standardises_with_the_fit_statistics() -> None:
    x, _ = labelled_blobs()
    rp = A.RandomProjection(4, seed=1).fit(x)
    z = torch.as_tensor(StandardScaler().fit_transform(x.numpy().astype(np.float64))).float()
    torch.testing.assert_close(rp.transform(x), z @ rp.matrix, atol=1e-5, rtol=1e-5)


def test_head_reducer_on_tokens_equals_the_head_on_maps() -> None:
    head = A.build_head(TrainConfig(dim=3), 6).eval()
    feats = torch.randn(2, 6, 4, 5)
    reducer = A.HeadReducer(head)
    torch.testing.assert_close(A.transform_map(reducer, feats), head(feats), atol=1e-6, rtol=1e-5)


# --- distinctness ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_silhouette_matches_scikit_learn(metric: str) -> None:
    x, y = labelled_blobs()
    y[0] = 7                                           # a singleton class: silhouette 0 by convention
    ours = A.silhouette(x, y, metric=metric, chunk=128)
    assert ours == pytest.approx(metrics.silhouette_score(x.numpy(), y.numpy(), metric=metric), abs=1e-6)


def test_davies_bouldin_and_calinski_harabasz_match_scikit_learn() -> None:
    x, y = labelled_blobs(seed=3)
    reference = metrics.davies_bouldin_score(x.numpy(), y.numpy())
    assert A.davies_bouldin(x, y) == pytest.approx(reference, rel=1e-6)
    assert A.calinski_harabasz(x, y) == pytest.approx(metrics.calinski_harabasz_score(x.numpy(), y.numpy()),
                                                       rel=1e-6)


def test_cosine_distance_ratio_and_class_matrix_match_a_direct_computation() -> None:
    x, y = labelled_blobs(n=300, seed=4)
    units = F.normalize(x.double(), dim=1)
    distance = 1 - units @ units.T
    same, other = y[:, None] == y[None, :], ~torch.eye(len(y), dtype=torch.bool)
    direct = distance[same & other].mean() / distance[~same].mean()
    assert A.intra_inter_ratio(x, y) == pytest.approx(direct.item(), rel=1e-9)
    matrix = A.class_cosine_distances(x, y, 5)
    for a, b in [(0, 0), (1, 3), (4, 2)]:
        pairs = (y[:, None] == a) & (y[None, :] == b) & other
        assert matrix[a, b].item() == pytest.approx(distance[pairs].mean().item(), rel=1e-9)


def test_distinctness_ignores_unlabelled_rows_and_ranks_separated_classes_higher() -> None:
    x, y = labelled_blobs(seed=5)
    tight = x + 20 * F.one_hot(y, 10).float()          # the same classes, much further apart
    y_missing = y.clone()
    y_missing[:50] = -1
    loose, sharp = A.distinctness(x, y_missing), A.distinctness(tight, y_missing)
    assert sharp["silhouette"] > loose["silhouette"] and sharp["intra_inter"] < loose["intra_inter"]
    assert sharp["davies_bouldin"] < loose["davies_bouldin"]
    assert sharp["calinski_harabasz"] > loose["calinski_harabasz"]
    for m in A.DISTINCTNESS:          # each index's direction, as the asserts above spell it out
        assert A.more_distinct(sharp[m], loose[m], m) and not A.more_distinct(loose[m], sharp[m], m)
    with pytest.raises(ValueError, match="at least 2 distinct labels"):
        A.silhouette(x, torch.zeros(len(x), dtype=torch.long))


# --- heads trained together --------------------------------------------------------------------------------


def test_shared_draw_losses_equal_stego_loss_for_every_head() -> None:
    g = torch.Generator().manual_seed(0)
    config = LossConfig(self_shift=0.3, knn_shift=0.2, random_shift=0.6, n_points=4, n_random=3)
    feats, feats_knn = torch.randn(5, 9, 6, 6, generator=g), torch.randn(5, 9, 6, 6, generator=g)
    codes = [torch.randn(5, d, 6, 6, generator=g) for d in (2, 4, 7)]
    codes_knn = [torch.randn(5, d, 6, 6, generator=g) for d in (2, 4, 7)]
    totals = [t.total for t in stego_losses(feats, codes, feats_knn, codes_knn, config,
                                            generator=torch.Generator().manual_seed(3))]
    for code, code_knn, total in zip(codes, codes_knn, totals, strict=True):
        reference = stego_loss(feats, code, feats_knn, code_knn, config,
                               generator=torch.Generator().manual_seed(3))
        torch.testing.assert_close(total, reference.total, atol=1e-7, rtol=1e-6)


def tiny_source(n: int = 12, channels: int = 6, seed: int = 0) -> tuple[FeatureSource, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 3, (n, 8, 8), generator=g)
    prototypes = torch.randn(3, channels, generator=g)
    patch = labels[:, ::2, ::2]                                      # (n, 4, 4): one label per 2x2 patch
    feats = prototypes[patch].permute(0, 3, 1, 2) + 0.3 * torch.randn(n, channels, 4, 4, generator=g)
    nns = torch.stack([torch.roll(torch.arange(n), -i) for i in range(n)])
    return FeatureSource(feats, nns, labels, key=f"tiny{seed}"), labels


TINY = TrainConfig(dim=3, batch_size=4, steps=6, num_neighbors=3, lr=1e-2,
                   loss=LossConfig(n_points=3, n_random=2))


def test_train_heads_is_seeded_and_leaves_the_global_rng_alone() -> None:
    source, _ = tiny_source()
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    first, _ = A.train_heads((2, 5), TINY, source)
    after = torch.rand(1)
    second, _ = A.train_heads((2, 5), TINY, source)
    assert before == after
    assert sorted(first) == [2, 5] and first[5].code_dim == 5 and not first[2].training
    for d in first:
        for p, q in zip(first[d].parameters(), second[d].parameters(), strict=True):
            assert torch.equal(p, q)
    untrained = A.build_head(dataclasses.replace(TINY, dim=2), 6)
    assert not torch.equal(first[2].linear.weight, untrained.linear.weight)
    with pytest.raises(ValueError, match="batch_size"):
        A.train_heads((2,), dataclasses.replace(TINY, batch_size=1), source)


# --- tokens, probes, evaluation ----------------------------------------------------------------------------


def test_patch_labels_take_the_majority_and_ignore_unlabelled_pixels() -> None:
    labels = torch.full((1, 4, 4), -1)
    labels[0, :2, :2] = torch.tensor([[1, 1], [2, -1]])   # patch (0, 0): class 1 wins over 2
    labels[0, 2:, 2:] = 0                                 # patch (1, 1): class 0; (0, 1), (1, 0): none
    assert A.patch_labels(labels, (2, 2), 3).tolist() == [[[1, -1], [-1, 0]]]
    with pytest.raises(ValueError, match="do not split"):
        A.patch_labels(labels, (3, 3), 3)


def test_upsampled_probe_scores_equal_the_probes_on_the_upsampled_code() -> None:
    g = torch.Generator().manual_seed(0)
    code = torch.randn(2, 5, 4, 4, generator=g)
    probes = A.TokenProbes(F.normalize(torch.randn(3, 5, generator=g), dim=1), torch.randn(3, 5, generator=g),
                           torch.randn(3, generator=g))
    up = lambda t: F.interpolate(t, size=(16, 16), mode="bilinear", align_corners=False)
    cluster = ClusterProbe(5, 3)
    cluster.clusters.data = probes.centroids.clone()
    assert torch.equal(up(probes.cluster_scores(code)).argmax(1), cluster.predict(up(code)))
    torch.testing.assert_close(up(probes.linear_logits(code)), probes.linear_logits(up(code)),
                               atol=1e-5, rtol=1e-5)


def test_linear_probe_separates_linearly_separable_tokens() -> None:
    x, y = labelled_blobs(n=400, k=3, seed=6)
    x = x * torch.tensor([100.0] + [1.0] * 9)           # badly scaled input: the probe standardises it
    y[:10] = -1
    weight, bias = A.fit_linear_probe(x, y, 3)
    accuracy = ((x @ weight.T + bias).argmax(1) == y)[y >= 0].float().mean()
    assert accuracy > 0.97


def tiny_data(source: FeatureSource, labels: torch.Tensor) -> A.SweepData:
    key = FeatureKey("tiny", 2, "w", "toy", "train", "none", "8x8", len(labels), "c")
    train = FeatureSet(source.feats, labels, key)
    val = FeatureSet(source.feats[:6], labels[:6], dataclasses.replace(key, split="val"))
    return A.SweepData.from_features(train, val, 3, batch_size=5)


def test_sweep_table_has_the_expected_rows_and_is_read_back_from_the_cache(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("STEGO_LITE_CACHE", str(tmp_path))
    source, labels = tiny_source()
    data = tiny_data(source, labels)
    cfg = dataclasses.replace(A.SweepConfig.for_profile("offline"), dims=(2, 4), seeds=(0, 1, 2),
                              head_steps=4, head_batch=4, tokens_per_image=8, convergence_dims=None)
    headsets = {s: A.sweep_heads(cfg, source, s) for s in cfg.seeds}
    table = A.dimension_sweep(cfg, data, headsets)
    assert list(table.columns) == A.SWEEP_COLUMNS
    assert not table.isna().any().any()
    assert len(table) == 3 * (1 + 3 * 2) * 2               # seeds x (raw + 3 methods x 2 D) x 2 probes
    assert set(table.method) == {"raw", "STEGO", "PCA", "RP"} and set(table.dim) == {2, 4, 6}
    assert table[["accuracy", "miou"]].stack().between(0, 100).all()

    # a second call reads the heads and the table back, computing nothing
    monkeypatch.setattr("stego_lite.train_heads.train_heads", lambda *a, **k: pytest.fail("heads retrained"))
    monkeypatch.setattr(A, "fit_probes", lambda *a, **k: pytest.fail("probes refitted"))
    again = A.dimension_sweep(cfg, data, {s: A.sweep_heads(cfg, source, s) for s in cfg.seeds})
    assert again.equals(table)
    for s in cfg.seeds:
        loaded = A.sweep_heads(cfg, source, s)
        assert torch.equal(loaded.heads[4].linear.weight, headsets[s].heads[4].linear.weight)

    summary = A.summarize(table, ["probe", "method", "dim"], ["miou"])
    assert {"miou", "miou std"} <= set(summary.columns) and len(summary) == 2 * 7


def test_scoring_many_representations_takes_one_pass_and_equals_one_by_one(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("STEGO_LITE_CACHE", str(tmp_path))
    source, labels = tiny_source()
    data = tiny_data(source, labels)
    passes = []
    val_batches = data.val_batches
    data.val_batches = lambda: passes.append(1) or val_batches()   # count the passes over the val set
    x, y = data.train_tokens(8, seed=0)
    fitted = {}
    for d in (2, 4):
        reducer = A.PCA().fit(x).with_dim(d)
        fitted["PCA", d] = (reducer, A.fit_probes(reducer.transform(x), y, 3, seed=0, n_init=1))
    together = A.score_many(fitted, data)
    assert len(passes) == 1
    for key, (reducer, probes) in fitted.items():
        assert together[key] == A.score_probes(reducer, probes, data)


def test_convergence_and_distinctness_studies_on_tiny_data(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("STEGO_LITE_CACHE", str(tmp_path))
    source, labels = tiny_source()
    data = tiny_data(source, labels)
    cfg = dataclasses.replace(A.SweepConfig.for_profile("offline"), dims=(2,), seeds=(0, 1), head_steps=2,
                              head_batch=4, tokens_per_image=8, convergence_seeds=3, convergence_tokens=80,
                              convergence_dims=None, distinct_tokens=60)
    headsets = {s: A.sweep_heads(cfg, source, s) for s in cfg.seeds}
    summary, curves = A.convergence_study(cfg, data, headsets[0])
    assert list(summary.method) == ["raw", "STEGO", "PCA", "RP"]
    assert summary["converged"].between(0, 1).all() and summary["ARI"].le(1).all()
    assert set(curves.columns) >= {"method", "dim", "seed", "iteration", "miou", "inertia"}
    table = A.distinctness_study(cfg, data, headsets)
    assert len(table) == 2 * 4 and not table.isna().any().any()
    assert set(A.DISTINCTNESS) <= set(table.columns)


def test_kmeans_convergence_on_separated_blobs() -> None:
    g = torch.Generator().manual_seed(0)
    directions = F.normalize(torch.randn(4, 8, generator=g), dim=1)
    y = torch.arange(4).repeat_interleave(100)
    x = directions[y] + 0.05 * torch.randn(400, 8, generator=g)
    summary, curve = A.kmeans_convergence(x, y, 4, seeds=range(4))
    assert summary["converged"] == 1.0 and summary["ARI"] > 0.99 and summary["miou"] > 99
    assert summary["inertia rel. std"] < 1e-3
    assert curve.groupby("seed").iteration.max().mean() == pytest.approx(summary["iterations"])


def test_sweep_config_per_profile() -> None:
    assert A.SweepConfig.for_profile("paper").dims == (3, 6, 12, 24, 48, 96, 192, 384, 768)   # Koenig et al.
    offline = A.SweepConfig.for_profile("offline", seeds=(5, 6, 7))
    assert offline.seeds == (5, 6, 7) and len(offline.dims) >= 5 and max(offline.dims) < 254
    assert offline.head_config(6).seed == 6
    with pytest.raises(ValueError, match="unknown profile 'laptop'"):
        A.SweepConfig.for_profile("laptop")
    with pytest.raises(ValueError, match="convergence_dims"):
        A.SweepConfig.for_profile("offline", convergence_dims=(5,))
