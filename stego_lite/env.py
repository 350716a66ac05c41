"""Where things live and what runs them: devices, cache folders, versions.

Every path can be moved with an environment variable, so a Colab user can point at a mounted drive
and CI can keep its caches outside the clone.
"""
from __future__ import annotations

import contextlib
import os
import platform
import random
from pathlib import Path

import numpy as np
import torch

CACHE_ENV = "STEGO_LITE_CACHE"   # root of everything stego_lite writes (datasets, features, KNN lists)
DATA_ENV = "STEGO_LITE_DATA"     # where real datasets (COCO-Stuff, Cityscapes, Potsdam) are looked for
AMP_ENV = "STEGO_LITE_AMP"       # "0": no mixed precision on CUDA (the one switch, see `autocast`)
OFFLINE_ENV = "STEGO_LITE_OFFLINE"   # "1": never download (weights, checkpoints, datasets); fail at once


def cache_dir() -> Path:
    """Root cache folder: $STEGO_LITE_CACHE, else ~/.cache/stego_lite (created on demand by writers)."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "stego_lite").expanduser()


def data_dir() -> Path:
    """Folder holding the real datasets in STEGO's layout: $STEGO_LITE_DATA, else <cache>/data."""
    return Path(os.environ.get(DATA_ENV) or cache_dir() / "data").expanduser()


def weights_dir() -> Path:
    """Where official checkpoints are cached: torch.hub's folder ($TORCH_HOME/hub/checkpoints)."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def default_device() -> torch.device:
    """The fastest device available here: CUDA, then Apple's MPS, then the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def mixed_precision(device: torch.device | str) -> bool:
    """Whether `autocast` computes in bfloat16 on `device`: on CUDA unless $STEGO_LITE_AMP is "0"."""
    return torch.device(device).type == "cuda" and os.environ.get(AMP_ENV, "1") != "0"


def autocast(device: torch.device | str, enabled: bool = True) -> contextlib.AbstractContextManager:
    """bfloat16 autocast for the frozen backbone and the head on CUDA; on other devices nothing changes.

    The one switch for mixed precision: $STEGO_LITE_AMP=0 turns it off. Callers cast the results back to
    float32 (`.float()`), so caches, the loss and the probes always see float32. `enabled=False` is an
    opt-out (texture_bank stays float32): it switches off an enclosing autocast too, which a bare
    `nullcontext` would leave in force.
    """
    if enabled and mixed_precision(device):
        return torch.autocast("cuda", dtype=torch.bfloat16)
    device_type = torch.device(device).type
    if not enabled and device_type in ("cpu", "cuda"):
        return torch.autocast(device_type, enabled=False)
    return contextlib.nullcontext()


def loader_options(device: torch.device | str) -> dict:
    """DataLoader settings for batches bound for `device`: worker processes and pinned memory on CUDA
    (image decoding must keep up with the GPU), none on other devices (workers only cost there)."""
    if torch.device(device).type != "cuda":
        return {}
    return {"num_workers": min(8, os.cpu_count() or 1), "pin_memory": True}


def offline() -> bool:
    """True when $STEGO_LITE_OFFLINE asks that nothing be downloaded (CI's miniature paper world)."""
    return os.environ.get(OFFLINE_ENV, "0") not in ("", "0")


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices) so that a run repeats exactly on the CPU."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def on_colab() -> bool:
    """True inside Google Colab."""
    return "COLAB_RELEASE_TAG" in os.environ or "google.colab" in __import__("sys").modules


def versions() -> dict[str, str]:
    """Versions of the pieces that decide the numbers: Python, torch, numpy, stego_lite."""
    import stego_lite

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "stego_lite": stego_lite.__version__,
    }
