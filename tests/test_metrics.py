from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from stego_lite.metrics import (
    ConfusionMatrix, confusion_matrix, hungarian_metrics, iou_and_accuracy, relabel,
)


def brute_force(conf: np.ndarray) -> tuple[float, tuple[int, ...]]:
    """Best matched pixel count over every injective class -> cluster map."""
    n_classes, n_clusters = conf.shape
    best = max(itertools.permutations(range(n_clusters), n_classes),
               key=lambda perm: sum(conf[c, k] for c, k in enumerate(perm)))
    return sum(conf[c, k] for c, k in enumerate(best)), best


def test_confusion_matrix_counts_pairs_and_ignores_minus_one() -> None:
    target = torch.tensor([[0, 0, 1], [1, 2, -1]])
    pred = torch.tensor([[1, 1, 0], [2, 2, 0]])
    conf = confusion_matrix(pred, target, 3)
    expected = np.zeros((3, 3), dtype=np.int64)
    for t, p in zip(target.flatten().tolist(), pred.flatten().tolist()):
        if t != -1:
            expected[t, p] += 1
    assert np.array_equal(conf.numpy(), expected)


def test_confusion_accumulates_over_batches() -> None:
    g = torch.Generator().manual_seed(0)
    target, pred = torch.randint(-1, 4, (5, 8, 8), generator=g), torch.randint(0, 6, (5, 8, 8), generator=g)
    acc = ConfusionMatrix(4, 6)
    for t, p in zip(target, pred):
        acc.update(p, t)
    assert torch.equal(acc.matrix, confusion_matrix(pred, target, 4, 6))


def test_confusion_rejects_out_of_range_values() -> None:
    with pytest.raises(ValueError, match="target value 5 is outside"):
        confusion_matrix(torch.tensor([0]), torch.tensor([5]), 3)
    with pytest.raises(ValueError, match="prediction value 3 is outside"):
        confusion_matrix(torch.tensor([3]), torch.tensor([0]), 3)
    with pytest.raises(ValueError, match="shape"):
        confusion_matrix(torch.zeros(2), torch.zeros(3), 3)


@pytest.mark.parametrize("n_classes,n_clusters", [(2, 2), (3, 3), (4, 4), (5, 5), (6, 6), (3, 5), (4, 6)])
def test_hungarian_matches_brute_force(n_classes: int, n_clusters: int) -> None:
    rng = np.random.default_rng(n_classes * 10 + n_clusters)
    for _ in range(5):
        conf = rng.integers(0, 50, size=(n_classes, n_clusters))
        matched, perm = brute_force(conf)
        m = hungarian_metrics(conf)
        assert sum(conf[c, k] for c, k in enumerate(m["assignment"])) == matched
        assert m["accuracy"] == pytest.approx(100 * matched / conf.sum())


def test_hungarian_is_invariant_to_relabelling_clusters() -> None:
    rng = np.random.default_rng(1)
    conf = rng.integers(0, 100, size=(5, 5))
    shuffled = conf[:, rng.permutation(5)]
    a, b = hungarian_metrics(conf), hungarian_metrics(shuffled)
    assert a["accuracy"] == pytest.approx(b["accuracy"]) and a["miou"] == pytest.approx(b["miou"])


def test_small_case_by_hand() -> None:
    # class 0: 8 px (6 in cluster 1, 2 in cluster 0); class 1: 4 px (3 in cluster 0, 1 in cluster 1)
    conf = np.array([[2, 6], [3, 1]])
    m = hungarian_metrics(conf)
    assert list(m["assignment"]) == [1, 0]
    assert m["accuracy"] == pytest.approx(100 * 9 / 12)
    iou0, iou1 = 6 / (8 + 7 - 6), 3 / (4 + 5 - 3)
    assert m["per_class_iou"] == pytest.approx([100 * iou0, 100 * iou1])
    assert m["miou"] == pytest.approx(50 * (iou0 + iou1))


def test_extra_clusters_count_as_errors_unless_stego_compatible() -> None:
    # 2 classes, 3 clusters; cluster 2 holds 10 pixels of class 0 and matches no class
    conf = np.array([[10, 0, 10], [0, 10, 0]])
    ours, stego = hungarian_metrics(conf), hungarian_metrics(conf, stego_compatible=True)
    assert ours["accuracy"] == pytest.approx(100 * 20 / 30)
    assert ours["per_class_iou"][0] == pytest.approx(50.0)   # 10 / (20 + 10 - 10)
    assert stego["accuracy"] == pytest.approx(100.0)         # the 10 pixels are simply dropped
    assert stego["miou"] == pytest.approx(100.0)


def test_absent_classes_are_skipped_in_the_mean() -> None:
    conf = np.array([[5, 0, 0], [0, 5, 0], [0, 0, 0]])  # class 2 neither present nor predicted
    m = iou_and_accuracy(conf)
    assert np.isnan(m["per_class_iou"][2]) and m["miou"] == pytest.approx(100.0)
    assert hungarian_metrics(conf)["miou"] == pytest.approx(100.0)


def test_too_few_clusters_is_an_error() -> None:
    with pytest.raises(ValueError, match="2 clusters cannot be matched one-to-one to 3 classes"):
        hungarian_metrics(np.ones((3, 2)))


def test_relabel_maps_clusters_to_classes() -> None:
    pred = torch.tensor([0, 1, 2, 2])
    assert relabel(pred, np.array([2, 0])).tolist() == [1, -1, 0, 0]
