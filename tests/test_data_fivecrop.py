"""Five-crop preparation: box geometry, the +1 label encoding, atomic folders and the command line."""
from __future__ import annotations

import io
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.io import savemat

from stego_lite.__main__ import main
from stego_lite.data import (
    DatasetNotFoundError, FiveCropDataset, ImageFolder, SegTransform, five_crop, five_crop_boxes,
)

KEEP = SegTransform(None, crop="none", patch_size=1)


@pytest.mark.parametrize("shape", [(10, 13), (64, 96), (33, 17)])
def test_boxes_match_torchvision_five_crop(shape):
    from torchvision.transforms.functional import five_crop as tv_five_crop

    Hs, Ws = shape
    coords = torch.arange(Hs * Ws).view(1, Hs, Ws)   # each pixel holds its own flat index
    crops = tv_five_crop(coords, [int(Hs * 0.5), int(Ws * 0.5)])
    for (top, left, h, w), crop in zip(five_crop_boxes(Hs, Ws, 0.5), crops):
        assert torch.equal(coords[:, top:top + h, left:left + w], crop)


def test_box_errors():
    with pytest.raises(ValueError, match="crop_ratio"):
        five_crop_boxes(10, 10, 1.5)
    with pytest.raises(ValueError, match="empty"):
        five_crop_boxes(1, 10, 0.5)


@pytest.fixture
def folder(tmp_path):
    """Two 32x48 images with labels 0..3, 255 (ignore) in known places."""
    rng = np.random.default_rng(0)
    imgs, labels = tmp_path / "own" / "imgs" / "train", tmp_path / "own" / "labels" / "train"
    imgs.mkdir(parents=True)
    labels.mkdir(parents=True)
    for name in ("p", "q"):
        Image.fromarray(rng.integers(0, 256, (32, 48, 3), dtype=np.uint8)).save(imgs / f"{name}.png")
        label = rng.integers(0, 4, (32, 48)).astype(np.uint8)
        label[:3, :5] = 255
        Image.fromarray(label).save(labels / f"{name}.png")
    return tmp_path


def test_five_crop_writes_tiles_and_round_trips_labels(folder):
    source = ImageFolder(folder / "own", "train", n_classes=4, transform=KEEP)
    out = five_crop(source, "train", out_root=folder / "data")
    assert out == folder / "data" / "cropped" / "directory_five_crop_0.5"
    assert sorted(p.name for p in (out / "img" / "train").iterdir()) == sorted(f"{i}.jpg" for i in range(10))
    assert len(list((out / "label" / "train").iterdir())) == 10
    assert not [p for p in out.iterdir() if p.name.startswith(".tmp")]
    crops = FiveCropDataset("directory", "train", root=folder / "data", classes=source.classes,
                            transform=KEEP)
    assert len(crops) == 10 and crops.classes == source.classes
    for i in range(2):
        image, label = source.load(i)
        for k, (top, left, h, w) in enumerate(five_crop_boxes(32, 48)):
            crop_image, crop_label = crops.load(5 * i + k)
            np.testing.assert_array_equal(crop_label, label[top:top + h, left:left + w])   # exact, -1 kept
            expected = io.BytesIO()   # the same region through Pillow's default JPEG, as STEGO saves it
            image.crop((left, top, left + w, top + h)).save(expected, "JPEG")
            np.testing.assert_array_equal(np.asarray(crop_image), np.asarray(Image.open(expected)))
    stored = np.asarray(Image.open(out / "label" / "train" / "0.png"))
    assert stored[0, 0] == 0 and stored.min() == 0 and stored.max() == 4   # label + 1 on disk
    item = crops[4]
    assert item["image"].shape == (3, 16, 24) and item["label"].dtype == torch.int64


def test_five_crop_is_idempotent_and_overwritable(folder):
    source = ImageFolder(folder / "own", "train", n_classes=4)
    out = five_crop(source, "train", out_root=folder / "data")
    stamp = (out / "img" / "train" / "3.jpg").stat().st_mtime_ns
    five_crop(source, "train", out_root=folder / "data")
    assert (out / "img" / "train" / "3.jpg").stat().st_mtime_ns == stamp
    (out / "train.json").unlink()                  # incomplete: redone
    (out / "img" / "train" / "3.jpg").write_bytes(b"broken")
    five_crop(source, "train", out_root=folder / "data")
    with Image.open(out / "img" / "train" / "3.jpg") as redone:
        assert redone.size == (24, 16)


def test_five_crop_command_line_on_potsdam(tmp_path, capsys):
    base = tmp_path / "potsdam"
    (base / "imgs").mkdir(parents=True)
    (base / "gt").mkdir()
    img = np.random.default_rng(0).integers(0, 256, (20, 30, 4), dtype=np.uint8)
    savemat(base / "imgs" / "1.mat", {"img": img})
    savemat(base / "gt" / "1.mat", {"gt": np.tile(np.array([0, 1, 2, 3, 4, 5], np.uint8), (20, 5))})
    (base / "labelled_test.txt").write_text("1\n")
    assert main(["five-crop", "potsdam", "--split", "val", "--root", str(tmp_path)]) == 0
    assert "potsdam_five_crop_0.5" in capsys.readouterr().out
    crops = FiveCropDataset("potsdam", "val", root=tmp_path, transform=KEEP)
    assert len(crops) == 5 and crops.n_classes == 3
    assert crops.load(0)[1][0].tolist() == [0, 1, 2, 2, 0, 1, 0, 1, 2, 2, 0, 1, 0, 1, 2]


def test_missing_five_crop_folder_names_the_fix(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="cityscapes_five_crop_0.5/img/train") as err:
        FiveCropDataset("cityscapes", "train", root=tmp_path)
    assert "python -m stego_lite five-crop" in str(err.value)
    with pytest.raises(ValueError, match="classes"):
        FiveCropDataset("mystery", "train", root=tmp_path)


def test_module_entry_point_help():
    result = subprocess.run([sys.executable, "-m", "stego_lite", "five-crop", "--help"], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0 and "--crop-ratio" in result.stdout
