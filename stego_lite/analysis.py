"""Why STEGO works, measured: dimension reduction and cluster distinctness (Koenig et al. 2023, ref. §8).

    cfg = p.sweep_config()                                # grid of D, seeds, head budget, sample sizes
    source, data = sweep_inputs(p, backbone, fit_images=cfg.fit_images)   # training source, SweepData
    heads = {s: sweep_heads(cfg, source, s) for s in cfg.seeds}   # STEGO heads for every D, cached
    table = dimension_sweep(cfg, data, heads)             # tidy: method, dim, seed, probe, accuracy, miou
    summary, curves = convergence_study(cfg, data, heads[cfg.seeds[0]])   # k-means per representation
    scores = distinctness_study(cfg, data, heads)         # silhouette, Davies-Bouldin, ... per representation

This module runs the studies; each concept they share lives in its own module: the representations
(raw features; STEGO, PCA and RP at every D) in `reducers`, the post hoc probes and their pixel-resolution
scores in `token_probes`, the distinctness metrics in `cluster_quality`, and the sweep's STEGO heads, all
D trained in one loop, in `train_heads`. Every representation is fitted on the same token sample of the
training set and scored the same way; results are cached as CSV tables keyed by the settings, the data
and the heads. The names of those modules stay importable from here.
"""
from __future__ import annotations

import dataclasses
import io
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from itertools import combinations
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor

if TYPE_CHECKING:
    from stego_lite.profiles import SweepConfig

# The studies' building blocks live in modules of their own; `noqa: F401` marks names re-exported here.
from stego_lite.cluster_quality import (  # noqa: F401
    DISTINCTNESS, calinski_harabasz, class_cosine_distances, davies_bouldin, distinctness, intra_inter_ratio,
    more_distinct, pairwise_distances, silhouette,
)
from stego_lite import cache
from stego_lite.env import cache_dir
from stego_lite.metrics import confusion_matrix, hungarian_metrics
from stego_lite.probes import kmeans
from stego_lite.progress import progress as progress_bar
from stego_lite.reducers import (  # noqa: F401
    PCA, HeadReducer, Identity, RandomProjection, Reducer, patch_labels, tokens, transform_map,
)
from stego_lite.token_probes import (  # noqa: F401
    TokenProbes, fit_linear_probe, fit_probes, score_many, score_probes,
)
from stego_lite.train import TrainConfig, build_head  # noqa: F401
from stego_lite.cache import digest  # noqa: F401
from stego_lite.train_heads import CACHE_VERSION, HeadSet, sweep_heads, train_heads  # noqa: F401



def __getattr__(name: str) -> Any:
    # The sweep settings are part of each profile (stego_lite.profiles); kept importable here.
    from stego_lite import profiles

    if name == "SweepConfig":
        return profiles.SweepConfig
    if name == "SWEEPS":
        return {profile.name: profile.sweep for profile in profiles.PROFILES.values()}
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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
# The representations of the sweep (`reducers`)


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
            rows += probe_rows(cfg, sweep_reducers(cfg, headsets[seed], x, seed), x, y, data, seed,
                               progress=progress)
        return pd.DataFrame(rows, columns=SWEEP_COLUMNS)

    return cached_frames("sweep", spec, lambda: {"table": compute()})["table"]


def probe_rows(cfg: SweepConfig, reducers: dict[tuple[str, int], Reducer], x: Tensor, y: Tensor,
               data: SweepData, seed: int, *, progress: bool = False) -> list[dict[str, Any]]:
    """Both probes fitted on the tokens (x, y) in every representation of `reducers` ((method, dim) ->
    reducer) and scored on the validation pixels in one pass: rows with the SWEEP_COLUMNS."""
    fitted = {key: (reducer, fit_probes(reducer.transform(x), y, data.n_classes, seed=seed,
                                        n_init=cfg.kmeans_n_init, linear_max_iter=cfg.linear_max_iter))
              for key, reducer in _progress(reducers.items(), progress, f"sweep, seed {seed}")}
    return [{"method": method, "dim": dim, "seed": seed, "probe": probe,
             "accuracy": scores[f"{probe} accuracy"], "miou": scores[f"{probe} miou"]}
            for (method, dim), scores in score_many(fitted, data).items()   # one pass over the val set
            for probe in ("cluster", "linear")]


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
# Cluster distinctness of every representation (the metrics are `cluster_quality`'s)


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
    """DataFrames computed once and kept in the keyed cache under <cache>/analysis (as CSV text).

    The frames are always returned as read back from their CSV text, so the first and every later call
    give identical values.
    """
    def as_csv() -> dict[str, str]:
        return {part: frame.to_csv(index=False) for part, frame in compute().items()}

    path = cache.keyed_path(cache_dir() / "analysis", name, spec)
    texts = cache.load_or_compute(path, spec, as_csv, version=CACHE_VERSION)
    return {part: pd.read_csv(io.StringIO(text)) for part, text in texts.items()}


def _progress(items, enabled: bool, desc: str):
    return progress_bar(list(items), enabled=enabled, desc=desc, leave=False)


def sweep_inputs(profile, backbone, *, fit_images: int | None = None,
                 device: torch.device | str | None = None, progress: bool = False):
    """The training source of the sweep's heads and the `SweepData` of a profile: -> (source, data).

    With the profile's `cache_features` (offline): cached features and KNN lists, extracted once; without
    (paper): KNN lists only, the backbone runs on every training batch and on every pass over the token
    samples and the validation set.
    """
    from stego_lite.features import cached_features

    train_set, val_set = profile.train_set(), profile.val_set()
    n_classes = len(val_set.classes)
    source = profile.training_source(backbone, train_set, device=device, progress=progress)
    if profile.preset.cache_features:   # the features fit in memory
        data = SweepData.from_features(cached_features(backbone, train_set, device=device),
                                       cached_features(backbone, val_set, device=device), n_classes)
    else:
        data = SweepData.from_backbone(backbone, train_set, val_set, n_classes, fit_images=fit_images,
                                       device=device)
    return source, data


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
