"""SynthStuff's world switches (scenes, nuisance) and the worlds' preconditions (stego_lite.worlds)."""
from __future__ import annotations

import hashlib
import itertools

import numpy as np
import pandas as pd
import pytest
import torch

from stego_lite import analysis, data, profiles, worlds
from stego_lite.data import SynthStuff, SynthStuffConfig, normalize, synthstuff_sample
from stego_lite.loss import LossConfig
from stego_lite.sources import FeatureSource

SWITCHES = [{"scenes": True}, {"nuisance": True}]


def _samples(n: int, size: int, **switches) -> list[tuple[np.ndarray, np.ndarray, dict]]:
    out = []
    for i in range(n):
        layout: dict = {}
        img, label = synthstuff_sample(0, "train", i, size, layout=layout, **switches)
        out.append((img, label, layout))
    return out


# ---------------------------------------------------------------- the switches


def test_defaults_give_the_earlier_images_byte_for_byte(tmp_path) -> None:
    # digests of synthstuff_sample before the switches existed (commit cb4e4d3): the other chapters' data
    expected = {96: "1fef1f636ae0d83317cbd2217a9f168bca386c9f515f0dc633317bfc03083ea7",
                48: "12941ed16c685d22ee593f1dad000fbff25eeb4c42b5ba3630741b84c85cd5fc"}
    for size, digest in expected.items():
        h = hashlib.sha256()
        for split, i in itertools.product(("train", "val"), range(3)):
            img, label = synthstuff_sample(0, split, i, size, scenes=False, nuisance=False)
            h.update(img.tobytes())
            h.update(label.tobytes())
        assert h.hexdigest() == digest, size
    ds = SynthStuff("val", n_images=2, image_size=32, root=tmp_path, workers=1)
    assert ds.folder.name == f"synthstuff-32px-seed0-v{data.GENERATOR_VERSION}" and ds.name == "synthstuff"


@pytest.mark.parametrize("switch", SWITCHES, ids=lambda s: next(iter(s)))
def test_a_switch_is_deterministic_and_changes_the_images(switch) -> None:
    a, b = synthstuff_sample(3, "val", 7, 48, **switch), synthstuff_sample(3, "val", 7, 48, **switch)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    plain = synthstuff_sample(3, "val", 7, 48)
    assert not np.array_equal(a[0], plain[0])


@pytest.mark.parametrize("switch", SWITCHES, ids=lambda s: next(iter(s)))
def test_a_switch_keeps_class_frequencies_within_two_points(switch) -> None:
    n, size = (900 if "scenes" in switch else 300), 32   # the nuisance leaves every label as it was
    shares = []
    for world in ({}, switch):
        labels = np.stack([label for _, label, _ in _samples(n, size, **world)])
        shares.append(100 * np.bincount(labels.ravel(), minlength=8) / labels.size)
    assert np.abs(shares[1] - shares[0]).max() <= 2.0, np.round(shares, 1)


def _layout_statistics(samples) -> dict[str, float]:
    """Class-blind statistics of the geometry: regions and things per image, the largest region's share of
    the image, the things' share of the pixels."""
    regions = [np.bincount(layout["regions"].ravel()) / layout["regions"].size for _, _, layout in samples]
    things = [np.any(layout["things"], axis=0) for _, _, layout in samples]
    return {"regions": np.mean([len(r) for r in regions]), "largest region": np.mean([r.max() for r in regions]),
            "things": np.mean([len(layout["things"]) for _, _, layout in samples]),
            "thing share": np.mean([t.mean() for t in things])}


@pytest.mark.parametrize("switch", SWITCHES, ids=lambda s: next(iter(s)))
def test_a_switch_keeps_the_layout_statistics(switch) -> None:
    plain, switched = _samples(400, 32), _samples(400, 32, **switch)
    a, b = _layout_statistics(plain), _layout_statistics(switched)
    for stat in ("regions", "things"):   # counts: 2-4 regions, 1-3 things, about 1 std
        assert abs(a[stat] - b[stat]) < 0.1, (stat, a, b)
    for stat in ("largest region", "thing share"):
        assert abs(a[stat] - b[stat]) < 0.02, (stat, a, b)
    if "nuisance" in switch:   # the nuisance has its own random stream: the labels do not move at all
        assert all(np.array_equal(p[1], s[1]) for p, s in zip(plain, switched))


def test_scene_types_name_which_classes_appear() -> None:
    types = data.scenes.scene_types()
    assert len(types) == 30 and len(set(types)) == 30
    stuff = np.bincount([c for t in types for c in t.stuff], minlength=5)
    assert (stuff == 12).all() and (np.bincount([t.thing for t in types]) == 10).all()
    assert {data.synthstuff.scene_of(0, "val", i) for i in range(30, 60)} == set(types)   # a block: each once
    for i in range(60):   # every image shows at most its type's two stuff classes and one thing class
        layout: dict = {}
        _, label = synthstuff_sample(0, "val", i, 48, scenes=True, layout=layout)
        scene = data.synthstuff.scene_of(0, "val", i)
        allowed = {*scene.stuff, 5 + scene.thing}
        assert set(np.unique(label)) <= allowed, (i, scene)


def test_worlds_have_their_own_folders_names_and_feature_keys(tmp_path) -> None:
    from stego_lite.backbone import load_backbone
    from stego_lite.features import feature_key

    backbone = load_backbone("texture_bank")
    folders, keys = set(), set()
    for scenes, nuisance in itertools.product((False, True), repeat=2):
        config = SynthStuffConfig(image_size=32, n_train=2, n_val=2, scenes=scenes, nuisance=nuisance)
        ds = config.dataset("val", root=tmp_path)
        assert ds.name == config.name and (scenes, nuisance) == (ds.scenes, ds.nuisance)
        folders.add(ds.folder)
        keys.add(feature_key(backbone, ds).name)
    assert len(folders) == 4 and len(keys) == 4


# ---------------------------------------------------------------- the acceptance measurements on texture_bank


@pytest.fixture(scope="module")
def texture_bank():
    from stego_lite.backbone import load_backbone

    return load_backbone("texture_bank")


def _features(backbone, n: int, **switches) -> tuple[torch.Tensor, torch.Tensor]:
    samples = [synthstuff_sample(0, "train", i, 96, **switches) for i in range(n)]
    images = torch.stack([normalize(img) for img, _ in samples])
    labels = torch.stack([torch.from_numpy(label.astype(np.int64)) for _, label in samples])
    with torch.no_grad(), worlds.one_thread():
        feats = torch.cat([backbone.features(images[i:i + 100]) for i in range(0, n, 100)])
    return feats, labels


def test_scenes_raise_the_knn_overlap_gap_by_a_tenth(texture_bank) -> None:
    from stego_lite.knn import global_descriptors, knn_indices

    gaps = []
    for scenes in (False, True):
        feats, labels = _features(texture_bank, 400, scenes=scenes)   # today's gap is about 0.2
        nns = knn_indices(global_descriptors(feats), 8)
        knn, pairs = worlds.histogram_overlap(worlds.class_histograms(labels, 8), nns)
        gaps.append(knn - pairs)
    assert gaps[1] - gaps[0] >= 0.10, gaps


def test_nuisance_lowers_the_class_share_of_the_first_three_components(texture_bank) -> None:
    from stego_lite.reducers import patch_labels, tokens

    shares = []
    for nuisance in (False, True):
        feats, labels = _features(texture_bank, 100, nuisance=nuisance)
        y = patch_labels(labels, tuple(feats.shape[-2:]), 8).flatten()
        shares.append(worlds.class_variance_share(tokens(feats), y, 3))
    assert shares[1] < shares[0], shares


# ---------------------------------------------------------------- the measurements against direct computations


def test_histogram_overlap_against_loops() -> None:
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 4, (6, 5, 5), generator=g)
    labels[0, 0, 0] = -1                                     # ignored pixels are left out
    hist = worlds.class_histograms(labels, 4)
    assert torch.allclose(hist.sum(1), torch.ones(6, dtype=torch.float64))
    assert hist[0, labels[0, 0, 1]] == pytest.approx(float((labels[0] == labels[0, 0, 1]).sum()) / 24)
    nns = torch.stack([torch.randperm(6, generator=g) for _ in range(6)])
    nns[:, 0] = torch.arange(6)
    knn, pairs = worlds.histogram_overlap(hist, nns, num_neighbors=2)
    h = hist.numpy()
    overlap = lambda i, j: np.minimum(h[i], h[j]).sum()   # noqa: E731
    assert knn == pytest.approx(np.mean([overlap(i, j) for i in range(6) for j in nns[i, 1:3].tolist()]))
    assert pairs == pytest.approx(np.mean([overlap(i, j) for i in range(6) for j in range(6) if i != j]))


def test_class_variance_share_against_scikit_learn() -> None:
    from sklearn.decomposition import PCA as SkPCA
    from sklearn.preprocessing import StandardScaler

    g = torch.Generator().manual_seed(1)
    y = torch.randint(0, 3, (400,), generator=g)
    x = torch.randn(400, 8, generator=g) + 2 * torch.randn(3, 8, generator=g)[y]
    z = SkPCA(3).fit_transform(StandardScaler().fit_transform(x.numpy().astype(np.float64)))
    labels = y.numpy()
    r2 = sum((labels == k).sum() * z[labels == k].mean(0) ** 2 for k in range(3)) / (z ** 2).sum(0)
    weights = (z ** 2).sum(0) / (z ** 2).sum()   # each component's share of the three's variance
    assert worlds.class_variance_share(x, y, 3) == pytest.approx(float((r2 * weights).sum()), rel=1e-5)
    assert worlds.class_variance_share(torch.randn(400, 8, generator=g), y, 3) < 0.05   # no class structure


def _labelled_source(n: int = 8, other: float = 0.0) -> FeatureSource:
    """Unit features of the label, cos 1 for the same label and `other` for different ones: each image is
    2 x 2 blocks of 8 x 8 patches labelled a, b / b, a. (Points between blocks get mixed features: rare.)"""
    g = torch.Generator().manual_seed(2)
    first = torch.randint(0, 2, (n, 1, 1), generator=g)
    blocks = (first + torch.tensor([[0, 1], [1, 0]])) % 2                           # (n, 2, 2)
    labels = blocks.repeat_interleave(8, 1).repeat_interleave(8, 2)                 # (n, 16, 16)
    basis = torch.tensor([[1.0, 0.0], [other, (1 - other ** 2) ** 0.5]])
    feats = basis[labels].permute(0, 3, 1, 2).contiguous()                          # (n, 2, 16, 16)
    nns = torch.stack([torch.roll(torch.arange(n), -i) for i in range(n)], dim=1)   # image itself first
    return FeatureSource(feats, nns, labels)


@pytest.mark.parametrize("other", [0.0, 0.4])
def test_rule_shifts_are_the_midpoints_of_the_label_medians(other) -> None:
    loss = LossConfig(pointwise=False)
    found = worlds.feature_agreement(_labelled_source(other=other), loss, batches=4, batch_size=4)
    for term, (same, different) in found.items():
        assert len(same) > 100 and len(different) > 100, term
        assert float(same.median()) == pytest.approx(1.0, abs=1e-5)
        assert float(different.median()) == pytest.approx(other, abs=1e-5)
        assert float((same > other + 1e-3).float().mean()) > 0.9   # mixed points stay a minority
    shifts = worlds.rule_shifts(_labelled_source(other=other), loss, batches=4, batch_size=4)
    assert list(shifts.term) == list(worlds.TERMS)
    assert np.allclose(shifts["shift"], round((1 + other) / 2, 2))
    assert np.allclose(shifts["same-label median"], 1.0, atol=1e-5)


def test_rule_shifts_need_labels() -> None:
    source = _labelled_source()
    source.labels = None
    with pytest.raises(ValueError, match="labels"):
        worlds.rule_shifts(source, LossConfig())


def test_paired_gaps_pair_seeds() -> None:
    rows = [{"method": m, "dim": d, "seed": s, "probe": "cluster", "miou": v}
            for m, d, s, v in [("STEGO", 3, 0, 10.0), ("PCA", 3, 0, 12.0), ("STEGO", 3, 1, 20.0),
                               ("PCA", 3, 1, 15.0), ("raw", 9, 0, 1.0), ("raw", 9, 1, 2.0)]]
    gaps = worlds.paired_gaps(pd.DataFrame(rows))
    assert gaps.dim.tolist() == [3] and gaps.seeds.tolist() == [2]
    assert gaps.gap.iloc[0] == pytest.approx(1.5) and gaps["gap std"].iloc[0] == pytest.approx(np.std([-2, 5], ddof=1))
    assert (gaps["gap min"].iloc[0], gaps["gap max"].iloc[0]) == (-2.0, 5.0)


# ---------------------------------------------------------------- the worlds as profiles


def test_the_four_worlds_and_their_sweep_with_the_rule_shifts() -> None:
    assert list(profiles.WORLDS) == ["world-plain", "world-scenes", "world-nuisance", "world-scenes-nuisance"]
    for name, world in profiles.WORLDS.items():
        config = world.preset.data.resolved()
        assert (config.n_train, config.n_val) == (600, 150) and world.dataset == config.name
        assert (config.scenes, config.nuisance) == ("scenes" in name, "nuisance" in name)
        assert profiles.get_preset(world.loss_preset) is world.preset
    with pytest.raises(ValueError, match="unknown world 'world-x'"):
        profiles.get_world("world-x")
    shifts = pd.DataFrame({"term": ["random", "self", "knn"], "shift": [0.3, 0.7, 0.5]})
    cfg = worlds.world_sweep(profiles.get_world("world-scenes"), {"shifts": shifts})
    loss = cfg.head_config(seed=0).loss
    assert (loss.self_shift, loss.knn_shift, loss.random_shift) == (0.7, 0.5, 0.3)
    assert loss.self_weight == profiles.PRESETS["synthstuff"].loss.self_weight
    assert profiles.get_profile("offline").sweep_config().head_config(0).loss == profiles.PRESETS["synthstuff"].loss


def test_precondition_table_cites_coco_beside_the_worlds() -> None:
    probes = pd.DataFrame([{"method": "raw", "dim": 254, "probe": "cluster", "miou": 25.0},
                           {"method": "raw", "dim": 254, "probe": "linear", "miou": 77.0},
                           {"method": "PCA", "dim": 3, "probe": "cluster", "miou": 30.0},
                           {"method": "PCA", "dim": 3, "probe": "linear", "miou": 38.0}])
    summary = pd.DataFrame([{"world": "w", "overlap KNN": 0.6, "overlap random": 0.4}])
    table = worlds.precondition_table({"w": {"probes": probes, "summary": summary}})
    assert list(table.world) == ["w", "COCO-Stuff-27, DINO ViT-B/8 (published)"]
    assert table.loc[0, "PCA-3 k-means"] == 30.0 and table.loc[0, "overlap gap"] == pytest.approx(0.2)
    assert table.loc[1, "raw k-means"] == 12.7 and table.loc[1, "PCA-3 k-means"] == 5.1
    assert pd.isna(table.loc[1, "overlap KNN"])


def test_decision_and_switch_effects_follow_the_preregistered_rule() -> None:
    def gaps(values, std=1.0):   # one D per value: mean, std and a [min, max] around it
        return pd.DataFrame({"dim": [3, 6, 12][:len(values)], "gap": values, "gap std": std,
                             "gap min": [v - 2 for v in values], "gap max": [v + 2 for v in values], "seeds": 3})

    assert worlds.decision(gaps([5.0, -5.0, 1.0])).tolist() == ["reproduced", "reversed", "undecided"]
    table = {(False, False): gaps([-8.0]), (True, False): gaps([-6.5]), (False, True): gaps([-3.0], 0.5),
             (True, True): gaps([-3.2], 0.5)}
    effects = worlds.switch_effects(table).set_index(["switch", "other on"])
    assert effects.loc[("scenes", False), "change"] == pytest.approx(1.5)
    assert bool(effects.loc[("scenes", False), "beyond noise"])            # 1.5 > max std 1.0
    assert not bool(effects.loc[("scenes", True), "beyond noise"])         # 0.2 < 0.5
    assert effects.loc[("nuisance", True), "change"] == pytest.approx(3.3)   # -3.2 against -6.5


def test_class_shares_count_the_labelled_pixels(tmp_path) -> None:
    ds = SynthStuffConfig(image_size=32, n_train=2, n_val=3, scenes=True).dataset("val", root=tmp_path)
    labels = np.concatenate([ds.load(i)[1].ravel() for i in range(3)])
    expected = 100 * np.bincount(labels, minlength=8) / labels.size
    np.testing.assert_allclose(worlds.class_shares(ds).to_numpy(), expected)
    assert list(worlds.class_shares(ds).index) == list(ds.classes)


def test_study_of_a_tiny_world_runs_end_to_end_and_reads_back(monkeypatch, tmp_path) -> None:
    import dataclasses

    monkeypatch.setenv("STEGO_LITE_CACHE", str(tmp_path))
    world = profiles.world_profile(True, True)
    data_spec = dataclasses.replace(world.preset.data, changes=(("image_size", 32), ("n_train", 40),
                                                                ("n_val", 4), ("scenes", True), ("nuisance", True)))
    preset = dataclasses.replace(world.preset, name="world-tiny", data=data_spec)
    sweep = dataclasses.replace(world.sweep, loss_preset="world-tiny", dims=(2, 4), seeds=(0, 1), head_steps=2,
                                head_batch=4, tokens_per_image=4)
    tiny = dataclasses.replace(world, name="world-tiny", preset=preset, sweep=sweep)
    monkeypatch.setattr(profiles, "PRESETS", {**profiles.PRESETS, "world-tiny": preset})
    first = worlds.study_all({"world-tiny": tiny}, workers=1)["world-tiny"]
    assert list(first.preconditions["shifts"].term) == list(worlds.TERMS)
    assert first.config.loss_shifts == tuple(first.preconditions["shifts"]["shift"])
    assert set(first.table.method) == {"STEGO", "PCA", "RP", "raw"} and set(first.table.seed) == {0, 1}
    assert worlds.paired_gaps(first.table).seeds.tolist() == [2, 2]
    assert list((tmp_path / "analysis").glob("studied-world-tiny-*.done"))
    again = worlds.study_all({"world-tiny": tiny})["world-tiny"]   # read back, no worker started
    pd.testing.assert_frame_equal(first.table, again.table)
    assert again.distinct is None

    # chapter 05's indices on the same heads: the sweep is unchanged, raw equals distinctness on the sample
    indexed = worlds.study_all({"world-tiny": tiny}, distinct=True, workers=1)["world-tiny"]
    pd.testing.assert_frame_equal(first.table, indexed.table)
    table = indexed.distinct
    assert set(table.method) == {"STEGO", "PCA", "RP", "raw"} and set(table.seed) == {0, 1}
    assert set(table[table.method == "STEGO"].dim) == {2, 4}
    _, data = analysis.sweep_inputs(tiny, tiny.load_backbone("cpu"))
    x, y = data.val_tokens(indexed.config.distinct_tokens, indexed.config.seeds[0])
    expected = analysis.distinctness(x, y)
    raw = table[(table.method == "raw") & (table.seed == 0)].iloc[0]
    for metric, value in expected.items():
        assert raw[metric] == pytest.approx(value, rel=1e-4, abs=1e-6)
    only = worlds.study_all({"world-tiny": tiny}, sweep=False, distinct=True, workers=1)["world-tiny"]
    assert only.table is None        # chapter 05 needs the heads, not the sweep table
    pd.testing.assert_frame_equal(only.distinct, table)


def test_a_world_at_the_smoke_scale_keeps_its_switches_and_shrinks() -> None:
    world = profiles.get_world("world-scenes-nuisance")
    smoke = world.scaled("smoke")
    config = smoke.preset.data.resolved()
    assert (config.image_size, config.n_train, config.n_val) == (32, 48, 8)
    assert (config.scenes, config.nuisance) == (True, True) and smoke.dataset == world.dataset
    assert smoke.sweep_config().dims == (3, 6) and smoke.sweep_config().seeds == world.sweep_config().seeds
    assert world.scaled("full") is world
