"""The real datasets in STEGO's layout, on tiny fixtures written here: mappings, conversions and errors."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.io import savemat

from stego_lite.data import (
    COCO_FINE_TO_COARSE, COCOSTUFF27_CLASSES, Cityscapes27, CocoStuff27, DatasetNotFoundError, ImageFolder,
    Potsdam3, SegTransform, read_label, read_rgb,
)

KEEP = SegTransform(None, crop="none")   # no resize: fixtures are multiples of 8 px
H, W = 16, 24

# fine id -> coarse id, read off the reference table (§4.2); 255 and ids >= 182 are ignored
COCO_EXPECTED = {
    0: 9, 1: 11, 8: 11, 9: 8, 14: 8, 15: 7, 24: 7, 25: 6, 33: 10, 43: 5, 51: 2, 61: 3, 70: 3, 71: 0, 76: 0,
    77: 1, 83: 4, 90: 4, 91: 17, 94: 20, 105: 23, 119: 26, 123: 22, 148: 21, 156: 23, 168: 22, 170: 18,
    176: 18, 177: 26, 179: 19, 180: 19, 255: -1, 182: -1, 200: -1,
}


def _label_map(values: list[int]) -> np.ndarray:
    """An (H, W) map whose first len(values) pixels (row-major) hold `values`, the rest values[0]."""
    flat = np.full(H * W, values[0], dtype=np.int64)
    flat[:len(values)] = values
    return flat.reshape(H, W)


def _rgb(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (H, W, 3), dtype=np.uint8)


# ---------------------------------------------------------------- COCO-Stuff-27

@pytest.fixture
def coco_root(tmp_path):
    base = tmp_path / "cocostuff"
    for split, ids in (("train2017", ["000000000009", "000000000025"]), ("val2017", ["000000000139"])):
        (base / "images" / split).mkdir(parents=True)
        (base / "annotations" / split).mkdir(parents=True)
        (base / "curated" / split).mkdir(parents=True)
        name = "Coco164kFull_Stuff_Coarse.txt" if split == "train2017" else "Coco164kFull_Stuff_Coarse_7.txt"
        (base / "curated" / split / name).write_text("\n".join(ids) + "\n")
        for n, image_id in enumerate(ids):
            Image.fromarray(_rgb(n)).save(base / "images" / split / f"{image_id}.jpg")
            fine = _label_map(list(COCO_EXPECTED))
            Image.fromarray(fine.astype(np.uint8)).save(base / "annotations" / split / f"{image_id}.png")
    Image.fromarray(_rgb(5)[..., 0]).save(base / "images" / "train2017" / "000000000025.jpg")   # grayscale
    return tmp_path


def test_coco_mapping_and_item(coco_root):
    ds = CocoStuff27(coco_root, "val", transform=KEEP)
    assert len(ds) == 1 and ds.n_classes == 27 and ds.palette.shape == (27, 3)
    assert ds.classes[9] == "person" and ds.classes[23] == "sky" and len(set(ds.classes)) == 27
    item = ds[0]
    assert item["image"].shape == (3, H, W) and item["label"].dtype == torch.int64
    got = item["label"].flatten()[:len(COCO_EXPECTED)].tolist()
    assert dict(zip(COCO_EXPECTED, got)) == COCO_EXPECTED


def test_coco_full_table():
    assert len(COCO_FINE_TO_COARSE) == 182 and sorted(COCO_FINE_TO_COARSE) == list(range(182))
    assert set(COCO_FINE_TO_COARSE.values()) == set(range(27))
    assert all(COCO_FINE_TO_COARSE[k] < 12 for k in range(91))          # things -> 0..11
    assert all(COCO_FINE_TO_COARSE[k] >= 12 for k in range(91, 182))    # stuff  -> 12..26
    assert COCOSTUFF27_CLASSES[COCO_FINE_TO_COARSE[156]] == "sky"


def test_coco_lists_and_grayscale(coco_root):
    ds = CocoStuff27(coco_root, "train", transform=KEEP)
    assert [p.stem for p in ds.image_files] == ["000000000009", "000000000025"]
    image, _ = ds.load(1)   # stored as a grayscale JPEG
    assert image.mode == "RGB" and ds[1]["image"].shape == (3, H, W)


def test_coco_missing_root_and_files(coco_root, tmp_path):
    with pytest.raises(DatasetNotFoundError) as err:
        CocoStuff27(tmp_path / "elsewhere", "val")
    message = str(err.value)
    assert str(tmp_path / "elsewhere" / "cocostuff") in message
    assert "curated/{train2017,val2017}" in message and "cocostuff.zip" in message
    (coco_root / "cocostuff" / "annotations" / "val2017" / "000000000139.png").unlink()
    with pytest.raises(DatasetNotFoundError, match="annotations/val2017/000000000139.png"):
        CocoStuff27(coco_root, "val")[0]
    with pytest.raises(DatasetNotFoundError, match="Coco164kFull_Stuff_Coarse_7.txt"):
        (coco_root / "cocostuff" / "curated" / "val2017" / "Coco164kFull_Stuff_Coarse_7.txt").unlink()
        CocoStuff27(coco_root, "val")
    with pytest.raises(ValueError, match="unknown split"):
        CocoStuff27(coco_root, "test")


# ---------------------------------------------------------------- Cityscapes-27

@pytest.fixture
def city_root(tmp_path):
    for city in ("aachen", "bochum"):
        img_dir = tmp_path / "cityscapes" / "leftImg8bit" / "val" / city
        gt_dir = tmp_path / "cityscapes" / "gtFine" / "val" / city
        img_dir.mkdir(parents=True)
        gt_dir.mkdir(parents=True)
        stem = f"{city}_000000_000019"
        Image.fromarray(_rgb(1)).save(img_dir / f"{stem}_leftImg8bit.png")
        label_ids = _label_map([0, 1, 6, 7, 8, 24, 26, 33, 34, 255])
        Image.fromarray(label_ids.astype(np.uint8)).save(gt_dir / f"{stem}_gtFine_labelIds.png")
        Image.fromarray(np.zeros((H, W), np.uint8)).save(gt_dir / f"{stem}_gtFine_color.png")   # ignored
    return tmp_path


def test_cityscapes_offset(city_root):
    ds = Cityscapes27(city_root, "val", transform=KEEP)
    assert len(ds) == 2 and ds.n_classes == 27 and ds.palette.shape == (27, 3)
    label = ds[1]["label"].flatten()[:10].tolist()
    assert label == [-1, -1, -1, 0, 1, 17, 19, 26, -1, -1]   # labelIds 7..33 -> 0..26, others ignored
    assert (ds.classes[0], ds.classes[17], ds.classes[26]) == ("road", "person", "bicycle")


def test_cityscapes_missing_files(city_root, tmp_path):
    with pytest.raises(DatasetNotFoundError, match="leftImg8bit/train"):
        Cityscapes27(city_root, "train")
    gt_dir = city_root / "cityscapes" / "gtFine" / "val" / "bochum"
    (gt_dir / "bochum_000000_000019_gtFine_labelIds.png").unlink()
    with pytest.raises(DatasetNotFoundError, match="bochum_000000_000019_gtFine_labelIds.png") as err:
        Cityscapes27(city_root, "val")[1]
    assert "cityscapes.zip" in str(err.value)


# ---------------------------------------------------------------- Potsdam-3

@pytest.fixture
def potsdam_root(tmp_path):
    base = tmp_path / "potsdam"
    (base / "imgs").mkdir(parents=True)
    (base / "gt").mkdir()
    for tile in ("7", "12", "30"):
        rgbir = np.random.default_rng(int(tile)).integers(0, 256, (H, W, 4), dtype=np.uint8)
        savemat(base / "imgs" / f"{tile}.mat", {"img": rgbir})
        if tile != "30":
            gt = _label_map([0, 1, 2, 3, 4, 5, 255, 9]).astype(np.uint8)
            savemat(base / "gt" / f"{tile}.mat", {"gt": gt})
    (base / "labelled_train.txt").write_text("7\n")
    (base / "labelled_test.txt").write_text("12\n")
    (base / "unlabelled_train.txt").write_text("30\n")
    (base / "all.txt").write_text("7\n12\n30\n")
    return tmp_path


def test_potsdam_mapping_and_rgb(potsdam_root):
    ds = Potsdam3(potsdam_root, "val", transform=KEEP)
    assert len(ds) == 1 and ds.classes == ("roads and cars", "buildings and clutter", "trees and vegetation")
    image, label = ds.load(0)
    rgbir = np.random.default_rng(12).integers(0, 256, (H, W, 4), dtype=np.uint8)
    np.testing.assert_array_equal(np.asarray(image), rgbir[..., :3])   # infrared dropped
    assert label.ravel()[:8].tolist() == [0, 1, 2, 2, 0, 1, -1, -1]     # {0,4}->0, {1,5}->1, {2,3}->2
    assert ds[0]["label"].shape == (H, W)


def test_potsdam_unlabelled_and_missing(potsdam_root):
    assert (Potsdam3(potsdam_root, "unlabelled_train", transform=KEEP)[0]["label"] == -1).all()
    assert len(Potsdam3(potsdam_root, "all")) == 3
    (potsdam_root / "potsdam" / "gt" / "7.mat").unlink()
    with pytest.raises(DatasetNotFoundError, match="gt/7.mat"):
        Potsdam3(potsdam_root, "train")[0]
    savemat(potsdam_root / "potsdam" / "imgs" / "7.mat", {"image": np.zeros((H, W, 4), np.uint8)})
    with pytest.raises(ValueError, match="no key 'img'"):
        Potsdam3(potsdam_root, "train").load(0)
    with pytest.raises(DatasetNotFoundError, match="void/potsdam") as err:
        Potsdam3(potsdam_root / "void", "train")
    assert "potsdam/gt/<id>.mat" in str(err.value) and "potsdam.zip" in str(err.value)
    (potsdam_root / "potsdam" / "labelled_train.txt").unlink()
    with pytest.raises(DatasetNotFoundError, match="potsdam/labelled_train.txt"):
        Potsdam3(potsdam_root, "train")


# ---------------------------------------------------------------- own images

def test_image_folder_conversions_and_labels(tmp_path):
    imgs, labels = tmp_path / "imgs" / "val", tmp_path / "labels" / "val"
    imgs.mkdir(parents=True)
    labels.mkdir(parents=True)
    rgb = _rgb(0)
    Image.fromarray(rgb).save(imgs / "a_rgb.png")
    Image.fromarray(rgb[..., 0]).save(imgs / "b_gray.png")
    Image.fromarray(np.dstack([rgb, np.full((H, W), 128, np.uint8)])).save(imgs / "c_rgba.png")
    Image.fromarray(rgb).convert("P", palette=Image.ADAPTIVE, colors=8).save(imgs / "d_palette.png")
    Image.fromarray((rgb[..., 1].astype(np.uint16) * 257)).save(imgs / "e_16bit.png")
    for name in ("a_rgb", "b_gray", "c_rgba", "d_palette", "e_16bit"):
        Image.fromarray(_label_map([0, 1, 2, 3, 255]).astype(np.uint8)).save(labels / f"{name}.png")
    ds = ImageFolder(tmp_path, "val", n_classes=3, transform=KEEP)
    assert len(ds) == 5 and ds.classes == ("class 0", "class 1", "class 2") and ds.palette.shape == (3, 3)
    for i in range(5):
        image, label = ds.load(i)
        assert image.mode == "RGB" and image.size == (W, H)
        assert label.ravel()[:5].tolist() == [0, 1, 2, -1, -1]   # 3 >= n_classes and 255 -> ignore
    np.testing.assert_array_equal(np.asarray(ds.load(2)[0]), rgb)            # alpha dropped
    np.testing.assert_array_equal(np.asarray(ds.load(1)[0])[..., 2], rgb[..., 0])
    np.testing.assert_array_equal(np.asarray(ds.load(4)[0])[..., 0], rgb[..., 1])   # 16 bit -> 8 bit
    assert ds[3]["image"].shape == (3, H, W)


def test_image_folder_without_labels_and_errors(tmp_path):
    imgs = tmp_path / "imgs" / "train"
    imgs.mkdir(parents=True)
    Image.fromarray(_rgb(0)).save(imgs / "x.jpg")
    (imgs / "y.jpg").write_bytes(b"\xff\xd8 truncated jpeg")
    ds = ImageFolder(tmp_path, "train", transform=KEEP)
    assert len(ds) == 2 and (ds[0]["label"] == -1).all()   # nothing skipped: the broken file is counted
    with pytest.raises(OSError, match="y.jpg"):
        ds[1]
    with pytest.raises(DatasetNotFoundError, match="imgs/val"):
        ImageFolder(tmp_path, "val")
    (tmp_path / "labels" / "train").mkdir(parents=True)
    with pytest.raises(ValueError, match="n_classes"):
        ImageFolder(tmp_path, "train")
    with pytest.raises(DatasetNotFoundError, match="x.png"):
        ImageFolder(tmp_path, "train", n_classes=2)


def test_read_helpers(tmp_path):
    Image.fromarray(_rgb(0)).save(tmp_path / "colour_label.png")
    with pytest.raises(ValueError, match="single-channel"):
        read_label(tmp_path / "colour_label.png")
    with pytest.raises(FileNotFoundError):
        read_rgb(tmp_path / "absent.png")
    la = Image.fromarray(np.dstack([_rgb(0)[..., 0]] * 2), mode="LA")
    la.save(tmp_path / "la.png")
    assert read_rgb(tmp_path / "la.png").mode == "RGB"
