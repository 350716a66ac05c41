"""stego_lite.data: item format, transforms, SynthStuff (determinism, caching, class coverage, alignment)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from stego_lite import data
from stego_lite.data import (
    IMAGENET_MEAN, IMAGENET_STD, SYNTHSTUFF_OFFLINE, SegTransform, SynthStuff, default_transform, denormalize,
    normalize,
)

SIZE = 64   # small scenes keep these tests fast


def _synth(root, split="train", n=4, seed=0, size=SIZE, **kw) -> SynthStuff:
    return SynthStuff(split, n_images=n, image_size=size, seed=seed, root=root, workers=1, **kw)


def _files(folder, split):
    return sorted(p for part in ("imgs", "labels") for p in (folder / part / split).iterdir())


# ---------------------------------------------------------------- public API and item format

def test_item_format_and_class_info(tmp_path):
    ds = _synth(tmp_path)
    item = ds[1]
    assert set(item) == {"image", "label", "index"}
    assert item["image"].dtype == torch.float32 and item["image"].shape == (3, SIZE, SIZE)
    assert item["label"].dtype == torch.int64 and item["label"].shape == (SIZE, SIZE)
    assert item["index"] == 1 and isinstance(item["index"], int)
    assert len(ds) == 4 and ds.n_classes == 8 == len(ds.classes)
    assert ds.classes == data.scenes.STUFF_CLASSES + data.scenes.THING_CLASSES
    assert ds.palette.shape == (8, 3) and ds.palette.dtype == np.uint8
    assert len({tuple(c) for c in ds.palette}) == 8
    assert 0 <= item["label"].min() and item["label"].max() < 8   # every pixel labelled
    raw, _ = ds.load(1)   # normalisation is ImageNet's and undone by denormalize
    np.testing.assert_allclose(denormalize(item["image"]).permute(1, 2, 0).numpy(),
                               np.asarray(raw) / 255, atol=1e-6)
    with pytest.raises(IndexError):
        ds[4]


def test_offline_profile_defaults():
    assert SYNTHSTUFF_OFFLINE.image_size % 8 == 0
    assert (SYNTHSTUFF_OFFLINE.n_train, SYNTHSTUFF_OFFLINE.n_val) == (2000, 200)
    assert SYNTHSTUFF_OFFLINE.n_images("val") == 200


def test_normalize_denormalize_roundtrip():
    img = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    x = normalize(img)
    assert x.shape == (3, 5, 7) and x.dtype == torch.float32
    expected = (img[0, 0] / 255 - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)
    np.testing.assert_allclose(x[:, 0, 0].numpy(), expected, rtol=1e-5)
    batch = torch.stack([x, x])
    np.testing.assert_allclose(denormalize(batch)[1].permute(1, 2, 0).numpy(), img / 255, atol=1e-6)
    with pytest.raises(ValueError, match="3, H, W"):
        denormalize(torch.zeros(4, 5, 5))


# ---------------------------------------------------------------- transforms

def test_transform_matches_torchvision_pipeline():
    """SegTransform(res) gives exactly STEGO's Resize(res, NEAREST) + CenterCrop + ToTensor + Normalize."""
    import torchvision.transforms as T

    rng = np.random.default_rng(1)
    image = Image.fromarray(rng.integers(0, 256, (75, 131, 3), dtype=np.uint8))
    for res, resample in ((48, T.InterpolationMode.NEAREST), (120, T.InterpolationMode.NEAREST),
                          (48, T.InterpolationMode.BILINEAR)):
        reference = T.Compose([T.Resize(res, resample), T.CenterCrop(res), T.ToTensor(),
                               T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])(image)
        mode = "nearest" if resample == T.InterpolationMode.NEAREST else "bilinear"
        ours, label = SegTransform(res, resize=mode)(image, np.zeros((75, 131), dtype=np.int64))
        torch.testing.assert_close(ours, reference, rtol=0, atol=1e-6)
        assert label.shape == (res, res)


def test_transform_sizes_and_errors():
    image = Image.new("RGB", (200, 100))
    label = np.zeros((100, 200), dtype=np.int64)
    assert SegTransform(64, crop="none")(image, label)[0].shape == (3, 64, 128)
    odd = Image.new("RGB", (30, 21))
    assert SegTransform(None, crop="none")(odd, np.zeros((21, 30), np.int64))[1].shape == (16, 24)   # 8 px
    assert SegTransform(96, crop_size=64, crop="random")(image, label)[0].shape == (3, 64, 64)
    assert SegTransform(32, patch_size=16)(image, label)[1].shape == (32, 32)
    assert default_transform("train").res == 224 and default_transform("val").res == 320
    with pytest.raises(ValueError, match="multiple of patch_size 8"):
        SegTransform(100)
    with pytest.raises(ValueError, match="unknown resize"):
        SegTransform(64, resize="bicubic")
    with pytest.raises(ValueError, match="does not match image size"):
        SegTransform(64)(image, label.T)
    with pytest.raises(ValueError, match="cannot crop"):
        SegTransform(None, crop="center", crop_size=128)(image, label)


def test_colour_coded_labels_stay_aligned_under_resize_crop_flip():
    """Each pixel's colour encodes its label: after NEAREST resizes, random crops and flips they agree."""
    rng = np.random.default_rng(2)
    label = rng.integers(-1, 20, (37, 53)).repeat(2, 0).repeat(3, 1)    # (74, 159), blocks and single pixels
    colours = rng.integers(0, 256, (21, 3), dtype=np.uint8)            # row k + 1 is the colour of label k
    image = Image.fromarray(colours[label + 1])
    torch.manual_seed(0)
    for res, crop_size in ((40, 40), (80, 48), (200, 160), (37 * 2 + 6, 64)):
        for _ in range(5):
            img, lab = SegTransform(res, crop="random", crop_size=crop_size, hflip=0.5)(image, label)
            rgb = np.rint(denormalize(img).permute(1, 2, 0).numpy() * 255).astype(np.uint8)
            np.testing.assert_array_equal(rgb, colours[lab.numpy() + 1])


# ---------------------------------------------------------------- SynthStuff generation

def test_same_seed_gives_identical_bytes(tmp_path):
    a = _synth(tmp_path / "a", n=5, seed=3).folder   # one process, and below two: same bytes
    b = SynthStuff("train", n_images=5, image_size=SIZE, seed=3, root=tmp_path / "b", workers=2).folder
    files_a, files_b = _files(a, "train"), _files(b, "train")
    assert [f.relative_to(a) for f in files_a] == [f.relative_to(b) for f in files_b] and len(files_a) == 10
    for fa, fb in zip(files_a, files_b):
        assert fa.read_bytes() == fb.read_bytes(), fa.name
    assert (a / "train.txt").read_bytes() == (b / "train.txt").read_bytes()


def test_different_seeds_and_splits_differ(tmp_path):
    x0 = np.asarray(_synth(tmp_path, seed=0).load(0)[0])
    x1 = np.asarray(_synth(tmp_path, seed=1).load(0)[0])
    v0 = np.asarray(_synth(tmp_path, "val", seed=0).load(0)[0])
    assert not np.array_equal(x0, x1) and not np.array_equal(x0, v0)
    assert len({p.name for p in tmp_path.iterdir()}) == 2   # one folder per (size, seed, version)


def test_every_class_appears_across_the_split(tmp_path):
    ds = _synth(tmp_path, "val", n=24)
    counts = np.bincount(np.concatenate([ds.load(i)[1].ravel() for i in range(len(ds))]), minlength=8)
    assert (counts > 0).all(), dict(zip(ds.classes, counts))
    assert counts.max() / counts.sum() < 0.35   # no class dominates


def test_colour_does_not_give_classes_away(tmp_path):
    """A small version of the difficulty benchmark's check (a): RGB k-means stays near chance."""
    from scipy.optimize import linear_sum_assignment
    from sklearn.cluster import KMeans

    ds = _synth(tmp_path, "val", n=16)
    pairs = [ds.load(i) for i in range(len(ds))]
    rgb = np.concatenate([np.asarray(img).reshape(-1, 3) for img, _ in pairs]) / 255
    lab = np.concatenate([label.ravel() for _, label in pairs])
    clusters = KMeans(8, n_init=1, random_state=0).fit_predict(rgb[::3])
    cm = np.bincount(lab[::3] * 8 + clusters, minlength=64).reshape(8, 8)
    rows, cols = linear_sum_assignment(-cm)
    accuracy = cm[rows, cols].sum() / cm.sum()
    chance = np.bincount(lab, minlength=8).max() / lab.size
    assert accuracy <= chance + 0.15, (accuracy, chance)


def test_flip_and_crop_keep_synthstuff_labels_aligned(tmp_path):
    plain = _synth(tmp_path, n=2)
    augmented = _synth(tmp_path, n=2, transform=SegTransform(None, crop="random", crop_size=40, hflip=1.0))
    raw_img, raw_lab = plain.load(1)
    raw_img = np.asarray(raw_img)
    torch.manual_seed(0)
    item = augmented[1]
    img = np.rint(denormalize(item["image"]).permute(1, 2, 0).numpy() * 255).astype(np.uint8)[:, ::-1]
    lab = item["label"].numpy()[:, ::-1]
    hits = [(t, l) for t in range(SIZE - 39) for l in range(SIZE - 39)
            if np.array_equal(raw_img[t:t + 40, l:l + 40], img)]
    assert len(hits) == 1
    t, l = hits[0]
    np.testing.assert_array_equal(raw_lab[t:t + 40, l:l + 40], lab)


def test_split_reused_as_prefix_and_regrown(tmp_path):
    ds = _synth(tmp_path, n=4)
    manifest = ds.folder / "train.json"
    before = manifest.read_bytes()
    first = {p.relative_to(ds.folder): p.read_bytes() for p in _files(ds.folder, "train")}
    small = _synth(tmp_path, n=2)   # reuses the first 2 of the 4 on disk
    assert len(small) == 2 and manifest.read_bytes() == before
    assert np.array_equal(np.asarray(small.load(1)[0]), np.asarray(ds.load(1)[0]))
    big = _synth(tmp_path, n=6)     # regenerated: 6 images, the first 4 unchanged
    assert len(big) == 6 and len(_files(big.folder, "train")) == 12
    assert all((big.folder / rel).read_bytes() == content for rel, content in first.items())
    assert not [p for p in big.folder.iterdir() if p.name.startswith(".tmp")]


def test_incomplete_split_is_regenerated(tmp_path):
    ds = _synth(tmp_path, n=3)
    victim = ds.folder / "imgs" / "train" / "00001.png"
    good = victim.read_bytes()
    victim.write_bytes(b"half-written")
    (ds.folder / "train.json").unlink()        # as if the writer died before finishing
    (ds.folder / ".tmp-train-leftover").mkdir()
    again = _synth(tmp_path, n=3)
    assert victim.read_bytes() == good and again[1]["image"].shape == (3, SIZE, SIZE)


def test_damaged_image_raises_naming_the_file(tmp_path):
    ds = _synth(tmp_path, n=2)
    victim = ds.folder / "imgs" / "train" / "00000.png"
    victim.write_bytes(b"not a png")
    with pytest.raises(OSError, match="00000.png"):
        ds[0]


def test_bad_synthstuff_arguments(tmp_path):
    with pytest.raises(ValueError, match="split"):
        _synth(tmp_path, "test")
    with pytest.raises(ValueError, match="image_size"):
        _synth(tmp_path, size=8)


def test_synthstuff_command_line(tmp_path, capsys):
    from stego_lite.__main__ import main

    args = ["synthstuff", "--root", str(tmp_path), "--image-size", "32", "--n-train", "3", "--n-val", "2",
            "--workers", "1"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "train: 3 images" in out and "val: 2 images" in out
    folder = tmp_path / f"synthstuff-32px-seed0-v{data.GENERATOR_VERSION}"
    assert (folder / "val.txt").read_text().split() == ["00000.png", "00001.png"]
    assert len(list((folder / "labels" / "train").iterdir())) == 3
