"""Evaluate a STEGO model the way the paper does (reference §5.4): codes, probes, optional CRF, metrics.

    model = StegoModel(backbone, head, cluster_probe, linear_probe, classes)
    result = evaluate(model, val_set, flip_tta=True, crf=False)
    result["cluster"]["miou"], result["linear"]["miou"]

Per batch: code = head(backbone(img)), averaged with the code of the horizontally flipped image
(flipped back) when `flip_tta`; the code is upsampled bilinearly to the image size *before* the
probes; the cluster probe gives log softmax(2 cos) and the linear probe log softmax(logits);
an optional dense CRF refines both; the argmax goes into dataset-wide confusion matrices. The
cluster ids are matched to classes once, globally, at the end (Hungarian).

The model itself, its training and its file (`StegoModel`, `train_model`, `save_model`, `load_model`)
are `stego_lite.model`'s; they stay importable from here.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from stego_lite import cache, distributed
from stego_lite.env import loader_options
from stego_lite.metrics import ConfusionMatrix, hungarian_metrics, iou_and_accuracy
from stego_lite.progress import progress as progress_bar
from stego_lite.model import (  # noqa: F401 (all but StegoModel: re-exported)
    MODEL_FORMAT, MODEL_FORMAT_VERSION, ModelFileError, StegoModel, load_model, save_model, stego_probes,
    train_model,
)


def crf_refine(img: Tensor, log_probs: Tensor, *, workers: int = 0, pool=None) -> Tensor:
    """Dense-CRF marginals of a batch: normalised images (B, 3, H, W), log-probs (B, K, H, W) -> probs.

    `pool` (from `crf.crf_pool`) or `workers` spread the images over processes (see `crf.dense_crf_batch`).
    The images become 8-bit as in STEGO (torchvision's to_pil_image: x * 255, truncated, not rounded).
    """
    from stego_lite.crf import dense_crf_batch
    from stego_lite.data import denormalize

    images = (denormalize(img.cpu()).permute(0, 2, 3, 1).numpy() * 255).astype(np.uint8)   # truncates
    probs = dense_crf_batch(images, log_probs.exp().cpu().numpy(), workers=workers, pool=pool)
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
    from stego_lite.crf import crf_pool

    model.eval().to(device)
    n_clusters = model.cluster_probe.clusters.shape[0]
    cluster_cm = ConfusionMatrix(model.n_classes, n_clusters)
    linear_cm = ConfusionMatrix(model.n_classes)
    # under torchrun each rank scores its rows (in the batches one process uses); the counts are summed
    loader = DataLoader(distributed.rows_of(dataset, batch_size), batch_size=batch_size, shuffle=False,
                        **loader_options(device))
    with crf_pool(crf_workers if crf else 0) as pool:   # one pool for the whole evaluation
        for batch in progress_bar(loader, enabled=progress, desc="evaluate", leave=False):
            img, label = batch["image"].to(device, non_blocking=True), batch["label"]
            if res is not None and tuple(img.shape[-2:]) != (res, res):
                raise ValueError(f"images are {tuple(img.shape[-2:])} but res={res}; give the dataset "
                                 f"the evaluation transform, e.g. stego_lite.data.SegTransform({res})")
            cluster_lp, linear_lp = model.log_probs(img, flip_tta=flip_tta)
            if crf:
                cluster_pred = crf_refine(img, cluster_lp, pool=pool).argmax(1)
                linear_pred = crf_refine(img, linear_lp, pool=pool).argmax(1)
            else:
                cluster_pred, linear_pred = cluster_lp.argmax(1).cpu(), linear_lp.argmax(1).cpu()
            cluster_cm.update(cluster_pred, label)
            linear_cm.update(linear_pred, label)
    cluster, linear = (distributed.all_reduce_sum(cm.matrix) for cm in (cluster_cm, linear_cm))
    return _scores(cluster, linear, stego_compatible=stego_compatible)


def _scores(cluster_confusion: Tensor, linear_confusion: Tensor, *, stego_compatible: bool) -> dict:
    """`evaluate`'s result: every number follows from the two dataset-wide confusion matrices."""
    return {
        "cluster": hungarian_metrics(cluster_confusion, stego_compatible=stego_compatible),
        "linear": iou_and_accuracy(linear_confusion),
        "cluster_confusion": cluster_confusion,
        "linear_confusion": linear_confusion,
    }


# Options of `evaluate` that change its result (batch size, device, workers and progress do not).
RESULT_OPTIONS = {"res": None, "flip_tta": True, "crf": False, "stego_compatible": False}


def evaluate_run(model: StegoModel, result, dataset: Dataset, **options) -> dict:
    """`evaluate(model, dataset, **options)` of a trained run (`train.TrainResult`), kept in its folder.

    Computed once: the keyed cache's file is named by the run's iteration count, the dataset's
    feature-cache key and the options that change the result, so a longer run, other data or other
    options are evaluated anew. It keeps the two confusion matrices, from which every score follows as
    in `evaluate`. Without a run folder it just evaluates.
    """
    if result.run_dir is None:
        return evaluate(model, dataset, **options)
    from stego_lite.features import feature_key

    spec = {"iterations": len(result.history), "data": feature_key(model.backbone, dataset).name,
            "options": {k: options.get(k, default) for k, default in RESULT_OPTIONS.items()}}

    def confusions() -> dict[str, Tensor]:
        scores = evaluate(model, dataset, **options)
        return {k: scores[k] for k in ("cluster_confusion", "linear_confusion")}

    # version 2: the CRF's input as STEGO's (BGR, truncated to 8 bits)
    path = cache.keyed_path(Path(result.run_dir), "eval", spec)
    saved = distributed.load_or_compute(path, spec, confusions, version=2)   # cache's, in one process
    return _scores(saved["cluster_confusion"], saved["linear_confusion"],
                   stego_compatible=spec["options"]["stego_compatible"])
