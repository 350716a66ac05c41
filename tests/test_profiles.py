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
