"""A miniature paper world, made here without any download: what the `paper` profile reads, in small.

    python tools/paper_world.py ROOT [--check]      # build ROOT (kept if complete), then read every file
    world = build(ROOT); os.environ.update(world.environment())

ROOT/data is a data root in STEGO's layout (reference §4.1), with SynthStuff images whose labels are
mapped onto each dataset's classes:

    cocostuff/{images,annotations}/{train2017,val2017}/<id>.jpg|png  fine ids (0..181, 255 unlabeled)
    cocostuff/curated/train2017/Coco164kFull_Stuff_Coarse.txt, val2017/Coco164kFull_Stuff_Coarse_7.txt
    cityscapes/{leftImg8bit,gtFine}/{train,val}/<city>/<city>_<seq>_<frame>_{leftImg8bit,gtFine_labelIds}.png
    potsdam/{imgs,gt}/<id>.mat, potsdam/{labelled_train,labelled_test,unlabelled_train,all}.txt
    cropped/{cocostuff27,cityscapes}_five_crop_0.5/{img,label}/train/<i>.jpg|png   (stego_lite's five-crop)

ROOT/torch is a torch.hub folder ($TORCH_HOME) whose hub/checkpoints/ holds a ViT-B/8 with random weights
under the official DINO file name (so `load_backbone("dino_vitb8")`, weights "official", reads it through
the real download-once path) and a released-STEGO checkpoint fixture, `cocostuff27_vit_base_5.ckpt`, in the
layout `stego_lite.released` reads. To keep chapter 6's 320-px segmentation within a CPU budget, that
fixture's saved config names ViT-S/16 (the real file holds a ViT-B/8); the loader takes the backbone from
the config, so the same code runs. `environment()` also sets $STEGO_LITE_OFFLINE: a missing file fails at
once with the loader's message instead of downloading.

`check(world)` reads every file through the library's loaders; CI runs it before the chapters, so a
removed file fails with the loader's error that names it.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

import numpy as np
import torch
from PIL import Image
from scipy.io import savemat

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from stego_lite import data, released  # noqa: E402
from stego_lite.backbone import WEIGHTS, build_backbone  # noqa: E402
from stego_lite.data.classes import COCO_FINE_TO_COARSE  # noqa: E402
from stego_lite.env import DATA_ENV, OFFLINE_ENV  # noqa: E402
from stego_lite.files import replace_tree, save_torch_atomic, staging_dir  # noqa: E402
from stego_lite.head import SegmentationHead  # noqa: E402
from stego_lite.probes import ClusterProbe, LinearProbe  # noqa: E402
from stego_lite.profiles import PRESETS  # noqa: E402

VERSION = 2      # bump when the world's content changes
SIZE = 64        # SynthStuff renders are SIZE x SIZE; five crops of them are SIZE / 2
SEED = 7
COUNTS = {"coco": {"train": 105, "val": 40},            # 525 training crops: chapter 1 draws 512
          "cityscapes": {"train": 6, "val": 4}, "potsdam": {"labelled_train": 8, "labelled_test": 4,
                                                           "unlabelled_train": 2}}
CITIES = {"train": ("aachen", "bremen"), "val": ("frankfurt", "lindau")}

# SynthStuff's classes (stripes, checks, brick, grass, gravel, rings, dots, hatch) as each dataset's ids:
# COCO-Stuff coarse classes (stored as the first fine id of each), Cityscapes labelIds, Potsdam fine ids.
COCO_COARSE = (17, 13, 18, 22, 21, 9, 7, 11)   # textile, floor, wall, plant, ground, person, animal, vehicle
CITYSCAPES_IDS = (11, 8, 12, 21, 7, 24, 26, 33)  # building sidewalk wall vegetation road person car bicycle
POTSDAM_IDS = (1, 0, 5, 2, 0, 4, 3, 5)           # building, road, clutter, low veg., road, car, tree, clutter
UNLABELED = {"coco": 255, "cityscapes": 0, "potsdam": 255}


@dataclass(frozen=True)
class World:
    root: Path

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def torch_home(self) -> Path:
        return self.root / "torch"

    @property
    def checkpoints(self) -> Path:
        return self.torch_home / "hub" / "checkpoints"

    def environment(self) -> dict[str, str]:
        """What points stego_lite at this world: data root, torch.hub folder, and no downloads."""
        return {DATA_ENV: str(self.data), "TORCH_HOME": str(self.torch_home), OFFLINE_ENV: "1"}


# ---------------------------------------------------------------------------------------------------------
# Images and labels


def _render(split: str, index: int, width: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """A SynthStuff scene, `width` renders side by side: -> (S, width*S, 3) uint8, (S, width*S) class ids."""
    parts = [data.synthstuff_sample(SEED, split, width * index + k, SIZE) for k in range(width)]
    return np.concatenate([p[0] for p in parts], axis=1), np.concatenate([p[1] for p in parts], axis=1)


def _ids(label: np.ndarray, table: tuple[int, ...], unlabeled: int) -> np.ndarray:
    """SynthStuff class ids -> a dataset's raw ids, with an unlabeled band (the top two rows)."""
    out = np.asarray(table, dtype=np.uint8)[label]
    out[:2] = unlabeled
    return out


def _save(image: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    options = {"quality": 90} if path.suffix == ".jpg" else {}
    Image.fromarray(image).save(path, **options)


def _coco(root: Path) -> None:
    table = tuple(min(f for f, c in COCO_FINE_TO_COARSE.items() if c == coarse) for coarse in COCO_COARSE)
    lists = {"train": "Coco164kFull_Stuff_Coarse.txt", "val": "Coco164kFull_Stuff_Coarse_7.txt"}
    for split, n in COUNTS["coco"].items():
        ids = [f"{(1 if split == 'train' else 5) * 100000 + i:012d}" for i in range(n)]
        for i, name in enumerate(ids):
            image, label = _render(f"{split}", i)
            _save(image, root / "cocostuff" / "images" / f"{split}2017" / f"{name}.jpg")
            annotation = root / "cocostuff" / "annotations" / f"{split}2017" / f"{name}.png"
            _save(_ids(label, table, UNLABELED["coco"]), annotation)
        curated = root / "cocostuff" / "curated" / f"{split}2017" / lists[split]
        curated.parent.mkdir(parents=True, exist_ok=True)
        curated.write_text("\n".join(ids) + "\n")


def _cityscapes(root: Path) -> None:
    for split, n in COUNTS["cityscapes"].items():
        for i in range(n):
            city = CITIES[split][i % 2]
            stem = f"{city}_{i:06d}_000019"
            image, label = _render(split, 1000 + i, width=2)   # 1:2 like Cityscapes' 1024 x 2048
            _save(image, root / "cityscapes" / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png")
            _save(_ids(label, CITYSCAPES_IDS, UNLABELED["cityscapes"]),
                  root / "cityscapes" / "gtFine" / split / city / f"{stem}_gtFine_labelIds.png")


def _potsdam(root: Path) -> None:
    folder = root / "potsdam"
    (folder / "imgs").mkdir(parents=True)
    (folder / "gt").mkdir()
    every = []
    for list_name, n in COUNTS["potsdam"].items():
        ids = [str(len(every) + i) for i in range(n)]   # IIC names its tiles by number
        for i, tile in enumerate(ids):
            image, label = _render("train", 2000 + int(tile))
            infrared = image.mean(axis=2, keepdims=True).astype(np.uint8)   # IIC's tiles are RGBIR
            savemat(folder / "imgs" / f"{tile}.mat", {"img": np.concatenate([image, infrared], axis=2)})
            if list_name != "unlabelled_train":
                savemat(folder / "gt" / f"{tile}.mat", {"gt": _ids(label, POTSDAM_IDS, UNLABELED["potsdam"])})
        (folder / f"{list_name}.txt").write_text("\n".join(ids) + "\n")
        every += ids
    (folder / "all.txt").write_text("\n".join(every) + "\n")


def _five_crops(root: Path) -> None:
    """The cropped training sets, as STEGO's crop_datasets.py leaves them (no bookkeeping files)."""
    for name in ("cocostuff27", "cityscapes"):
        folder = data.five_crop(name, "train", root=root)
        (folder / "train.json").unlink()
        (folder / ".lock").unlink(missing_ok=True)


# ---------------------------------------------------------------------------------------------------------
# Weights


def _random_modules(seed: int, build):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


def _dino_weights(checkpoints: Path) -> None:
    """A ViT-B/8 with DINO's random initialisation, under the official file name of `dino_vitb8`."""
    vit = _random_modules(0, lambda: build_backbone("dino_vitb8"))
    save_torch_atomic(vit.state_dict(), checkpoints / Path(WEIGHTS["dino_vitb8"]).name)


def _released_checkpoint(checkpoints: Path) -> None:
    """A Lightning-style checkpoint of STEGO's COCO-Stuff model: random weights, the preset's settings."""
    preset = PRESETS["cocostuff27"]
    loss = preset.loss
    cfg = {"model_type": "vit_small", "dino_patch_size": 16, "arch": "dino", "dim": preset.dim,
           "projection_type": "nonlinear", "dropout": True, "extra_clusters": 0,
           "dataset_name": "cocostuff27",
           "res": 224, "lr": preset.lr, "batch_size": preset.batch_size, "pointwise": loss.pointwise,
           "pos_intra_weight": loss.self_weight, "pos_inter_weight": loss.knn_weight,
           "neg_inter_weight": loss.random_weight, "pos_intra_shift": loss.self_shift,
           "pos_inter_shift": loss.knn_shift, "neg_inter_shift": loss.random_shift}
    n_classes = len(data.COCOSTUFF27_CLASSES)
    D = preset.dim
    parts = _random_modules(1, lambda: {
        "backbone": build_backbone("dino_vits16"), "head": SegmentationHead(384, D),
        "cluster_probe": ClusterProbe(D, n_classes), "linear_probe": LinearProbe(D, n_classes)})
    state = {released.checkpoint_key(part, k): v for part, module in parts.items()
             for k, v in module.state_dict().items()}
    state["train_cluster_probe.clusters"] = torch.zeros(n_classes, preset.dim)   # saved by STEGO, unused
    save_torch_atomic({"epoch": 0, "global_step": preset.steps, "pytorch-lightning_version": "1.4.9",
                       "state_dict": state, "hyper_parameters": {"n_classes": n_classes, "cfg": cfg}},
                      checkpoints / Path(released.RELEASED["cocostuff27"]).name)


# ---------------------------------------------------------------------------------------------------------
# Building and checking


def build(root: str | os.PathLike) -> World:
    """The world under `root`: kept if complete (same VERSION), else built in a staging folder, then moved."""
    world = World(Path(root).resolve())
    stamp = world.root / "world.json"
    if stamp.is_file() and json.loads(stamp.read_text()).get("version") == VERSION:
        return world
    start = time.perf_counter()
    with staging_dir(world.root.parent, world.root.name) as tmp:
        staged = World(tmp)
        for make in (_coco, _cityscapes, _potsdam, _five_crops):
            make(staged.data)
        staged.checkpoints.mkdir(parents=True)
        _dino_weights(staged.checkpoints)
        _released_checkpoint(staged.checkpoints)
        (tmp / "world.json").write_text(json.dumps({"version": VERSION,
                                                    "seconds": round(time.perf_counter() - start, 1)}))
        replace_tree(tmp, world.root)   # an older or partial world goes only now
    return world


def check(world: World) -> dict[str, int]:
    """Read every file of the world through stego_lite's loaders (in `world.environment()`): -> items read.

    A missing or damaged file raises the loader's own error, which names it.
    """
    from stego_lite.backbone import load_backbone
    from stego_lite.released import load_released

    root = world.data
    sets = {f"cocostuff27 {s}": data.CocoStuff27(root, s) for s in ("train", "val")}
    sets |= {f"cityscapes {s}": data.Cityscapes27(root, s) for s in ("train", "val")}
    sets |= {f"potsdam {s}": data.Potsdam3(root, s) for s in ("train", "val", "unlabelled_train", "all")}
    sets |= {f"{name} five-crop": data.FiveCropDataset(name, "train", root=root)
             for name in ("cocostuff27", "cityscapes")}
    counts = {}
    for name, dataset in sets.items():
        for i in range(len(dataset)):
            dataset.load(i)
        counts[name] = len(dataset)
    with mock.patch.dict(os.environ, world.environment()):   # restored afterwards
        load_backbone("dino_vitb8", progress=False)
        load_released("cocostuff27", progress=False)
    return counts


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path, help="folder of the world (kept if complete)")
    parser.add_argument("--check", action="store_true", help="then read every file through the loaders")
    args = parser.parse_args()
    start = time.perf_counter()
    world = build(args.root)
    print(f"paper world in {world.root} ({time.perf_counter() - start:.1f} s)")
    if args.check:
        start = time.perf_counter()
        counts = check(world)
        print("read " + ", ".join(f"{k}: {v}" for k, v in counts.items())
              + f"; DINO weights and the released checkpoint ({time.perf_counter() - start:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
