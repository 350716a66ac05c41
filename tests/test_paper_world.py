"""The miniature paper world (tools/paper_world.py): what the paper profile's smoke run reads, made offline.

Every kind of file in it is read by a loader of stego_lite; removing one makes `check` fail with that
loader's own error naming the file (not a traceback from deep inside), and the smoke profile reads the
world at its sizes. CI runs every chapter on this world (the paper-smoke stage of `make test`).
"""
from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))

import paper_world  # noqa: E402
from stego_lite import data  # noqa: E402
from stego_lite.profiles import get_profile  # noqa: E402

COCO, CITY, CROP = "data/cocostuff", "data/cityscapes", "data/cropped/cocostuff27_five_crop_0.5"
# one file of every kind, and the error its loader raises
FIXTURES = {
    "COCO val image": (f"{COCO}/images/val2017/000000500003.jpg", data.DatasetNotFoundError),
    "COCO val annotation": (f"{COCO}/annotations/val2017/000000500003.png", data.DatasetNotFoundError),
    "COCO train image": (f"{COCO}/images/train2017/000000100004.jpg", data.DatasetNotFoundError),
    "COCO train annotation": (f"{COCO}/annotations/train2017/000000100004.png", data.DatasetNotFoundError),
    "COCO train list": (f"{COCO}/curated/train2017/Coco164kFull_Stuff_Coarse.txt", data.DatasetNotFoundError),
    "COCO val list": (f"{COCO}/curated/val2017/Coco164kFull_Stuff_Coarse_7.txt", data.DatasetNotFoundError),
    "COCO five-crop image": (f"{CROP}/img/train/17.jpg", data.DatasetNotFoundError),
    "COCO five-crop label": (f"{CROP}/label/train/524.png", data.DatasetNotFoundError),
    "Cityscapes image": (f"{CITY}/leftImg8bit/val/lindau/lindau_000001_000019_leftImg8bit.png",
                         data.DatasetNotFoundError),
    "Cityscapes label": (f"{CITY}/gtFine/train/aachen/aachen_000002_000019_gtFine_labelIds.png",
                         data.DatasetNotFoundError),
    "Cityscapes five-crop image": ("data/cropped/cityscapes_five_crop_0.5/img/train/3.jpg",
                                   data.DatasetNotFoundError),
    "Potsdam image": ("data/potsdam/imgs/13.mat", data.DatasetNotFoundError),
    "Potsdam labels": ("data/potsdam/gt/2.mat", data.DatasetNotFoundError),
    "Potsdam list": ("data/potsdam/labelled_test.txt", data.DatasetNotFoundError),
    "DINO ViT-B/8 weights": ("torch/hub/checkpoints/dino_vitbase8_pretrain.pth", ConnectionError),
    "released checkpoint": ("torch/hub/checkpoints/cocostuff27_vit_base_5.ckpt", ConnectionError),
}


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> paper_world.World:
    return paper_world.build(tmp_path_factory.mktemp("paper") / "world")


def linked_copy(world: paper_world.World, where: Path) -> paper_world.World:
    """The world again, its files hard-linked (no bytes copied), so that one can be removed."""
    shutil.copytree(world.root, where, copy_function=os.link)
    return paper_world.World(where)


def test_the_world_is_complete_and_read_by_every_loader(world) -> None:
    counts = paper_world.check(world)
    assert counts["cocostuff27 five-crop"] == 5 * counts["cocostuff27 train"] >= 512
    assert counts["cocostuff27 val"] >= 32
    assert counts["cityscapes five-crop"] == 5 * counts["cityscapes train"]
    potsdam = ("potsdam train", "potsdam val", "potsdam unlabelled_train")
    assert counts["potsdam all"] == sum(counts[k] for k in potsdam)
    files = [p.relative_to(world.root).as_posix() for p in world.root.rglob("*") if p.is_file()]
    assert {path for path, _ in FIXTURES.values()} <= set(files)
    suffixes = (".jpg", ".png", ".txt", ".mat")   # STEGO's layout: no bookkeeping files beside the data
    assert not [f for f in files if f.startswith("data/") and Path(f).suffix not in suffixes]
    assert paper_world.build(world.root) == world   # complete: kept as it is


def test_the_smoke_profile_reads_the_world_at_its_sizes(world, monkeypatch) -> None:
    monkeypatch.setenv("STEGO_LITE_DATA", str(world.data))
    p = get_profile("paper", scale="smoke")
    train, val = p.train_set(), p.val_set()
    assert (len(train), len(val)) == (512, 32) and val.classes == data.COCOSTUFF27_CLASSES
    item = train[511]
    assert item["image"].shape == (3, 32, 32) and item["label"].shape == (32, 32)
    labels = {int(c) for i in range(len(val)) for c in val[i]["label"].unique()}
    assert -1 in labels and len(labels - {-1}) == 8   # SynthStuff's 8 classes as COCO-Stuff-27 ids


@pytest.mark.parametrize("kind", FIXTURES)
def test_removing_any_fixture_file_fails_with_the_loaders_error(world, kind, tmp_path) -> None:
    relative, error = FIXTURES[kind]
    copy = linked_copy(world, tmp_path / "world")
    (copy.root / relative).unlink()
    with pytest.raises(error) as caught:
        paper_world.check(copy)
    assert str(copy.root / relative) in str(caught.value)
    assert caught.traceback[-1].path.parts[-2] in ("stego_lite", "data")   # raised by the loader itself
