"""Why STEGO works, measured: dimension reduction and cluster distinctness (Koenig et al. 2023, ref. §8).

    cfg = SweepConfig.for_profile("offline")              # grid of D, seeds, head budget, sample sizes
    source, data = sweep_inputs(p, backbone, fit_images=cfg.fit_images)   # training source, SweepData
    heads = {s: sweep_heads(cfg, source, s) for s in cfg.seeds}   # STEGO heads for every D, cached
    table = dimension_sweep(cfg, data, heads)             # tidy: method, dim, seed, probe, accuracy, miou
    summary, curves = convergence_study(cfg, data, heads[cfg.seeds[0]])   # k-means per representation
    scores = distinctness_study(cfg, data, heads)         # silhouette, Davies-Bouldin, ... per representation

Four reducers share one interface, `fit(tokens)` on training tokens (N, C) and `transform(tokens)` to
(N, D): `Identity` (the raw backbone features), `PCA` on standardised tokens, a Gaussian
`RandomProjection` and `HeadReducer` (a trained STEGO head with `dim=D`). Every representation is then
scored the same way, post hoc on frozen codes (Koenig et al.'s protocol in spirit; they train only the
probes on PCA/RP features):

* cluster probe: spherical (cosine) k-means with K = n_classes, fitted by `probes.kmeans` on a sample of
  training tokens. It minimises exactly the objective of STEGO's learned cluster probe (minus the mean
  cosine to the nearest centroid, reference §5.1), but to convergence and from k-means++ seeds, so no
  centroid is left dead by an unlucky random start;
* linear probe: a linear layer on standardised codes, cross-entropy, full-batch L-BFGS, on the same
  tokens, each labelled by the majority label of its patch.

Both are evaluated at pixel resolution on the validation set, as `evaluate.evaluate` does (codes
upsampled bilinearly to the image before the probes), without flip-TTA or CRF. Upsampling only the K
probe scores is exact: bilinear weights sum to one, so upsampling commutes with the affine linear probe,
and the cosine argmax of an upsampled code equals the argmax of its upsampled dot products with the unit
centroids (the code's norm is the same for every centroid).

STEGO heads for all D of the grid train in one loop (`train_heads`) on the same batches, sampled points
and random partners, so the backbone features, their sampled points and their correlation F are computed
once per step for every head (`loss.stego_losses`); each head's loss is exactly `loss.stego_loss`.
"""
from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from stego_lite.data.files import write_atomic
from stego_lite.env import cache_dir
from stego_lite.features import save_atomic
from stego_lite.head import SegmentationHead
from stego_lite.loss import stego_losses
from stego_lite.metrics import IGNORE_INDEX, confusion_matrix, hungarian_metrics, iou_and_accuracy
from stego_lite.probes import kmeans
from stego_lite.train import EpochOrder, TrainConfig, build_head, next_batch

CACHE_VERSION = 1   # bump when anything below changes the cached heads or tables

# ---------------------------------------------------------------------------------------------------------
# Settings per profile


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

    def __post_init__(self) -> None:
        if not self.dims or min(self.dims) < 1 or not self.seeds:
            raise ValueError(f"need positive dims and at least one seed, got dims={self.dims}, "
                             f"seeds={self.seeds}")
        if self.convergence_dims is not None and not set(self.convergence_dims) <= set(self.dims):
            raise ValueError(f"convergence_dims {self.convergence_dims} must be among dims {self.dims}")

    @classmethod
    def for_profile(cls, name: str, **overrides: Any) -> SweepConfig:
        """The profile's settings (`SWEEPS`), then `overrides` (e.g. seeds=(0, 1, 2))."""
        try:
            base = SWEEPS[name]
        except KeyError:
            raise ValueError(f"no sweep settings for profile {name!r}; choose one of "
                             f"{sorted(SWEEPS)}") from None
        return dataclasses.replace(base, **overrides)

    def head_config(self, seed: int) -> TrainConfig:
        """The training settings of the sweep's heads (dim is set per head by `train_heads`)."""
        return TrainConfig.from_preset(self.loss_preset, batch_size=self.head_batch, steps=self.head_steps,
                                       lr=self.head_lr, seed=seed)


SWEEPS: dict[str, SweepConfig] = {
    # CPU budget (chapter 4 runs cold in about 3 minutes on 2 cores): every head for 100 iterations of batch 8
    # (the synthstuff preset: 300 x 16), all D of one seed in one loop; probes on 8 tokens of each of the
    # 2,000 training images; the convergence study on 10,000 validation tokens at three D.
    "offline": SweepConfig(dims=(3, 6, 12, 24, 48, 96), seeds=(0, 1, 2), loss_preset="synthstuff",
                           head_steps=100, head_batch=8, head_lr=2e-3, fit_images=None, tokens_per_image=8,
                           kmeans_n_init=2, linear_max_iter=50, convergence_tokens=10_000,
                           convergence_dims=(3, 12, 48)),
    # Koenig et al.'s grid and the COCO-Stuff checkpoint's settings (7,000 iterations of batch 32, lr 5e-4);
    # PCA/RP/probes are fitted on tokens of 5,000 training images (they use all their tokens; we draw 40
    # of each).
    "paper": SweepConfig(dims=(3, 6, 12, 24, 48, 96, 192, 384, 768), seeds=(0, 1, 2),
                         loss_preset="cocostuff27",
                         head_steps=7000, head_batch=32, head_lr=5e-4, fit_images=5000, tokens_per_image=40,
                         convergence_tokens=50_000, distinct_tokens=3000),
}


# ---------------------------------------------------------------------------------------------------------
# STEGO heads of several dimensions, trained together


def train_heads(dims: Sequence[int], config: TrainConfig, source, *, device: torch.device | str | None = None,
                progress: bool = False) -> tuple[dict[int, SegmentationHead], float]:
    """Train one STEGO head per D in `dims` on the same batches: -> ({D: head in eval mode}, seconds).

    Each head is what `train.train(replace(config, dim=D), source)` trains, but all heads see the same
    images, KNN positives, sampled points, random partners and loss-feature dropout draw (their own
    dropout inside the head stays independent). One Adam over all heads equals one Adam per head (Adam
    is per parameter). Seeded by `config.seed`; the caller's RNG state is left as it was.
    """
    device = torch.device(device or "cpu")
    if not 2 <= config.batch_size <= len(source):
        raise ValueError(f"batch_size must be between 2 and the {len(source)} training images, "
                         f"got {config.batch_size}")
    if not dims or min(dims) < 1:
        raise ValueError(f"dims must be positive code sizes, got {tuple(dims)}")
    start = time.perf_counter()
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(config.seed)
        heads = {d: build_head(dataclasses.replace(config, dim=d), source.in_dim).to(device) for d in dims}
        loss_dropout = nn.Dropout2d(config.dropout)   # the correlation target's channel dropout, shared
        optimizer = torch.optim.Adam([p for h in heads.values() for p in h.parameters()], lr=config.lr)
        generator = torch.Generator().manual_seed(config.seed)
        batches = EpochOrder(len(source), config.batch_size, generator)   # the data order of train.train
        steps = range(config.steps)
        if progress:
            from tqdm.auto import tqdm
            steps = tqdm(steps, desc=f"{len(heads)} heads", unit="it")
        for step in steps:
            batch = next_batch(source, batches, config, device)
            codes = [h.train()(batch.feats) for h in heads.values()]
            codes_knn = [h(batch.feats_pos) for h in heads.values()]
            terms = stego_losses(loss_dropout(batch.feats), codes, loss_dropout(batch.feats_pos), codes_knn,
                                 config.loss, generator=generator)
            totals = [t.total for t in terms]
            total = torch.stack(totals).sum()
            if not torch.isfinite(total):
                raise FloatingPointError(f"non-finite loss at iteration {step + 1} (per head: "
                                         f"{[t.item() for t in totals]}); lower the learning rate or check "
                                         "the features for NaN/Inf")
            optimizer.zero_grad(set_to_none=True)
            total.backward()
            optimizer.step()
    return {d: h.eval() for d, h in heads.items()}, time.perf_counter() - start


@dataclass
class HeadSet:
    """The sweep's heads of one seed, {D: head}, with the cache key they were stored under."""

    heads: dict[int, SegmentationHead]
    key: str
    seconds: float   # training time when they were trained (maybe in an earlier session)


def sweep_heads(cfg: SweepConfig, source, seed: int, *, device: torch.device | str | None = None,
                progress: bool = False) -> HeadSet:
    """The STEGO heads of `seed` for every D of the grid: trained once (`train_heads`), then read back."""
    config = cfg.head_config(seed)
    spec = {"config": dataclasses.asdict(config), "dims": list(cfg.dims), "source": source.key,
            "version": CACHE_VERSION}
    key = _digest(spec)
    path = cache_dir() / "analysis" / f"heads-seed{seed}-{key}.pt"
    if path.is_file():
        state = torch.load(path, map_location="cpu", weights_only=True)
        heads = {}
        for d in cfg.dims:
            heads[d] = build_head(dataclasses.replace(config, dim=d), source.in_dim)
            heads[d].load_state_dict(state["heads"][str(d)])
        return HeadSet({d: h.eval().to(device or "cpu") for d, h in heads.items()}, key, state["seconds"])
    heads, seconds = train_heads(cfg.dims, config, source, device=device, progress=progress)
    save_atomic({"spec": json.dumps(spec), "seconds": seconds,
                 "heads": {str(d): {k: v.cpu() for k, v in h.state_dict().items()}
                           for d, h in heads.items()}},
                path)
    return HeadSet(heads, key, seconds)


def _digest(spec: Any) -> str:
    return hashlib.sha1(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()[:16]


# ---------------------------------------------------------------------------------------------------------
# Tokens: feature maps as rows, labels at patch resolution


def tokens(feats: Tensor) -> Tensor:
    """Feature maps as one row per patch: (N, C, h, w) -> (N * h * w, C) float32."""
    if feats.ndim != 4:
        raise ValueError(f"expected feature maps (N, C, h, w), got shape {tuple(feats.shape)}")
    return feats.float().permute(0, 2, 3, 1).reshape(-1, feats.shape[1])


def patch_labels(labels: Tensor, grid: tuple[int, int], n_classes: int) -> Tensor:
    """The majority label of each patch: (N, H, W) -> (N, h, w) int64; -1 where no pixel is labelled.

    H and W must be multiples of h and w (one patch = an (H/h) x (W/w) block of pixels).
    """
    N, H, W = labels.shape
    h, w = grid
    if H % h or W % w:
        raise ValueError(f"labels {H}x{W} do not split into a {h}x{w} grid of equal patches")
    patch = (torch.arange(H) // (H // h))[:, None] * w + (torch.arange(W) // (W // w))[None, :]   # (H, W)
    index = (torch.arange(N)[:, None, None] * (h * w) + patch) * (n_classes + 1) + labels.long() + 1
    counts = torch.bincount(index.flatten(), minlength=N * h * w * (n_classes + 1)).view(N, h, w, -1)
    majority = counts[..., 1:].argmax(-1)
    return torch.where(counts[..., 1:].sum(-1) > 0, majority, torch.full_like(majority, IGNORE_INDEX))


# ---------------------------------------------------------------------------------------------------------
# The data of a sweep: a token sample of the training set, the validation features and labels


Batches = Callable[[], Iterator[tuple[Tensor, Tensor]]]   # -> (feats (B, C, h, w), labels (B, H, W))


@dataclass
class SweepData:
    """What the sweep reads: training feature maps (for the token samples) and validation maps, by batch.

    `from_features` wraps cached `FeatureSet`s (offline: everything in memory); `from_backbone` runs the
    backbone on the fly (paper: COCO-Stuff's features do not fit on disk), on `fit_images` random
    training images per seed.
    """

    n_classes: int
    in_dim: int
    train_batches: Callable[[int], Iterator[tuple[Tensor, Tensor]]]   # seed -> batches of training images
    val_batches: Batches
    key: str                 # names the data, for cache keys

    @classmethod
    def from_features(cls, train, val, n_classes: int, *, batch_size: int = 256) -> SweepData:
        """From two `features.FeatureSet`s (training, validation)."""
        def chunks(fs) -> Iterator[tuple[Tensor, Tensor]]:
            for start in range(0, len(fs.feats), batch_size):
                yield fs.feats[start:start + batch_size].float(), fs.labels[start:start + batch_size].long()

        return cls(n_classes, train.feats.shape[1], lambda seed: chunks(train), lambda: chunks(val),
                   key=f"{train.key.name}+{val.key.name}")

    @classmethod
    def from_backbone(cls, backbone, train_set, val_set, n_classes: int, *, fit_images: int | None,
                      device: torch.device | str | None = None, batch_size: int = 32) -> SweepData:
        """Features computed by `backbone` on every pass (for datasets too large to cache)."""
        from torch.utils.data import Subset

        from stego_lite.features import batches, feature_key

        def train_batches(seed: int) -> Iterator[tuple[Tensor, Tensor]]:
            subset = train_set
            if fit_images is not None and fit_images < len(train_set):
                generator = torch.Generator().manual_seed(seed)
                pick = torch.randperm(len(train_set), generator=generator)[:fit_images]
                subset = Subset(train_set, pick.sort().values.tolist())
            return batches(backbone, subset, batch_size=batch_size, device=device)

        key = (f"{feature_key(backbone, train_set).name}+{feature_key(backbone, val_set).name}"
               f"+fit{fit_images}")
        return cls(n_classes, backbone.embed_dim, train_batches,
                   lambda: batches(backbone, val_set, batch_size=batch_size, device=device), key=key)

    def train_tokens(self, tokens_per_image: int, seed: int) -> tuple[Tensor, Tensor]:
        """`tokens_per_image` random patches of every training image (of the seed's subset), with their
        majority labels: -> (n, C) float32, (n,) int64."""
        generator = torch.Generator().manual_seed(seed)
        xs, ys = [], []
        for feats, labels in self.train_batches(seed):
            B, _, h, w = feats.shape
            if tokens_per_image > h * w:
                raise ValueError(f"tokens_per_image={tokens_per_image} exceeds the {h * w} patches per image")
            pick = torch.rand(B, h * w, generator=generator).argsort(dim=1)[:, :tokens_per_image]   # (B, t)
            rows = (torch.arange(B)[:, None] * h * w + pick).flatten()
            xs.append(tokens(feats.cpu())[rows])
            ys.append(patch_labels(labels.cpu(), (h, w), self.n_classes).flatten()[rows])
        return torch.cat(xs), torch.cat(ys)

    def val_tokens(self, n: int | None, seed: int) -> tuple[Tensor, Tensor]:
        """A random sample of `n` validation patches (all if None) with majority labels: (n, C), (n,).

        The paper profile's validation set is large: tokens are drawn per batch, about n in all.
        """
        xs, ys = [], []
        for feats, labels in self.val_batches():
            xs.append(tokens(feats.cpu()))
            ys.append(patch_labels(labels.cpu(), tuple(feats.shape[-2:]), self.n_classes).flatten())
            if n is not None and sum(len(x) for x in xs) >= 5 * n:   # enough to draw from
                break
        x, y = torch.cat(xs), torch.cat(ys)
        if n is None or n >= len(x):
            return x, y
        pick = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))[:n]
        return x[pick], y[pick]


# ---------------------------------------------------------------------------------------------------------
# Reducers: fit on training tokens (N, C), transform to (N, D)


class Reducer(Protocol):
    name: str
    dim: int

    def fit(self, x: Tensor) -> Reducer: ...

    def transform(self, x: Tensor) -> Tensor: ...


def transform_map(reducer: Reducer, feats: Tensor) -> Tensor:
    """Apply a token reducer to feature maps: (B, C, h, w) -> (B, D, h, w)."""
    B, _, h, w = feats.shape
    return reducer.transform(tokens(feats)).reshape(B, h, w, -1).permute(0, 3, 1, 2)


class _Standardizer:
    """Per-channel mean and population std of the fit tokens (scikit-learn's StandardScaler)."""

    def fit_scaler(self, x: Tensor) -> None:
        x = x.double()
        self.mean = x.mean(0)
        std = x.std(0, unbiased=False)
        self.scale = torch.where(std > 0, std, torch.ones_like(std))   # constant channels stay as they are

    def standardize(self, x: Tensor) -> Tensor:
        return ((x.double() - self.mean) / self.scale).float()


class Identity:
    """The raw backbone features (the 'raw DINO' baseline)."""

    name = "raw"

    def __init__(self) -> None:
        self.dim = 0

    def fit(self, x: Tensor) -> Identity:
        self.dim = x.shape[1]
        return self

    def transform(self, x: Tensor) -> Tensor:
        return x.float()


class PCA(_Standardizer):
    """The first `dim` principal components of standardised tokens (Koenig et al.: StandardScaler + PCA).

    After `fit`, `explained_variance_ratio` holds the share of every component (all C of them), and
    `with_dim(d)` gives the same fit truncated to d components. Standardisation uses the fit statistics
    (Koenig et al. standardise each batch by its own statistics at run time; with large batches the two
    agree).
    """

    name = "PCA"

    def __init__(self, dim: int | None = None) -> None:
        self.dim = dim

    def fit(self, x: Tensor) -> PCA:
        if x.ndim != 2 or len(x) < 2:
            raise ValueError(f"PCA needs (N, C) tokens with N >= 2, got shape {tuple(x.shape)}")
        if self.dim is not None and not 1 <= self.dim <= x.shape[1]:
            raise ValueError(f"dim={self.dim} must be between 1 and the {x.shape[1]} feature channels")
        self.fit_scaler(x)
        z = (x.double() - self.mean) / self.scale
        z = z - z.mean(0)
        variance, vectors = torch.linalg.eigh(z.T @ z / (len(z) - 1))   # ascending
        self.explained_variance = variance.flip(0).clamp_min(0)
        self.explained_variance_ratio = (self.explained_variance / self.explained_variance.sum()).numpy()
        self.components = vectors.flip(1).T.contiguous()   # (C, C), rows by decreasing variance
        self.dim = self.dim or x.shape[1]
        return self

    def with_dim(self, dim: int) -> PCA:
        """This fit, keeping the first `dim` components."""
        if not 1 <= dim <= len(self.components):
            raise ValueError(f"dim={dim} must be between 1 and {len(self.components)}")
        out = copy.copy(self)
        out.dim = dim
        return out

    def transform(self, x: Tensor) -> Tensor:
        return (self.standardize(x).double() @ self.components[:self.dim].T).float()


class RandomProjection(_Standardizer):
    """Gaussian random projection to `dim` dimensions, entries N(0, 1/dim) (scikit-learn's
    GaussianRandomProjection), of standardised tokens unless `standardize=False`."""

    name = "RP"

    def __init__(self, dim: int, *, seed: int = 0, standardize: bool = True) -> None:
        if dim < 1:
            raise ValueError(f"dim must be positive, got {dim}")
        self.dim, self.seed, self.standardize_inputs = dim, seed, standardize

    def fit(self, x: Tensor) -> RandomProjection:
        if self.standardize_inputs:
            self.fit_scaler(x)
        generator = torch.Generator().manual_seed(self.seed)
        self.matrix = (torch.randn(x.shape[1], self.dim, generator=generator, dtype=torch.float64)
                       / self.dim ** 0.5).float()
        return self

    def transform(self, x: Tensor) -> Tensor:
        return (self.standardize(x) if self.standardize_inputs else x.float()) @ self.matrix


class HeadReducer:
    """A trained STEGO head applied to each token (its convolutions are 1x1): (N, C) -> (N, D)."""

    name = "STEGO"

    def __init__(self, head: nn.Module) -> None:
        self.head = head.eval()
        self.dim = head.code_dim

    def fit(self, x: Tensor) -> HeadReducer:   # trained elsewhere (train_heads)
        return self

    @torch.no_grad()
    def transform(self, x: Tensor) -> Tensor:
        device = next(self.head.parameters()).device
        return self.head(x.float().to(device)[:, :, None, None])[:, :, 0, 0].cpu()


def sweep_reducers(cfg: SweepConfig, headset: HeadSet, x: Tensor,
                   seed: int) -> dict[tuple[str, int], Reducer]:
    """Every representation of the sweep, fitted on the training tokens x: {(method, D): reducer}.

    The raw features at full width, then STEGO, PCA and RP for every D of the grid.
    """
    pca = PCA().fit(x)
    reducers: dict[tuple[str, int], Reducer] = {("raw", x.shape[1]): Identity().fit(x)}
    for d in cfg.dims:
        reducers["STEGO", d] = HeadReducer(headset.heads[d])
        if d <= x.shape[1]:
            reducers["PCA", d] = pca.with_dim(d)
            reducers["RP", d] = RandomProjection(d, seed=seed).fit(x)
    return reducers


# ---------------------------------------------------------------------------------------------------------
# Probes fitted post hoc on frozen codes, scored at pixel resolution


@dataclass
class TokenProbes:
    """One representation's cluster probe (unit centroids) and linear probe (folded onto raw codes)."""

    centroids: Tensor   # (K, D), unit norm
    weight: Tensor      # (K, D)
    bias: Tensor        # (K,)

    def cluster_scores(self, code: Tensor) -> Tensor:
        """Dot products with the unit centroids (B, D, h, w) -> (B, K, h, w): their argmax is the cosine
        argmax, also after bilinear upsampling (the code's norm is common to all K)."""
        return torch.einsum("bdhw,kd->bkhw", code.float(), self.centroids)

    def linear_logits(self, code: Tensor) -> Tensor:
        """The linear probe's logits (B, D, h, w) -> (B, K, h, w)."""
        return torch.einsum("bdhw,kd->bkhw", code.float(), self.weight) + self.bias[:, None, None]


def fit_linear_probe(x: Tensor, y: Tensor, n_classes: int, *, max_iter: int = 100,
                     l2: float = 1e-4) -> tuple[Tensor, Tensor]:
    """Multinomial logistic regression on standardised x (N, D), labels y (N,) (-1 ignored), by full-batch
    L-BFGS from zero (deterministic): -> weight (K, D), bias (K,) acting on the *unstandardised* x."""
    keep = y >= 0
    scaler = _Standardizer()
    scaler.fit_scaler(x[keep])
    z, target = scaler.standardize(x[keep]), y[keep]
    linear = nn.Linear(x.shape[1], n_classes)
    nn.init.zeros_(linear.weight)
    nn.init.zeros_(linear.bias)
    optimizer = torch.optim.LBFGS(linear.parameters(), lr=1.0, max_iter=max_iter, history_size=20,
                                  line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(linear(z), target) + l2 * linear.weight.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    weight = linear.weight.detach().double() / scaler.scale           # fold the standardisation in
    bias = linear.bias.detach().double() - weight @ scaler.mean
    return weight.float(), bias.float()


def fit_probes(codes: Tensor, labels: Tensor, n_classes: int, *, seed: int, n_init: int = 3,
               linear_max_iter: int = 100) -> TokenProbes:
    """Cluster probe: cosine k-means, K = n_classes, on the codes (labels unused); linear probe on labels."""
    cluster = kmeans(codes, n_classes, metric="cosine", n_init=n_init, max_iter=100, seed=seed)
    weight, bias = fit_linear_probe(codes, labels, n_classes, max_iter=linear_max_iter)
    return TokenProbes(cluster.centroids, weight, bias)


@torch.no_grad()
def score_probes(reducer: Reducer, probes: TokenProbes, data: SweepData) -> dict[str, float]:
    """Cluster (Hungarian) and linear accuracy / mIoU in percent on the validation pixels.

    Probe scores are computed per patch and upsampled bilinearly to the label size, which equals applying
    the probes to the bilinearly upsampled code (see the module docstring); no flip-TTA, no CRF.
    """
    K = data.n_classes
    confusion = {probe: torch.zeros(K, K, dtype=torch.int64) for probe in ("cluster", "linear")}
    for feats, labels in data.val_batches():
        code = transform_map(reducer, feats.cpu())
        for probe, scores in (("cluster", probes.cluster_scores(code)),
                              ("linear", probes.linear_logits(code))):
            scores = F.interpolate(scores, size=labels.shape[-2:], mode="bilinear", align_corners=False)
            confusion[probe] += confusion_matrix(scores.argmax(1).cpu(), labels.cpu(), K)
    cluster, linear = hungarian_metrics(confusion["cluster"]), iou_and_accuracy(confusion["linear"])
    return {"cluster accuracy": cluster["accuracy"], "cluster miou": cluster["miou"],
            "linear accuracy": linear["accuracy"], "linear miou": linear["miou"]}


# ---------------------------------------------------------------------------------------------------------
# The dimension sweep (Koenig et al. Fig. 4)

SWEEP_COLUMNS = ["method", "dim", "seed", "probe", "accuracy", "miou"]


def dimension_sweep(cfg: SweepConfig, data: SweepData, headsets: dict[int, HeadSet], *,
                    progress: bool = False) -> pd.DataFrame:
    """Cluster and linear accuracy / mIoU of every representation and seed: a tidy table (SWEEP_COLUMNS).

    Per seed: a token sample of the training set (`cfg.tokens_per_image` per image), PCA and RP fitted
    on it, the seed's STEGO heads, probes fitted on its codes, scores on the validation pixels. Computed
    once and cached (CSV, keyed by the settings, the data and the heads).
    """
    spec = {"config": dataclasses.asdict(cfg), "data": data.key,
            "heads": {s: headsets[s].key for s in cfg.seeds}, "version": CACHE_VERSION}

    def compute() -> pd.DataFrame:
        rows = []
        for seed in cfg.seeds:
            x, y = data.train_tokens(cfg.tokens_per_image, seed)
            reducers = sweep_reducers(cfg, headsets[seed], x, seed)
            for (method, dim), reducer in _progress(reducers.items(), progress, f"sweep, seed {seed}"):
                probes = fit_probes(reducer.transform(x), y, data.n_classes, seed=seed,
                                    n_init=cfg.kmeans_n_init, linear_max_iter=cfg.linear_max_iter)
                scores = score_probes(reducer, probes, data)
                for probe in ("cluster", "linear"):
                    rows.append({"method": method, "dim": dim, "seed": seed, "probe": probe,
                                 "accuracy": scores[f"{probe} accuracy"], "miou": scores[f"{probe} miou"]})
        return pd.DataFrame(rows, columns=SWEEP_COLUMNS)

    return cached_frames("sweep", spec, lambda: {"table": compute()})["table"]


def summarize(table: pd.DataFrame, by: Sequence[str], values: Sequence[str]) -> pd.DataFrame:
    """Mean and sample std over seeds of `values`, grouped by `by`: columns '<value>' and '<value> std'."""
    grouped = table.groupby(list(by), sort=False)[list(values)]
    mean, std = grouped.mean(), grouped.std(ddof=1).fillna(0.0)
    return mean.join(std.add_suffix(" std")).reset_index()


def explained_variance(data: SweepData, cfg: SweepConfig, seed: int | None = None) -> np.ndarray:
    """Share of the variance of standardised training tokens per principal component (all C): (C,)."""
    x, _ = data.train_tokens(cfg.tokens_per_image, cfg.seeds[0] if seed is None else seed)
    return PCA().fit(x).explained_variance_ratio


# ---------------------------------------------------------------------------------------------------------
# k-means convergence per representation


def kmeans_convergence(x: Tensor, labels: Tensor, n_classes: int, *, seeds: Sequence[int],
                       max_iter: int = 100, tol: float = 1e-4) -> tuple[dict[str, float], pd.DataFrame]:
    """Cosine k-means (K = n_classes, one k-means++ start each) from every seed on the rows of x.

    Returns a summary: mean and std of the iterations run, the share of runs that converged within
    `max_iter` (scikit-learn's rule, `tol`), the relative std of the final inertia, the mean adjusted Rand
    index between the seeds' final partitions, the final Hungarian accuracy / mIoU against `labels` (mean
    and std); and a curve: accuracy, mIoU and inertia after each iteration of each seed.
    """
    from sklearn.metrics import adjusted_rand_score

    curve, finals = [], []
    for seed in seeds:
        scores: list[dict[str, float]] = []
        result = kmeans(x, n_classes, metric="cosine", n_init=1, max_iter=max_iter, tol=tol, seed=seed,
                        on_iteration=_recorder(scores, labels, n_classes, seed))
        for row, inertia in zip(scores, result.inertia_history, strict=True):
            row["inertia"] = inertia
        curve += scores
        finals.append((result, scores[-1]))
    results = [r for r, _ in finals]
    inertias = np.array([r.inertia for r in results])
    iterations = np.array([r.n_iter for r in results])
    ari = [adjusted_rand_score(a.labels.numpy(), b.labels.numpy()) for a, b in combinations(results, 2)]
    final_miou = np.array([s["miou"] for _, s in finals])
    summary = {
        "iterations": iterations.mean(), "iterations std": iterations.std(ddof=1) if len(seeds) > 1 else 0.0,
        "converged": float(np.mean([r.converged for r in results])),
        "inertia rel. std": inertias.std(ddof=1) / inertias.mean() if len(seeds) > 1 else 0.0,
        "ARI": float(np.mean(ari)) if ari else 1.0,
        "accuracy": float(np.mean([s["accuracy"] for _, s in finals])),
        "miou": final_miou.mean(), "miou std": final_miou.std(ddof=1) if len(seeds) > 1 else 0.0,
    }
    return summary, pd.DataFrame(curve)


def _recorder(scores: list[dict[str, float]], labels: Tensor, n_classes: int,
              seed: int) -> Callable[[int, Tensor], None]:
    """A k-means `on_iteration` callback appending the Hungarian accuracy / mIoU of each iteration."""
    keep = labels >= 0

    def record(iteration: int, assignment: Tensor) -> None:
        m = hungarian_metrics(confusion_matrix(assignment[keep], labels[keep], n_classes))
        scores.append({"seed": seed, "iteration": iteration, "accuracy": m["accuracy"], "miou": m["miou"]})

    return record


def convergence_study(cfg: SweepConfig, data: SweepData, headset: HeadSet, *,
                      progress: bool = False) -> tuple[pd.DataFrame, pd.DataFrame]:
    """`kmeans_convergence` for every representation (the raw features; STEGO, PCA, RP at
    `cfg.convergence_dims`) on one sample of validation tokens, clustered directly and scored at patch
    resolution: -> (summary per representation, per-iteration curves). Cached like the sweep."""
    seed = cfg.seeds[0]
    spec = {"config": dataclasses.asdict(cfg), "data": data.key, "heads": headset.key,
            "version": CACHE_VERSION}
    dims = cfg.convergence_dims or cfg.dims

    def compute() -> dict[str, pd.DataFrame]:
        x_train, _ = data.train_tokens(cfg.tokens_per_image, seed)
        x, y = data.val_tokens(cfg.convergence_tokens, seed)
        reducers = {k: r for k, r in sweep_reducers(cfg, headset, x_train, seed).items()
                    if k[0] == "raw" or k[1] in dims}
        summaries, curves = [], []
        for (method, dim), reducer in _progress(reducers.items(), progress, "k-means"):
            summary, curve = kmeans_convergence(reducer.transform(x), y, data.n_classes,
                                                seeds=range(cfg.convergence_seeds),
                                                max_iter=cfg.convergence_max_iter)
            summaries.append({"method": method, "dim": dim, **summary})
            curves.append(curve.assign(method=method, dim=dim))
        return {"summary": pd.DataFrame(summaries), "curves": pd.concat(curves, ignore_index=True)}

    frames = cached_frames("convergence", spec, compute)
    return frames["summary"], frames["curves"]


# ---------------------------------------------------------------------------------------------------------
# Cluster distinctness: how well the ground-truth classes separate in a representation


def _class_index(labels: Tensor) -> tuple[Tensor, int]:
    """Labels -> contiguous ids 0..k-1 (as scikit-learn's LabelEncoder) and k."""
    classes, index = torch.unique(torch.as_tensor(labels), return_inverse=True)
    if len(classes) < 2:
        raise ValueError(f"need at least 2 distinct labels, got {len(classes)}")
    return index, len(classes)


def pairwise_distances(x: Tensor, y: Tensor, metric: str = "euclidean") -> Tensor:
    """Euclidean or cosine (1 - cos) distances of every row pair: (n, D), (m, D) -> (n, m) float64."""
    x, y = x.double(), y.double()
    if metric == "cosine":
        return (1 - F.normalize(x, dim=1) @ F.normalize(y, dim=1).T).clamp(0, 2)
    if metric == "euclidean":
        squared = (x * x).sum(1, keepdim=True) - 2 * x @ y.T + (y * y).sum(1)
        return squared.clamp_min(0).sqrt()
    raise ValueError(f"unknown metric {metric!r}; choose 'euclidean' or 'cosine'")


def silhouette(x: Tensor, labels: Tensor, *, metric: str = "euclidean", chunk: int = 2048) -> float:
    """Mean silhouette (b - a) / max(a, b) over the rows of x (n, D) labelled `labels` (n,).

    a: mean distance to the other members of the own class, b: the lowest mean distance to another
    class; 0 for a member of a singleton class (scikit-learn's convention). O(n^2) distances, in chunks.
    """
    index, k = _class_index(labels)
    onehot = F.one_hot(index, k).double()                          # (n, k)
    sizes = onehot.sum(0)
    values = []
    for start in range(0, len(x), chunk):
        sums = pairwise_distances(x[start:start + chunk], x, metric) @ onehot   # (chunk, k)
        own = index[start:start + chunk]
        own_size = sizes[own]
        a = sums.gather(1, own[:, None])[:, 0] / (own_size - 1).clamp_min(1)
        mean_other = (sums / sizes).scatter(1, own[:, None], float("inf"))
        b = mean_other.min(1).values
        s = (b - a) / torch.maximum(a, b).clamp_min(1e-300)
        values.append(torch.where(own_size > 1, s, torch.zeros_like(s)))
    return torch.cat(values).mean().item()


def davies_bouldin(x: Tensor, labels: Tensor) -> float:
    """Davies-Bouldin index (lower = more distinct): the mean over classes of the worst ratio
    (s_i + s_j) / |c_i - c_j|, s = mean distance of a class's members to its centroid c."""
    index, k = _class_index(labels)
    x = x.double()
    onehot = F.one_hot(index, k).double()
    centroids = (onehot.T @ x) / onehot.sum(0)[:, None]
    spread = (onehot.T @ (x - centroids[index]).norm(dim=1)) / onehot.sum(0)
    separation = pairwise_distances(centroids, centroids).fill_diagonal_(0)
    if not spread.abs().gt(1e-8).any() or not separation.abs().gt(1e-8).any():   # as scikit-learn
        return 0.0
    separation = separation.masked_fill(separation == 0, torch.inf)   # the diagonal (and equal centroids)
    return ((spread[:, None] + spread[None, :]) / separation).max(1).values.mean().item()


def calinski_harabasz(x: Tensor, labels: Tensor) -> float:
    """Calinski-Harabasz index (higher = more distinct): between-class over within-class dispersion,
    each divided by its degrees of freedom (k - 1 and n - k)."""
    index, k = _class_index(labels)
    x = x.double()
    onehot = F.one_hot(index, k).double()
    sizes = onehot.sum(0)
    centroids = (onehot.T @ x) / sizes[:, None]
    between = (sizes * ((centroids - x.mean(0)) ** 2).sum(1)).sum()
    within = ((x - centroids[index]) ** 2).sum()
    if within == 0:
        return 1.0
    return (between * (len(x) - k) / (within * (k - 1))).item()


def class_cosine_distances(x: Tensor, labels: Tensor, n_classes: int) -> Tensor:
    """Mean cosine distance (1 - cos) between the members of every two classes: -> (K, K) float64.

    Off the diagonal: over all pairs (i in c, j in c'); on it: over pairs of distinct members. From the
    class sums of the unit rows, O(n D): sum over pairs of cos(i, j) = <sum_c u_i, sum_c' u_j>. NaN for a
    class with too few members.
    """
    labels = torch.as_tensor(labels)
    keep = labels >= 0
    units = F.normalize(x[keep].double(), dim=1)
    onehot = F.one_hot(labels[keep].long(), n_classes).double()
    sums, sizes = onehot.T @ units, onehot.sum(0)
    dots = sums @ sums.T                                            # sum of cos over ordered pairs
    pairs = sizes[:, None] * sizes[None, :]
    dots.diagonal().sub_(sizes)                                     # drop the n_c self-pairs (cos = 1)
    pairs.diagonal().sub_(sizes)
    return 1 - dots / pairs


def intra_inter_ratio(x: Tensor, labels: Tensor) -> float:
    """Mean cosine distance of same-class pairs over that of different-class pairs (lower = more distinct),
    pooled over all pairs of distinct rows."""
    index, k = _class_index(labels)
    units = F.normalize(x.double(), dim=1)
    onehot = F.one_hot(index, k).double()
    sums, sizes = onehot.T @ units, onehot.sum(0)
    dots, pairs = sums @ sums.T, sizes[:, None] * sizes[None, :]
    same_cos, same_pairs = dots.trace() - sizes.sum(), pairs.trace() - sizes.sum()
    other_cos, other_pairs = dots.sum() - dots.trace(), pairs.sum() - pairs.trace()
    return ((1 - same_cos / same_pairs) / (1 - other_cos / other_pairs)).item()


DISTINCTNESS = ("silhouette", "davies_bouldin", "calinski_harabasz", "intra_inter")


def distinctness(x: Tensor, labels: Tensor) -> dict[str, float]:
    """All four metrics on the rows of x with labels >= 0, after L2-normalising the rows (the geometry
    the cosine cluster probe sees): silhouette with cosine distance, Davies-Bouldin and Calinski-Harabasz
    (Euclidean on the unit rows), and the intra/inter cosine-distance ratio."""
    labels = torch.as_tensor(labels)
    keep = labels >= 0
    units, labels = F.normalize(x[keep].double(), dim=1), labels[keep]
    return {"silhouette": silhouette(units, labels, metric="cosine"),
            "davies_bouldin": davies_bouldin(units, labels),
            "calinski_harabasz": calinski_harabasz(units, labels),
            "intra_inter": intra_inter_ratio(units, labels)}


def distinctness_study(cfg: SweepConfig, data: SweepData, headsets: dict[int, HeadSet], *,
                       progress: bool = False) -> pd.DataFrame:
    """`distinctness` of every representation and seed on one labelled sample of `cfg.distinct_tokens`
    validation tokens: columns method, dim, seed and the metrics. Cached like the sweep."""
    spec = {"config": dataclasses.asdict(cfg), "data": data.key,
            "heads": {s: headsets[s].key for s in cfg.seeds}, "version": CACHE_VERSION}

    def compute() -> pd.DataFrame:
        x, y = data.val_tokens(cfg.distinct_tokens, cfg.seeds[0])
        rows = []
        for seed in cfg.seeds:
            x_train, _ = data.train_tokens(cfg.tokens_per_image, seed)
            reducers = sweep_reducers(cfg, headsets[seed], x_train, seed)
            for (method, dim), reducer in _progress(reducers.items(), progress, f"distinctness, seed {seed}"):
                scores = distinctness(reducer.transform(x), y)
                rows.append({"method": method, "dim": dim, "seed": seed, **scores})
        return pd.DataFrame(rows)

    return cached_frames("distinctness", spec, lambda: {"table": compute()})["table"]


# ---------------------------------------------------------------------------------------------------------
# Helpers


def cached_frames(name: str, spec: Any,
                  compute: Callable[[], dict[str, pd.DataFrame]]) -> dict[str, pd.DataFrame]:
    """DataFrames computed once and kept as CSV files under <cache>/analysis, named by a hash of `spec`.

    Each file is written atomically, and the frames are always returned as read back from disk, so the
    first and every later call give identical values.
    """
    folder = cache_dir() / "analysis"
    stem = f"{name}-{_digest(spec)}"
    index = folder / f"{stem}.json"          # written last: lists the parts of a complete set
    if not index.is_file():
        frames = compute()
        folder.mkdir(parents=True, exist_ok=True)
        for part, frame in frames.items():
            _write_atomic(folder / f"{stem}-{part}.csv", frame.to_csv(index=False))
        _write_atomic(index, json.dumps({"spec": spec, "parts": list(frames)}, default=str))
    parts = json.loads(index.read_text())["parts"]
    return {part: pd.read_csv(folder / f"{stem}-{part}.csv") for part in parts}


def _write_atomic(path: Path, text: str) -> None:
    write_atomic(path, lambda tmp: tmp.write_text(text))


def _progress(items, enabled: bool, desc: str):
    if not enabled:
        return items
    from tqdm.auto import tqdm

    return tqdm(list(items), desc=desc, leave=False)


def sweep_inputs(profile, backbone, *, fit_images: int | None = None,
                 device: torch.device | str | None = None, progress: bool = False):
    """The training source of the sweep's heads and the `SweepData` of a profile: -> (source, data).

    offline: cached features and KNN lists (extracted once); paper: KNN lists only, the backbone runs
    on every training batch and on every pass over the token samples and the validation set.
    """
    from stego_lite.features import cached_features
    from stego_lite.knn import FeatureSource, ImageSource, nearest_neighbors

    train_set, val_set = profile.train_set(), profile.val_set()
    n_classes = len(val_set.classes)
    if profile.name == "offline":
        source = FeatureSource.from_cache(backbone, train_set, device=device, progress=progress)
        data = SweepData.from_features(cached_features(backbone, train_set, device=device),
                                       cached_features(backbone, val_set, device=device), n_classes)
        return source, data
    nns = nearest_neighbors(backbone, train_set, device=device, progress=progress)
    data = SweepData.from_backbone(backbone, train_set, val_set, n_classes, fit_images=fit_images,
                                   device=device)
    return ImageSource(backbone, train_set, nns), data


def mean_curves(curves: pd.DataFrame, value: str = "miou") -> pd.DataFrame:
    """Mean over seeds of `value` after each k-means iteration, a run that stopped early keeping its final
    value: -> columns method, dim, iteration, value."""
    last = int(curves.iteration.max())
    frames = []
    for (method, dim, _), run in curves.groupby(["method", "dim", "seed"], sort=False):
        full = run.set_index("iteration")[value].reindex(range(1, last + 1)).ffill()
        frames.append(pd.DataFrame({"method": method, "dim": dim, "iteration": full.index,
                                    value: full.values}))
    return pd.concat(frames).groupby(["method", "dim", "iteration"], sort=False)[value].mean().reset_index()
