from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from stego_lite import env


def test_cache_folders_follow_environment(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv(env.CACHE_ENV, str(tmp_path / "c"))
    monkeypatch.delenv(env.DATA_ENV, raising=False)
    assert env.cache_dir() == tmp_path / "c"
    assert env.data_dir() == tmp_path / "c" / "data"
    monkeypatch.setenv(env.DATA_ENV, str(tmp_path / "d"))
    assert env.data_dir() == tmp_path / "d"
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "t"))
    assert env.weights_dir() == tmp_path / "t" / "hub" / "checkpoints"


def test_default_device_falls_back_to_cpu(monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert env.default_device() == torch.device("cpu")


def test_seed_everything_repeats_draws() -> None:
    env.seed_everything(3)
    first = (np.random.rand(), torch.rand(2))
    env.seed_everything(3)
    second = (np.random.rand(), torch.rand(2))
    assert first[0] == second[0] and torch.equal(first[1], second[1])


def test_versions_name_the_library() -> None:
    import stego_lite

    assert env.versions()["stego_lite"] == stego_lite.__version__


def test_submodules_load_lazily_and_unknown_names_fail() -> None:
    import stego_lite
    import pytest

    assert stego_lite.viz.__name__ == "stego_lite.viz"
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        stego_lite.nope
