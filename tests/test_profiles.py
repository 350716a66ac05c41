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


def test_smoke_scale_shrinks_sizes_and_nothing_else() -> None:
    import dataclasses

    from stego_lite.profiles import SWEEP_SIZES

    full, smoke = get_profile("paper"), get_profile("paper", scale="smoke")
    assert (full.scale, smoke.scale) == ("full", "smoke") and smoke == full.scaled("smoke")
    assert get_profile("paper", scale="full") is full and smoke.scaled("smoke") is smoke
    # sizes: images, resolutions, iterations, the D grid and the sweep's samples
    assert (smoke.train_res, smoke.eval_res) == (32, 32) and (full.train_res, full.eval_res) == (224, 320)
    assert (smoke.preset.data.train_images, smoke.preset.data.val_images) == (512, 32)
    assert smoke.preset.steps < full.preset.steps and smoke.preset.batch_size < full.preset.batch_size
    assert set(smoke.sweep.dims) < set(full.sweep.dims) and smoke.sweep.head_steps < full.sweep.head_steps
    # nothing else: backbone, weights, data, loss, learning rates, the sweep's method
    same_preset = {f.name for f in dataclasses.fields(full.preset)} - {"data", "steps", "batch_size"}
    assert all(getattr(smoke.preset, f) == getattr(full.preset, f) for f in same_preset)
    data_sizes = {"train_res", "eval_res", "train_images", "val_images"}
    assert all(getattr(smoke.preset.data, f.name) == getattr(full.preset.data, f.name)
               for f in dataclasses.fields(full.preset.data) if f.name not in data_sizes)
    assert all(getattr(smoke.sweep, f.name) == getattr(full.sweep, f.name)
               for f in dataclasses.fields(full.sweep) if f.name not in SWEEP_SIZES)
    assert (smoke.photo_res, full.photo_res, get_profile("offline").photo_res) == (112, 448, 448)
    assert smoke.photo_res % 56 == 0   # SamplePhotos crops to a multiple of 14, texture_bank and ViT-B/8 read 8
    sizes = {"preset", "sweep", "scale", "photo_res"}
    assert all(getattr(smoke, f.name) == getattr(full, f.name) for f in dataclasses.fields(full)
               if f.name not in sizes)
    assert smoke.train_config(seed=1).loss == full.train_config(seed=1).loss


def test_unknown_scales_and_non_size_changes_are_refused() -> None:
    from stego_lite.profiles import Scale

    with pytest.raises(ValueError, match=r"profile 'offline' has no scale 'smoke'; choose one of \['full'\]"):
        get_profile("offline", scale="smoke")
    with pytest.raises(ValueError, match=r"choose one of \['full', 'smoke'\]"):
        get_profile("paper", scale="tiny")
    with pytest.raises(ValueError, match="already scaled"):
        get_profile("paper", scale="smoke").scaled("full")
    with pytest.raises(ValueError, match=r"changes only sizes; \['loss_preset'\]"):
        Scale("bad", 32, 32, None, None, 1, 2, sweep={"dims": (3,), "loss_preset": "synthstuff"})


def test_a_scaled_synthstuff_profile_generates_smaller_data(monkeypatch, tmp_path: Path) -> None:
    import dataclasses

    from stego_lite import profiles

    monkeypatch.setenv("STEGO_LITE_CACHE", str(tmp_path))
    offline = PROFILES["offline"]
    small = profiles.Scale("small", 32, 32, train_images=3, val_images=2, steps=2, batch_size=2)
    p = dataclasses.replace(offline, scales=(small,)).scaled("small")
    train, val = p.train_set(), p.val_set()
    assert (len(train), len(val)) == (3, 2) and train[0]["image"].shape == (3, 32, 32)
    assert p.train_config().steps == 2 and p.sweep == offline.sweep


def test_first_images_answers_as_its_dataset(tmp_path: Path) -> None:
    folder = tmp_path / "own"
    (folder / "imgs" / "val").mkdir(parents=True)
    for i in range(5):
        from PIL import Image

        Image.new("RGB", (16, 16), (i, 0, 0)).save(folder / "imgs" / "val" / f"{i}.png")
    full = data.ImageFolder(folder, "val", n_classes=3, transform=data.SegTransform(16))
    first = data.FirstImages(full, 3)
    assert len(first) == 3 and len(data.FirstImages(full, 99)) == 5
    assert first.classes == full.classes and first.name == "directory" and first.split == "val"
    assert first.load(2)[0].getpixel((0, 0)) == (2, 0, 0) and first[1]["index"] == 1
    with pytest.raises(IndexError):
        first[3]
    with pytest.raises(ValueError, match="at least one"):
        data.FirstImages(full, 0)
