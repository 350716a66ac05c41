from __future__ import annotations

from pathlib import Path

import pytest

from stego_lite import data
from stego_lite.backbone import WEIGHTS
from stego_lite.profiles import PROFILES, get_profile


def test_unknown_profile_names_the_choices() -> None:
    with pytest.raises(ValueError, match=r"unknown profile 'gpu'; choose one of \['offline', 'paper'\]"):
        get_profile("gpu")


def test_offline_profile_is_synthstuff(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("STEGO_LITE_CACHE", str(tmp_path))
    monkeypatch.setattr(data, "SYNTHSTUFF_OFFLINE", data.SynthStuffConfig(image_size=32, n_train=3, n_val=2))
    p = get_profile("offline")
    train, val = p.train_set(), p.val_set()
    assert (len(train), len(val)) == (3, 2)
    assert train[0]["image"].shape == (3, 32, 32)


def test_paper_profile_uses_official_dino_and_says_where_coco_goes(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("STEGO_LITE_DATA", str(tmp_path))
    p = get_profile("paper")
    assert p.backbone in WEIGHTS and (p.train_res, p.eval_res) == (224, 320)
    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        p.val_set()
    with pytest.raises(FileNotFoundError, match="five_crop"):
        p.train_set()


def test_every_profile_has_a_dataset_it_can_build() -> None:
    assert {p.dataset for p in PROFILES.values()} <= {"synthstuff", "cocostuff27"}


def test_a_registered_profile_trains_and_evaluates(monkeypatch, tmp_path: Path) -> None:
    """Adding a profile is one call: a tiny SynthStuff profile trains a head and probes and evaluates."""
    import dataclasses

    import torch

    from stego_lite import evaluate, profiles
    from stego_lite.sources import FeatureSource

    monkeypatch.setenv("STEGO_LITE_CACHE", str(tmp_path))
    monkeypatch.setattr(profiles, "PROFILES", dict(PROFILES))
    monkeypatch.setattr(profiles, "PRESETS", dict(profiles.PRESETS))
    tiny_data = profiles.SynthStuffData(data.SynthStuffConfig(image_size=32, n_train=40, n_val=4, seed=5))
    preset = dataclasses.replace(profiles.PRESETS["synthstuff"], name="tiny", data=tiny_data, dim=4,
                                 batch_size=4, steps=6)
    sweep = dataclasses.replace(PROFILES["offline"].sweep, loss_preset="tiny", dims=(2, 4), head_steps=2,
                                convergence_dims=None)
    p = profiles.register_profile(profiles.Profile("tiny", preset, sweep, needs="a test", photos_in_domain=False))
    assert get_profile("tiny") is p and profiles.get_preset("tiny") is preset
    assert p.sweep_config().head_config(seed=1).batch_size == sweep.head_batch

    backbone = p.load_backbone()
    source = p.training_source(backbone)
    assert isinstance(source, FeatureSource) and len(source) == 40 and source.feats.shape[-1] == 32 // 8
    model, run = evaluate.train_model(p.train_config(seed=0), backbone, source, p.val_set().classes)
    assert len(run.history) == 6 and model.head.code_dim == 4
    val = p.val_set()
    scores = evaluate.evaluate(model, val, res=p.eval_res, progress=False)
    labelled = sum(int((val[i]["label"] >= 0).sum()) for i in range(len(val)))
    assert int(scores["linear_confusion"].sum()) == labelled   # every labelled pixel was scored once
    assert 0 <= scores["cluster"]["miou"] <= 100
    with pytest.raises(ValueError, match="another name"):
        profiles.register_profile(profiles.Profile(
            "tiny2", dataclasses.replace(preset, dim=8), sweep, needs="", photos_in_domain=False))
    assert torch.is_tensor(scores["cluster_confusion"])
