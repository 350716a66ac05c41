from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
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

    assert stego_lite.viz.__name__ == "stego_lite.viz"
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        stego_lite.nope


@pytest.mark.filterwarnings("ignore:CUDA is not available")   # an autocast object is made, never entered
def test_mixed_precision_is_one_switch_for_cuda_only(monkeypatch) -> None:
    monkeypatch.delenv(env.AMP_ENV, raising=False)
    assert env.mixed_precision("cuda") and not env.mixed_precision("cpu") and not env.mixed_precision("mps")
    context = env.autocast("cuda")
    assert isinstance(context, torch.autocast) and context.fast_dtype == torch.bfloat16
    off = env.autocast("cuda", enabled=False)
    assert isinstance(off, torch.autocast) and not off._enabled   # an opt-out, not a bare nullcontext
    monkeypatch.setenv(env.AMP_ENV, "0")
    assert not env.mixed_precision("cuda") and not isinstance(env.autocast("cuda"), torch.autocast)


def test_autocast_changes_nothing_on_the_cpu() -> None:
    from stego_lite.backbone import VisionTransformer
    from stego_lite.head import SegmentationHead

    torch.manual_seed(0)
    vit = VisionTransformer("tiny", patch_size=8, embed_dim=16, depth=1, num_heads=2, img_size=16).eval()
    head = SegmentationHead(16, 4).eval()
    img = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        plain = head(vit(img))
        with env.autocast("cpu"):
            cast = head(vit.features(img))
    assert cast.dtype == torch.float32 and torch.equal(plain, cast)


def test_an_opt_out_holds_inside_an_enclosing_autocast() -> None:
    """A backbone that opts out (enabled=False) computes in float32 even when its caller runs it under an
    autocast; shown with the CPU's autocast, the same mechanism as CUDA's."""
    a, b = torch.randn(4, 8), torch.randn(8, 3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert (a @ b).dtype == torch.bfloat16
        with env.autocast("cpu", enabled=False):
            inner = a @ b
        assert (a @ b).dtype == torch.bfloat16      # the enclosing autocast is back after the opt-out
    assert inner.dtype == torch.float32 and torch.equal(inner, a @ b)


def test_loader_options_use_workers_and_pinned_memory_on_cuda_only() -> None:
    assert env.loader_options("cpu") == {} and env.loader_options(torch.device("cpu")) == {}
    cuda = env.loader_options("cuda")
    assert cuda["pin_memory"] is True and 1 <= cuda["num_workers"] <= 8


def test_offline_switch(monkeypatch) -> None:
    monkeypatch.delenv(env.OFFLINE_ENV, raising=False)
    assert not env.offline()
    monkeypatch.setenv(env.OFFLINE_ENV, "1")
    assert env.offline()
    monkeypatch.setenv(env.OFFLINE_ENV, "0")
    assert not env.offline()
