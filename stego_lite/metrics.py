"""Segmentation metrics: a dataset-wide confusion matrix, Hungarian matching, accuracy and mIoU.

Convention: `confusion[c, k]` counts pixels whose ground truth is class c and whose prediction is
k, so it has shape (n_classes, n_predicted): rows are classes, columns are clusters (or, for the
linear probe, predicted classes). Pixels labelled -1 are ignored.

Unsupervised predictions are cluster ids with no names; they are matched one-to-one to classes by
the Hungarian algorithm on the whole evaluation set (`linear_sum_assignment`, maximising the matched
pixels), as STEGO does.

More clusters than classes: here, pixels in clusters that match no class count as errors (they
are in the ground-truth row but on no matched diagonal). STEGO instead drops every pixel whose
cluster id is >= n_classes before matching (reference §9.5), which makes such pixels neither right
nor wrong and inflates the numbers; `hungarian_metrics(..., stego_compatible=True)` reproduces that.
All released STEGO models use exactly n_classes clusters, where the two agree.
"""
from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor

from stego_lite.data.base import IGNORE_INDEX


def confusion_matrix(pred: Tensor, target: Tensor, n_classes: int, n_pred: int | None = None) -> Tensor:
    """Counts of (class, prediction) pairs over all labelled pixels -> (n_classes, n_pred) int64.

    `pred` and `target` are integer tensors of the same shape; target -1 is ignored. A target
    outside [0, n_classes) or a prediction outside [0, n_pred) raises, naming the bad value.
    """
    n_pred = n_classes if n_pred is None else n_pred
    if pred.shape != target.shape:
        raise ValueError(f"pred has shape {tuple(pred.shape)} but target has {tuple(target.shape)}")
    keep = target != IGNORE_INDEX
    pred, target = pred[keep].long(), target[keep].long()
    for name, values, limit in (("target", target, n_classes), ("prediction", pred, n_pred)):
        if values.numel() and (values.min() < 0 or values.max() >= limit):
            bad = values[(values < 0) | (values >= limit)][0].item()
            raise ValueError(f"{name} value {bad} is outside [0, {limit})")
    counts = torch.bincount(target * n_pred + pred, minlength=n_classes * n_pred)
    return counts.reshape(n_classes, n_pred).cpu()


class ConfusionMatrix:
    """Accumulates `confusion_matrix` over batches: `update(pred, target)`, then `.matrix`."""

    def __init__(self, n_classes: int, n_pred: int | None = None) -> None:
        self.n_classes = n_classes
        self.n_pred = n_classes if n_pred is None else n_pred
        self.matrix = torch.zeros(self.n_classes, self.n_pred, dtype=torch.int64)

    def update(self, pred: Tensor, target: Tensor) -> None:
        self.matrix += confusion_matrix(pred, target, self.n_classes, self.n_pred)


def _scores(tp: np.ndarray, class_total: np.ndarray, pred_total: np.ndarray) -> dict:
    """Accuracy, mIoU and per-class IoU (percent) from per-class true positives and totals."""
    union = class_total + pred_total - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, tp / union, np.nan)
    total = class_total.sum()
    return {
        "accuracy": 100.0 * tp.sum() / total if total else float("nan"),
        "miou": 100.0 * float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan"),
        "per_class_iou": 100.0 * iou,
    }


def iou_and_accuracy(confusion: Tensor | np.ndarray) -> dict:
    """Scores of a square confusion matrix whose column c predicts class c (e.g. the linear probe).

    Returns accuracy and mIoU in percent, and per-class IoU in percent: NaN for a class absent from
    both prediction and ground truth, and such classes are skipped in the mean.
    """
    conf = np.asarray(confusion, dtype=np.float64)
    if conf.ndim != 2 or conf.shape[0] != conf.shape[1]:
        raise ValueError(f"expected a square confusion matrix, got shape {conf.shape}")
    return _scores(np.diag(conf), conf.sum(1), conf.sum(0))


def hungarian_metrics(confusion: Tensor | np.ndarray, *, stego_compatible: bool = False) -> dict:
    """Match clusters to classes one-to-one, maximising matched pixels, then score.

    `confusion` is (n_classes, n_clusters) with n_clusters >= n_classes. Returns accuracy and mIoU
    (percent), `per_class_iou` (percent, NaN where a class is absent from both prediction and
    ground truth) and `assignment`, an array mapping each class to its cluster. Pixels in clusters
    that no class is matched to count as errors; with `stego_compatible=True` pixels predicted into
    clusters >= n_classes are dropped first instead, as STEGO does.
    """
    conf = np.asarray(confusion, dtype=np.float64)
    n_classes, n_clusters = conf.shape
    if n_clusters < n_classes:
        raise ValueError(f"{n_clusters} clusters cannot be matched one-to-one to {n_classes} classes; "
                         "use at least as many clusters as classes")
    if stego_compatible:
        conf = conf[:, :n_classes]
    rows, cols = linear_sum_assignment(conf, maximize=True)
    assignment = np.empty(n_classes, dtype=np.int64)
    assignment[rows] = cols
    matched = conf[:, assignment]  # column c: the cluster matched to class c
    metrics = _scores(np.diag(matched), conf.sum(1), matched.sum(0))
    metrics["assignment"] = assignment
    return metrics


def relabel(pred: Tensor, assignment: np.ndarray, fill: int = IGNORE_INDEX) -> Tensor:
    """Cluster ids -> class ids through a Hungarian `assignment` (class -> cluster); unmatched -> fill."""
    lookup = torch.full((int(max(assignment.max(), pred.max().item() if pred.numel() else 0)) + 1,), fill,
                        dtype=torch.int64)
    lookup[torch.as_tensor(assignment)] = torch.arange(len(assignment))
    return lookup[pred.long()]
