"""Probes fitted post hoc on frozen token codes, scored at pixel resolution (reference §8).

    probes = fit_probes(reducer.transform(x), y, n_classes, seed=0)   # training tokens (N, D), labels (N,)
    scores = score_probes(reducer, probes, data)                      # accuracy / mIoU of both, in percent

Every representation (`reducers`) is scored the same way, on frozen codes (Koenig et al.'s protocol in
spirit; they train only the probes on PCA/RP features):

* cluster probe: spherical (cosine) k-means with K = n_classes, fitted by `probes.kmeans` on a sample of
  training tokens. It minimises exactly the objective of STEGO's learned cluster probe (minus the mean
  cosine to the nearest centroid, reference §5.1), but to convergence and from k-means++ seeds, so no
  centroid is left dead by an unlucky random start;
* linear probe: a linear layer on standardised codes, cross-entropy, full-batch L-BFGS, on the same
  tokens, each labelled by the majority label of its patch.

Both are evaluated at pixel resolution on the validation set, as `evaluate.evaluate` does (codes
upsampled bilinearly to the image before the probes), without flip-TTA or CRF. Upsampling only the K
probe scores is exact: bilinear weights sum to one, so upsampling commutes with the affine linear probe,
and the cosine argmax of an upsampled code equals the argmax of its upsampled dot products with the unit
centroids (the code's norm is the same for every centroid).
"""
from __future__ import annotations

from collections.abc import Hashable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from stego_lite.metrics import confusion_matrix, hungarian_metrics, iou_and_accuracy
from stego_lite.probes import kmeans
from stego_lite.reducers import Reducer, Standardizer, transform_map

if TYPE_CHECKING:
    from stego_lite.analysis import SweepData


@dataclass
class TokenProbes:
    """One representation's cluster probe (unit centroids) and linear probe (folded onto raw codes)."""

    centroids: Tensor   # (K, D), unit norm
    weight: Tensor      # (K, D)
    bias: Tensor        # (K,)

    def cluster_scores(self, code: Tensor) -> Tensor:
        """Dot products with the unit centroids (B, D, h, w) -> (B, K, h, w): their argmax is the cosine
        argmax, also after bilinear upsampling (the code's norm is common to all K)."""
        return torch.einsum("bdhw,kd->bkhw", code.float(), self.centroids)

    def linear_logits(self, code: Tensor) -> Tensor:
        """The linear probe's logits (B, D, h, w) -> (B, K, h, w)."""
        return torch.einsum("bdhw,kd->bkhw", code.float(), self.weight) + self.bias[:, None, None]


def fit_linear_probe(x: Tensor, y: Tensor, n_classes: int, *, max_iter: int = 100,
                     l2: float = 1e-4) -> tuple[Tensor, Tensor]:
    """Multinomial logistic regression on standardised x (N, D), labels y (N,) (-1 ignored), by full-batch
    L-BFGS from zero (deterministic): -> weight (K, D), bias (K,) acting on the *unstandardised* x."""
    keep = y >= 0
    scaler = Standardizer()
    scaler.fit_scaler(x[keep])
    z, target = scaler.standardize(x[keep]), y[keep]
    linear = nn.Linear(x.shape[1], n_classes)
    nn.init.zeros_(linear.weight)
    nn.init.zeros_(linear.bias)
    optimizer = torch.optim.LBFGS(linear.parameters(), lr=1.0, max_iter=max_iter, history_size=20,
                                  line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(linear(z), target) + l2 * linear.weight.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    weight = linear.weight.detach().double() / scaler.scale           # fold the standardisation in
    bias = linear.bias.detach().double() - weight @ scaler.mean
    return weight.float(), bias.float()


def fit_probes(codes: Tensor, labels: Tensor, n_classes: int, *, seed: int, n_init: int = 3,
               linear_max_iter: int = 100) -> TokenProbes:
    """Cluster probe: cosine k-means, K = n_classes, on the codes (labels unused); linear probe on labels."""
    cluster = kmeans(codes, n_classes, metric="cosine", n_init=n_init, max_iter=100, seed=seed)
    weight, bias = fit_linear_probe(codes, labels, n_classes, max_iter=linear_max_iter)
    return TokenProbes(cluster.centroids, weight, bias)


def score_probes(reducer: Reducer, probes: TokenProbes, data: SweepData) -> dict[str, float]:
    """Cluster (Hungarian) and linear accuracy / mIoU in percent on the validation pixels.

    Probe scores are computed per patch and upsampled bilinearly to the label size, which equals applying
    the probes to the bilinearly upsampled code (see the module docstring); no flip-TTA, no CRF.
    """
    return score_many({0: (reducer, probes)}, data)[0]


@torch.no_grad()
def score_many(fitted: Mapping[Hashable, tuple[Reducer, TokenProbes]],
               data: SweepData) -> dict[Hashable, dict[str, float]]:
    """`score_probes` of every (reducer, probes) of `fitted`, in one pass over the validation set: where
    the backbone runs on every pass (the paper profile), it runs once for all representations."""
    K = data.n_classes
    confusion = {key: {probe: torch.zeros(K, K, dtype=torch.int64) for probe in ("cluster", "linear")}
                 for key in fitted}
    for feats, labels in data.val_batches():
        for key, (reducer, probes) in fitted.items():
            code = transform_map(reducer, feats.cpu())
            for probe, scores in (("cluster", probes.cluster_scores(code)),
                                  ("linear", probes.linear_logits(code))):
                scores = F.interpolate(scores, size=labels.shape[-2:], mode="bilinear", align_corners=False)
                confusion[key][probe] += confusion_matrix(scores.argmax(1).cpu(), labels.cpu(), K)
    results = {}
    for key, matrices in confusion.items():
        cluster, linear = hungarian_metrics(matrices["cluster"]), iou_and_accuracy(matrices["linear"])
        results[key] = {"cluster accuracy": cluster["accuracy"], "cluster miou": cluster["miou"],
                        "linear accuracy": linear["accuracy"], "linear miou": linear["miou"]}
    return results
