"""Where things live and what runs them: devices, cache folders, versions.

Every path can be moved with an environment variable, so a Colab user can point at a mounted drive
and CI can keep its caches outside the clone.
"""
from __future__ import annotations

import os
import platform
import random
from pathlib import Path

import numpy as np
import torch

CACHE_ENV = "STEGO_LITE_CACHE"   # root of everything stego_lite writes (datasets, features, KNN lists)
DATA_ENV = "STEGO_LITE_DATA"     # where real datasets (COCO-Stuff, Cityscapes, Potsdam) are looked for


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
