"""Evaluate a STEGO model the way the paper does (reference §5.4): codes, probes, optional CRF, metrics.

    model = StegoModel(backbone, head, cluster_probe, linear_probe, classes)
    result = evaluate(model, val_set, flip_tta=True, crf=False)
    result["cluster"]["miou"], result["linear"]["miou"]

Per batch: code = head(backbone(img)), averaged with the code of the horizontally flipped image
(flipped back) when `flip_tta`; the code is upsampled bilinearly to the image size *before* the
probes; the cluster probe gives log softmax(2 cos) and the linear probe log softmax(logits);
an optional dense CRF refines both; the argmax goes into dataset-wide confusion matrices. The
cluster ids are matched to classes once, globally, at the end (Hungarian).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from stego_lite.metrics import ConfusionMatrix, hungarian_metrics, iou_and_accuracy
from stego_lite.probes import ClusterProbe, LinearProbe


@dataclass
class StegoModel:
    """Everything needed to segment: a frozen backbone, the head, and the two probes."""

    backbone: nn.Module
    head: nn.Module
    cluster_probe: nn.Module
    linear_probe: nn.Module
    classes: tuple[str, ...]

    @classmethod
    def from_training(cls, backbone: nn.Module, result, classes) -> StegoModel:
        """Bundle a `train.train(...)` result that trained probes named "cluster" and "linear"."""
        missing = {"cluster", "linear"} - set(result.probes)
        if missing:
            raise ValueError(f"the training result has no {sorted(missing)} probe; pass "
                             "probes={'cluster': ClusterProbe(D, K), 'linear': LinearProbe(D, K)} to train()")
        return cls(backbone, result.head, result.probes["cluster"], result.probes["linear"], tuple(classes))

    @property
    def n_classes(self) -> int:
        return len(self.classes)

    def to(self, device: torch.device | str) -> StegoModel:
        for part in (self.backbone, self.head, self.cluster_probe, self.linear_probe):
            part.to(device)
        return self

    def eval(self) -> StegoModel:
        for part in (self.backbone, self.head, self.cluster_probe, self.linear_probe):
            part.eval()
        return self

    @torch.no_grad()
    def code(self, img: Tensor, *, flip_tta: bool = False) -> Tensor:
        """The head's code: (B, 3, H, W) -> (B, D, H/p, W/p), averaged over a horizontal flip if asked."""
        code = self.head(self.backbone.features(img))
        if flip_tta:
            flipped = self.head(self.backbone.features(img.flip(-1)))
            code = (code + flipped.flip(-1)) / 2
        return code

    @torch.no_grad()
    def log_probs(self, img: Tensor, *, flip_tta: bool = False) -> tuple[Tensor, Tensor]:
        """Cluster and linear log-probabilities at the image's resolution: (B, K', H, W), (B, K, H, W)."""
        code = self.code(img, flip_tta=flip_tta)
        code = F.interpolate(code, size=img.shape[-2:], mode="bilinear", align_corners=False)
        return self.cluster_probe.log_probs(code, alpha=2.0), F.log_softmax(self.linear_probe(code), dim=1)


def stego_probes(dim: int, n_classes: int, *, seed: int = 0) -> dict[str, nn.Module]:
    """STEGO's two probes for a `dim`-dimensional code, K = n_classes clusters, initialised from `seed`.

    Seeded on their own RNG stream, so the same arguments give the same probes (and run folder) in any
    session, whatever the caller's global RNG state.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return {"cluster": ClusterProbe(dim, n_classes), "linear": LinearProbe(dim, n_classes)}


def train_model(config, backbone: nn.Module, source, classes, *, device: torch.device | str | None = None,
                checkpoint_every: int = 100, progress: bool = False):
    """Train a head and both probes jointly (as STEGO does) and bundle them: -> (StegoModel, TrainResult).

    `config` is a `train.TrainConfig`, `source` a `knn.FeatureSource` or `knn.ImageSource`. The run lives
    in `train.run_dir_for(config, source, probes)`: a finished run is read back instead of retrained, an
    interrupted one resumes.
    """
    from stego_lite.train import run_dir_for, train

    probes = stego_probes(config.dim, len(classes), seed=config.seed)
    result = train(config, source, probes=probes, run_dir=run_dir_for(config, source, probes),
                   checkpoint_every=checkpoint_every, device=device, progress=progress)
    return StegoModel.from_training(backbone, result, classes), result


def crf_refine(img: Tensor, log_probs: Tensor, *, workers: int = 0) -> Tensor:
    """Dense-CRF marginals of a batch: normalised images (B, 3, H, W), log-probs (B, K, H, W) -> probs."""
    from stego_lite.crf import dense_crf_batch
    from stego_lite.data import denormalize

    images = (denormalize(img.cpu()).permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)
    probs = dense_crf_batch(images, log_probs.exp().cpu().numpy(), workers=workers)
    return torch.from_numpy(probs)


def evaluate(model: StegoModel, dataset: Dataset, *, res: int | None = None, flip_tta: bool = True,
             crf: bool = False, batch_size: int = 16, device: torch.device | str = "cpu",
             crf_workers: int = 0, progress: bool = True, stego_compatible: bool = False) -> dict:
    """Cluster (Hungarian) and linear accuracy / mIoU of `model` on `dataset`, in percent.

    Items of `dataset` are dicts with `image` (3, H, W) and `label` (H, W), already at the evaluation
    crop (STEGO: `SegTransform(320)`); `res`, if given, asserts that size. Returns
    {"cluster": hungarian_metrics(...), "linear": iou_and_accuracy(...),
     "cluster_confusion": (K, K') tensor, "linear_confusion": (K, K) tensor}.
    """
    from tqdm.auto import tqdm

    model.eval().to(device)
    n_clusters = model.cluster_probe.clusters.shape[0]
    cluster_cm = ConfusionMatrix(model.n_classes, n_clusters)
    linear_cm = ConfusionMatrix(model.n_classes)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False)
    for batch in tqdm(loader, desc="evaluate", disable=not progress, leave=False):
        img, label = batch["image"].to(device), batch["label"]
        if res is not None and tuple(img.shape[-2:]) != (res, res):
            raise ValueError(f"images are {tuple(img.shape[-2:])} but res={res}; give the dataset "
                             f"the evaluation transform, e.g. stego_lite.data.SegTransform({res})")
        cluster_lp, linear_lp = model.log_probs(img, flip_tta=flip_tta)
        if crf:
            cluster_pred = crf_refine(img, cluster_lp, workers=crf_workers).argmax(1)
            linear_pred = crf_refine(img, linear_lp, workers=crf_workers).argmax(1)
        else:
            cluster_pred, linear_pred = cluster_lp.argmax(1).cpu(), linear_lp.argmax(1).cpu()
        cluster_cm.update(cluster_pred, label)
        linear_cm.update(linear_pred, label)
    return {
        "cluster": hungarian_metrics(cluster_cm.matrix, stego_compatible=stego_compatible),
        "linear": iou_and_accuracy(linear_cm.matrix),
        "cluster_confusion": cluster_cm.matrix,
        "linear_confusion": linear_cm.matrix,
    }
