"""stego_lite: a small, readable rebuild of STEGO for the book "STEGO, unpacked".

One module per concept (backbone, data, head, loss, knn, train, probes, metrics, crf, evaluate,
analysis, viz). Submodules are imported on first use, so `import stego_lite as sl` stays cheap and
has no side effects; `sl.viz`, `sl.backbone`, ... work as attributes.
"""
from __future__ import annotations

import importlib
from types import ModuleType

__version__ = "0.1.0"

_SUBMODULES = (
    "analysis", "backbone", "crf", "data", "env", "evaluate", "features", "head", "knn", "loss", "metrics",
    "inference", "pretrain", "probes", "profiles", "published", "released", "texture_bank", "train", "viz",
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
