"""SynthStuff: the offline dataset, generated once per configuration and read back like any image folder.

On disk (the "directory" layout of STEGO, so `ImageFolder` code reads it):

    <root>/synthstuff-<size>px-seed<seed>-v<version>[-scenes][-nuisance][-w<world>[n<nuisance>]]/
        imgs/{train,val}/00000.png ...     RGB
        labels/{train,val}/00000.png ...   class ids 0..7 (mode L)
        {train,val}.txt                    file names, in index order
        {train,val}.json                   manifest, written last: the split is complete

Image i of a split depends only on (seed, split, i): a split of 2,000 images starts with the same 200
images as one of 200. So a split on disk with at least `n_images` images is reused (its first
`n_images`), and a smaller or damaged one is regenerated, under a lock, into a temporary folder that
is moved into place before the manifest is written.

Two switches change the world, each only in what it names (both off by default, which gives exactly the
images of earlier versions): `scenes` draws each image's classes from a scene type (`scenes.SceneType`:
classes that co-occur), `nuisance` adds per-image variation that carries no class (`nuisance.Nuisance`).
A world with a switch on has its own folder and dataset name (`synthstuff-scenes`, ...), so caches keyed
by them never mix worlds.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ..env import cache_dir
from ..files import folder_lock, read_json, replace_tree, staging_dir, write_json_atomic
from ..progress import progress as progress_bar
from .nuisance import NUISANCE_VERSION, Nuisance
from .scenes import CLASSES, PALETTE, STUFF_CLASSES, THING_CLASSES, SceneType, render_scene, scene_types
from .specs import world_suffix
from .stego_sets import ImageFolder
from .transforms import SegTransform

GENERATOR_VERSION = 1   # bump when render_scene changes its output, so old caches are not reused
WORLD_VERSION = 1       # bump when the scene types change; a part of every switched-on world's name
_SPLITS = {"train": 0, "val": 1}
_SCENE_STREAM, _NUISANCE_STREAM = 1, 2   # the switches' own random streams, beside the image's


def world_name(scenes: bool = False, nuisance: bool = False) -> str:
    """The dataset name of a SynthStuff world: 'synthstuff', 'synthstuff-scenes', ..., '-nuisance'."""
    return "synthstuff" + world_suffix(scenes, nuisance)


def _world_suffix(scenes: bool, nuisance: bool) -> str:
    """Folder-name suffix of a world: '' with both switches off (earlier versions' folders)."""
    if not (scenes or nuisance):
        return ""
    return f"{world_suffix(scenes, nuisance)}-w{WORLD_VERSION}" + (
        f"n{NUISANCE_VERSION}" if nuisance else "")


@dataclass(frozen=True)
class SynthStuffConfig:
    """Sizes of a SynthStuff profile; `SYNTHSTUFF_OFFLINE` is the one the book uses offline."""

    image_size: int = 96   # 12 x 12 patches of 8 px
    n_train: int = 2000
    n_val: int = 200
    seed: int = 0
    scenes: bool = False     # classes co-occur by scene type (see scenes.SceneType)
    nuisance: bool = False   # per-image variation that carries no class (see nuisance.Nuisance)

    @property
    def name(self) -> str:
        """The world's dataset name (feature caches are keyed by it)."""
        return world_name(self.scenes, self.nuisance)

    def n_images(self, split: str) -> int:
        if split not in _SPLITS:
            raise ValueError(f"unknown SynthStuff split {split!r}; choose one of {list(_SPLITS)}")
        return self.n_train if split == "train" else self.n_val

    def dataset(self, split: str, *, root: str | Path | None = None,
                transform: SegTransform | None = None) -> SynthStuff:
        """The SynthStuff split of this profile (generated on first use)."""
        return SynthStuff(split, n_images=self.n_images(split), image_size=self.image_size, seed=self.seed,
                          root=root, transform=transform, scenes=self.scenes, nuisance=self.nuisance)


SYNTHSTUFF_OFFLINE = SynthStuffConfig()


def synthstuff_sample(seed: int, split: str, index: int, image_size: int, *, scenes: bool = False,
                      nuisance: bool = False, layout: dict | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Render image `index` of a split without touching the disk: -> (S, S, 3) uint8, (S, S) uint8 labels.

    The image's own random stream draws the layout and textures; `scenes` and `nuisance` draw from streams
    of their own, so turning on `nuisance` leaves the labels unchanged. A `layout` dict receives the
    geometry (see `scenes.render_scene`).
    """
    if split not in _SPLITS:
        raise ValueError(f"unknown SynthStuff split {split!r}; choose one of {list(_SPLITS)}")
    key = [GENERATOR_VERSION, seed, _SPLITS[split], index]
    scene = scene_of(seed, split, index) if scenes else None
    if not nuisance:
        return render_scene(np.random.default_rng(key), image_size, scene, layout=layout)
    rng = np.random.default_rng(key + [_NUISANCE_STREAM, NUISANCE_VERSION])
    draw = Nuisance.draw(rng)
    img, label = render_scene(np.random.default_rng(key), image_size, scene, texture_zoom=draw.zoom,
                              layout=layout)
    return draw.apply(img, rng), label


def scene_of(seed: int, split: str, index: int) -> SceneType:
    """The scene type of image `index` with `scenes` on: each block of 30 consecutive images has every type
    once, in a random order, so the types' (and the classes') frequencies hold in small sets too."""
    types = scene_types()
    block = np.random.default_rng([GENERATOR_VERSION, seed, _SPLITS[split], index // len(types), _SCENE_STREAM])
    return types[int(block.permutation(len(types))[index % len(types)])]


def _render_range(args: tuple[Path, int, str, int, int, int, bool, bool]) -> None:
    """Worker: render images [start, stop) of a split and write them under `out` as PNGs."""
    out, seed, split, image_size, start, stop, scenes, nuisance = args
    for i in range(start, stop):
        img, label = synthstuff_sample(seed, split, i, image_size, scenes=scenes, nuisance=nuisance)
        Image.fromarray(img).save(out / "imgs" / split / f"{i:05d}.png", format="PNG")
        Image.fromarray(label).save(out / "labels" / split / f"{i:05d}.png", format="PNG")


def _render_all(out: Path, seed: int, split: str, n_images: int, image_size: int, workers: int,
                world: tuple[bool, bool]) -> None:
    step = max(1, min(50, -(-n_images // (4 * workers))))   # about 4 chunks per worker, at most 50 images
    chunks = [(out, seed, split, image_size, s, min(s + step, n_images), *world)
              for s in range(0, n_images, step)]
    bar = progress_bar(total=n_images, desc=f"SynthStuff {split}", unit="image", enabled=None)
    if workers <= 1 or len(chunks) == 1:
        for chunk in chunks:
            _render_range(chunk)
            bar.update(chunk[5] - chunk[4])
    else:
        from stego_lite.workers import process_pool

        with process_pool(min(workers, len(chunks))) as pool:   # every file depends on its index only
            for chunk, _ in zip(chunks, pool.map(_render_range, chunks)):
                bar.update(chunk[5] - chunk[4])
    bar.close()


def generate_synthstuff(root: str | Path | None, split: str, *, n_images: int, image_size: int, seed: int = 0,
                        workers: int | None = None, scenes: bool = False, nuisance: bool = False) -> Path:
    """Make sure split `split` with at least `n_images` images exists; return the dataset folder.

    `workers` processes render in parallel (default: the CPU count, at most 4, for 200 images or more);
    the output is the same whatever the number of workers.
    """
    if split not in _SPLITS:
        raise ValueError(f"unknown SynthStuff split {split!r}; choose one of {list(_SPLITS)}")
    if n_images < 1 or image_size < 32:
        raise ValueError(f"need n_images >= 1 and image_size >= 32, got {n_images} and {image_size}")
    root = Path(root).expanduser() if root is not None else cache_dir() / "synthstuff"
    suffix = _world_suffix(scenes, nuisance)
    folder = root / f"synthstuff-{image_size}px-seed{seed}-v{GENERATOR_VERSION}{suffix}"
    config = {"generator_version": GENERATOR_VERSION, "image_size": image_size, "seed": seed, "split": split,
              "classes": list(CLASSES)}
    if suffix:   # the switches' settings; default folders keep the manifest of earlier versions
        config.update(scenes=scenes, nuisance=nuisance, world=suffix)
    if _complete(folder, split, config, n_images):
        return folder
    with folder_lock(folder):
        if _complete(folder, split, config, n_images):   # another process finished it meanwhile
            return folder
        (folder / f"{split}.json").unlink(missing_ok=True)   # from here on the split counts as incomplete
        start = time.perf_counter()
        with staging_dir(folder, split) as tmp:
            (tmp / "imgs" / split).mkdir(parents=True)
            (tmp / "labels" / split).mkdir(parents=True)
            if workers is None:   # processes pay off from a few hundred images on
                workers = min(os.cpu_count() or 1, 4) if n_images >= 200 else 1
            _render_all(tmp, seed, split, n_images, image_size, workers, (scenes, nuisance))
            names = [f"{i:05d}.png" for i in range(n_images)]
            (tmp / f"{split}.txt").write_text("\n".join(names) + "\n")
            for part in ("imgs", "labels"):
                replace_tree(tmp / part / split, folder / part / split)
            os.replace(tmp / f"{split}.txt", folder / f"{split}.txt")
        write_json_atomic(folder / f"{split}.json", {
            **config, "n_images": n_images, "seconds": round(time.perf_counter() - start, 2)})
    return folder


def _complete(folder: Path, split: str, config: dict, n_images: int) -> bool:
    manifest = read_json(folder / f"{split}.json")
    if manifest is None:
        return False
    same = all(manifest.get(k) == v for k, v in config.items())
    return same and manifest.get("n_images", 0) >= n_images and (folder / f"{split}.txt").is_file()


class SynthStuff(ImageFolder):
    """Procedural texture-and-shape segmentation data (8 classes: 5 stuff, 3 things), generated on first use.

    Items: `image` (3, S, S) float32 ImageNet-normalised, `label` (S, S) int64, `index`. Colour carries
    no class information (see `stego_lite.data.scenes`). The default transform only normalises.
    """

    name = "synthstuff"
    stuff_classes = STUFF_CLASSES
    thing_classes = THING_CLASSES

    def __init__(self, split: str = "train", *, n_images: int, image_size: int, seed: int = 0,
                 root: str | Path | None = None, transform: SegTransform | None = None,
                 workers: int | None = None, scenes: bool = False, nuisance: bool = False) -> None:
        folder = generate_synthstuff(root, split, n_images=n_images, image_size=image_size, seed=seed,
                                     workers=workers, scenes=scenes, nuisance=nuisance)
        names = (folder / f"{split}.txt").read_text().split()[:n_images]
        super().__init__(folder, split, classes=CLASSES, files=names,
                         transform=transform or SegTransform(None, crop="none"))
        self.palette = PALETTE
        self.n_images, self.image_size, self.seed = n_images, image_size, seed
        self.scenes, self.nuisance = scenes, nuisance
        self.name = world_name(scenes, nuisance)   # feature and KNN caches are keyed by it

    def __repr__(self) -> str:
        world = "".join(f", {k}=True" for k in ("scenes", "nuisance") if getattr(self, k))
        return (f"SynthStuff({self.split!r}, n_images={self.n_images}, image_size={self.image_size}, "
                f"seed={self.seed}{world}, folder={str(self.folder)!r})")
