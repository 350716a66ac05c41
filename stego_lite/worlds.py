"""When does STEGO's reduction help? Four SynthStuff worlds and their preconditions (chapter 04).

    studies = study_all(profiles.WORLDS)      # every world: preconditions, then its sweep (cached)
    st = studies["world-scenes"]              # SynthStuff with `scenes` on, texture_bank features
    st.preconditions                          # measured before any head is trained
    gaps = paired_gaps(st.table)              # STEGO - PCA, cluster probe, seed by seed
    decision(gaps)                            # the pre-registered reading per D; switch_effects: per switch

    # one world by hand
    source, data = analysis.sweep_inputs(world, backbone)
    pre = preconditions(world, source, data)  # raw / PCA-D probes, variance shares, overlaps, shifts
    cfg = world_sweep(world, pre)             # the world's sweep, its shifts set by the rule

Koenig et al. found STEGO's head far ahead of PCA at equal D on COCO (DINO ViT-B/8); on SynthStuff with
`texture_bank` it is behind. Two properties of natural data may make the difference, and each is a switch
of SynthStuff (`data.SynthStuffConfig`), so the four worlds are a 2 x 2 design:

(a) `scenes`: image neighbours share classes (a beach has sand, sea and sky), which STEGO's KNN term feeds
    on. Measured as the class-histogram overlap of each image with its nearest images (the KNN term's
    positives) against random pairs of images.
(b) `nuisance`: the main directions of variance do not follow the classes (per-image texture scale,
    light, colour, blur and noise). Measured as the share of the variance in the first D principal
    components, the share of the first three components' variance that the class explains, and k-means on
    PCA-D against k-means on the raw features.

Each world's heads use the synthstuff preset's loss with shifts set by one rule, applied mechanically
(`rule_shifts`): each shift is the midpoint between the medians of the feature correlation F of
same-label and of different-label point pairs, as the loss samples them, on training images only.
"""
from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd
import torch
from torch import Tensor

from stego_lite import cache, published
from stego_lite.analysis import (
    SweepData, cached_frames, dimension_sweep, distinctness_study, probe_rows, sweep_inputs,
)
from stego_lite.env import cache_dir
from stego_lite.files import write_atomic
from stego_lite.knn import NUM_NEIGHBORS, sample_positives
from stego_lite.loss import (
    LossConfig, feature_correlation, partner_indices, random_coords, same_label, sample_labels, sample_points,
)
from stego_lite.reducers import PCA, Identity
from stego_lite.train import EpochOrder
from stego_lite.train_heads import sweep_heads
from stego_lite.workers import process_pool

if TYPE_CHECKING:
    from stego_lite.profiles import Profile, SweepConfig

CACHE_VERSION = 1    # bump when the preconditions change
TERMS = ("self", "knn", "random")


# ---------------------------------------------------------------------------------------------------------
# (a) Do image neighbours share classes?


def class_histograms(labels: Tensor, n_classes: int) -> Tensor:
    """Each image's share of pixels per class (ignored pixels left out): (N, H, W) -> (N, K) float64."""
    flat = labels.reshape(len(labels), -1).long()
    counts = torch.stack([(flat == k).sum(1) for k in range(n_classes)], dim=1).double()
    return counts / counts.sum(1, keepdim=True).clamp_min(1)


def histogram_overlap(hist: Tensor, nns: Tensor, *, num_neighbors: int = NUM_NEIGHBORS) -> tuple[float, float]:
    """Mean overlap sum_k min(h_i[k], h_j[k]) of each image i with its nearest images j (ranks
    1..num_neighbors of `nns`, the KNN term's positives), and over all pairs of distinct images:
    (N, K), (N, k) -> (KNN pairs, random pairs)."""
    neighbours = hist[nns[:, 1:num_neighbors + 1]]                                  # (N, n, K)
    knn = torch.minimum(hist[:, None], neighbours).sum(-1).mean()
    overlap = torch.stack([torch.minimum(h, hist).sum(-1) for h in hist])          # (N, N)
    n = len(hist)
    pairs = (overlap.sum() - overlap.diagonal().sum()) / (n * (n - 1))
    return float(knn), float(pairs)


# ---------------------------------------------------------------------------------------------------------
# (b) Do the main directions of variance follow the classes?


def class_variance_share(x: Tensor, y: Tensor, dim: int = 3) -> float:
    """Share of the variance of the first `dim` principal components of standardised tokens x (N, C) that
    the class y (N,) explains: between-class over total sum of squares (-1 labels left out)."""
    z = PCA(dim).fit(x).transform(x).double()[y >= 0]
    y = y[y >= 0]
    z = z - z.mean(0)
    between = sum(float((y == k).sum()) * z[y == k].mean(0).square().sum() for k in y.unique())
    return float(between / z.square().sum())


# ---------------------------------------------------------------------------------------------------------
# The shift rule


def feature_agreement(source, loss: LossConfig, *, batches: int = 20, batch_size: int = 16,
                      seed: int = 0) -> dict[str, tuple[Tensor, Tensor]]:
    """F of the loss's point pairs on training images, split by label agreement.

    Per batch: random anchor points of each image, paired with points of the same image ("self"), of a
    KNN positive ("knn", ranks 1..7) and of a random other image of the batch ("random"), F as the loss
    computes it (`loss.feature_correlation`, pointwise as `loss.pointwise`): -> term -> (F of same-label
    pairs, F of different-label pairs), both 1-d. `source` needs labels (a `FeatureSource`).
    """
    if getattr(source, "labels", None) is None:
        raise ValueError("the shift rule needs the training labels: pass a FeatureSource built with labels "
                         "(FeatureSource.from_cache has them)")
    generator = torch.Generator().manual_seed(seed)
    order = EpochOrder(len(source), batch_size, generator)
    found: dict[str, tuple[list[Tensor], list[Tensor]]] = {t: ([], []) for t in TERMS}
    for _ in range(batches):
        indices = order.next()
        positives = sample_positives(source.nns, indices, generator=generator)
        batch = source.batch(indices, positives, torch.device("cpu"))
        grid = tuple(batch.feats.shape[-2:])
        anchor_at = random_coords(len(indices), loss.n_points, generator=generator)
        partner_at = random_coords(len(indices), loss.n_points, generator=generator)
        perm = partner_indices(len(indices), generator=generator)
        anchors = sample_points(batch.feats, anchor_at)
        anchor_labels = sample_labels(batch.label, anchor_at, grid)
        partners = {"self": (batch.feats, batch.label, anchor_at),
                    "knn": (batch.feats_pos, source.labels[positives].long(), partner_at),
                    "random": (batch.feats[perm], batch.label[perm], partner_at)}
        for term, (feats, labels, at) in partners.items():
            f = feature_correlation(anchors, sample_points(feats, at), pointwise=loss.pointwise)
            same = same_label(anchor_labels, sample_labels(labels, at, grid))
            found[term][0].append(f[same == 1])
            found[term][1].append(f[same == 0])
    return {t: (torch.cat(same), torch.cat(different)) for t, (same, different) in found.items()}


def rule_shifts(source, loss: LossConfig, **kwargs) -> pd.DataFrame:
    """The shift rule: per term, the medians of F over same-label and different-label pairs
    (`feature_agreement`, training images only) and their midpoint, rounded to 0.01, as the shift:
    -> columns term, same-label median, different-label median, shift."""
    rows = []
    for term, (same, different) in feature_agreement(source, loss, **kwargs).items():
        a, b = float(same.median()), float(different.median())
        rows.append({"term": term, "same-label median": a, "different-label median": b,
                     "shift": round((a + b) / 2, 2)})
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------------------------------------------
# Preconditions, per world, before any head is trained


def preconditions(world: Profile, source, data: SweepData, *, seed: int | None = None) -> dict[str, pd.DataFrame]:
    """What a world offers STEGO and PCA, measured before any head is trained; cached.

    On the sweep's token sample of the training set (its first seed): k-means (the cluster probe) and the
    linear probe on the raw features and on PCA-D for every D of the sweep, scored on the validation set;
    the share of the variance in the first D components; the share of PC1-3's variance the class explains;
    the class-histogram overlap of KNN pairs and of random pairs (training images); the rule's shifts.
    Returns {"summary": one row, "probes": method, dim, probe, miou, "shifts": `rule_shifts`}.
    """
    cfg = world.sweep_config()
    seed = cfg.seeds[0] if seed is None else seed
    spec = {"config": dataclasses.asdict(cfg), "data": data.key, "source": source.key, "seed": seed,
            "loss": dataclasses.asdict(world.preset.loss), "version": CACHE_VERSION}

    def compute() -> dict[str, pd.DataFrame]:
        x, y = data.train_tokens(cfg.tokens_per_image, seed)
        pca = PCA().fit(x)
        reducers = {("raw", x.shape[1]): Identity().fit(x), **{("PCA", d): pca.with_dim(d) for d in cfg.dims}}
        probes = pd.DataFrame(probe_rows(cfg, reducers, x, y, data, seed))[["method", "dim", "probe", "miou"]]
        knn, pairs = histogram_overlap(class_histograms(source.labels, data.n_classes), source.nns)
        cumulative = pca.explained_variance_ratio.cumsum()
        summary = {"world": world.name, "overlap KNN": knn, "overlap random": pairs,
                   "class share PC1-3": class_variance_share(x, y, 3),
                   **{f"variance D={d}": float(cumulative[d - 1]) for d in cfg.dims}}
        return {"summary": pd.DataFrame([summary]), "probes": probes,
                "shifts": rule_shifts(source, world.preset.loss, seed=seed)}

    return cached_frames("preconditions", spec, compute)


def world_sweep(world: Profile, pre: dict[str, pd.DataFrame], **overrides) -> SweepConfig:
    """The world's sweep settings with the rule's shifts (from `preconditions`), then `overrides`."""
    shifts = pre["shifts"].set_index("term").loc[list(TERMS), "shift"]
    return world.sweep_config(loss_shifts=tuple(float(s) for s in shifts), **overrides)


def precondition_table(pres: dict[str, dict[str, pd.DataFrame]]) -> pd.DataFrame:
    """One row per world (name -> `preconditions`), then COCO-Stuff with DINO where Koenig et al. give the
    same quantity (a labelled citation; NaN where they do not): mIoU in %, shares and overlaps in [0, 1]."""
    rows = []
    for name, pre in pres.items():
        probes = pre["probes"]
        cluster = probes[probes.probe == "cluster"].set_index(["method", "dim"]).miou
        raw = probes[probes.method == "raw"].set_index("probe").miou
        row = {"world": name, "raw k-means": raw["cluster"], "raw linear": raw["linear"]}
        row.update({f"PCA-{d} k-means": m for (method, d), m in cluster.items() if method == "PCA"})
        row.update(pre["summary"].drop(columns="world").iloc[0].to_dict())
        row["overlap gap"] = row["overlap KNN"] - row["overlap random"]
        rows.append(row)
    coco = published.KOENIG_CHECKPOINTS.set_index("dataset").loc["COCO-Stuff-27"]
    pca = published.KOENIG_DIMENSIONS_COCO.set_index("D")["PCA cluster"]
    cited = {"world": "COCO-Stuff-27, DINO ViT-B/8 (published)", "raw k-means": coco["DINO cluster"],
             "raw linear": coco["DINO linear"]}
    cited.update({f"PCA-{d} k-means": m for d, m in pca.items() if f"PCA-{d} k-means" in rows[0]})
    return pd.DataFrame([*rows, cited])


PRECONDITIONS_SOURCE = ("COCO row, published: Koenig, Schambach, Otterbach 2023, Fig. 4 (COCO-Stuff-27, DINO "
                        "ViT-B/8, mIoU without CRF; raw DINO and PCA-D), read off the figure (about +-0.5); they "
                        "give no numbers for the other columns")


# ---------------------------------------------------------------------------------------------------------
# The verdict: STEGO against PCA, seed by seed


def paired_gaps(table: pd.DataFrame, *, a: str = "STEGO", b: str = "PCA", probe: str = "cluster",
                dims: Sequence[int] | None = None) -> pd.DataFrame:
    """`a` minus `b` mIoU per D, paired by seed (same token sample and probe seed): mean, sample std, min,
    max over seeds and the number of seeds -> columns dim, gap, gap std, gap min, gap max, seeds."""
    rows = table[table.probe == probe].pivot_table(index=["dim", "seed"], columns="method", values="miou")
    gap = (rows[a] - rows[b]).dropna().rename("gap").reset_index()
    if dims is not None:
        gap = gap[gap.dim.isin(dims)]
    out = gap.groupby("dim").gap.agg(["mean", "std", "min", "max", "count"]).reset_index()
    out.columns = ["dim", "gap", "gap std", "gap min", "gap max", "seeds"]
    return out


# ---------------------------------------------------------------------------------------------------------
# A world's study, and all of them in parallel processes


@dataclass
class WorldStudy:
    """A world's preconditions, its sweep settings (shifts by the rule) and its sweep table (None if not run)."""

    world: Profile
    preconditions: dict[str, pd.DataFrame]
    config: SweepConfig
    table: pd.DataFrame | None
    head_seconds: float        # training time of the heads of every seed (when they were trained)
    distinct: pd.DataFrame | None = None   # chapter 05's distinctness indices (None if not asked for)


@contextmanager
def one_thread() -> Iterator[None]:
    """torch on one thread inside: the steps are small, so threads buy little, and with a fixed count the
    results are the same on every machine, whichever process computes them."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def study(world: Profile, *, sweep: bool = True, distinct: bool = False, backbone=None,
          device=None) -> WorldStudy:
    """The world's preconditions; with `sweep` or `distinct`, its heads, and with them the sweep table
    (`sweep`) and the distinctness indices of every representation (`distinct`, chapter 05's
    `analysis.distinctness_study`); everything cached."""
    with one_thread():
        backbone = backbone if backbone is not None else world.load_backbone(device)
        source, data = sweep_inputs(world, backbone, device=device)
        pre = preconditions(world, source, data)
        cfg = world_sweep(world, pre)
        if not (sweep or distinct):
            return WorldStudy(world, pre, cfg, None, 0.0)
        headsets = {s: sweep_heads(cfg, source, s, device=device) for s in cfg.seeds}
        table = dimension_sweep(cfg, data, headsets) if sweep else None
        distinct_table = distinctness_study(cfg, data, headsets) if distinct else None
    return WorldStudy(world, pre, cfg, table, sum(h.seconds for h in headsets.values()), distinct_table)


def _study_by_name(name: str, sweep: bool, distinct: bool) -> None:
    """Worker: one registered world's study, for its side effect (the cache)."""
    from stego_lite.profiles import get_world

    study(get_world(name), sweep=sweep, distinct=distinct)


def study_all(worlds: Mapping[str, Profile], *, sweep: bool = True, distinct: bool = False,
              workers: int | None = None, device=None) -> dict[str, WorldStudy]:
    """`study` of every world (name -> profile). Their data are generated first; then, with `workers` > 1
    (default: the CPU count, at most one per world), the registered worlds not studied before are computed
    in that many processes on one thread each, and everything is read back here from the cache."""
    from stego_lite.profiles import WORLDS

    for world in worlds.values():      # generation has its own processes
        world.train_set(), world.val_set()
    names = [n for n, w in worlds.items() if WORLDS.get(n) == w and not _done(w, sweep, distinct).exists()]
    workers = min(os.cpu_count() or 1, len(names)) if workers is None else workers
    if workers > 1 and len(names) > 1:
        with process_pool(workers) as pool:
            list(pool.map(_study_by_name, names, [sweep] * len(names), [distinct] * len(names)))
    studies = {name: study(world, sweep=sweep, distinct=distinct, device=device)
               for name, world in worlds.items()}
    for world in worlds.values():
        write_atomic(_done(world, sweep, distinct), lambda tmp: tmp.write_text("read back from the cache\n"))
    return studies


def _done(world: Profile, sweep: bool, distinct: bool = False) -> Path:
    """A marker that `study_all` read this world's study back once: later calls skip the worker processes
    (their start costs seconds); if a cached result has gone meanwhile, `study` simply recomputes it here."""
    spec = {"world": repr(world), "sweep": sweep, "version": CACHE_VERSION}
    if distinct:
        spec["distinct"] = True
    return cache.keyed_path(cache_dir() / "analysis", f"studied-{world.name}", spec, ".done")


def decision(gaps: pd.DataFrame) -> pd.Series:
    """The pre-registered reading of `paired_gaps` per D: 'reproduced' if STEGO is ahead for every seed,
    'reversed' if behind for every seed, 'undecided' otherwise."""
    return pd.Series(["reproduced" if lo > 0 else "reversed" if hi < 0 else "undecided"
                      for lo, hi in zip(gaps["gap min"], gaps["gap max"])], index=gaps.dim, name="decision")


def switch_effects(gaps: Mapping[tuple[bool, bool], pd.DataFrame]) -> pd.DataFrame:
    """The pre-registered effect of each switch on the STEGO - PCA gap, the other switch held: per switch,
    other switch state and D, the mean gap off and on, their difference and whether it exceeds the larger
    of the two seed standard deviations. `gaps` maps (scenes, nuisance) to `paired_gaps`."""
    rows = []
    for switch, index in (("scenes", 0), ("nuisance", 1)):
        for other in (False, True):
            off, on = [gaps[(v, other) if index == 0 else (other, v)].set_index("dim") for v in (False, True)]
            for d in off.index:
                change = on.gap[d] - off.gap[d]
                noise = max(off["gap std"][d], on["gap std"][d])
                rows.append({"switch": switch, "other on": other, "dim": d, "gap off": off.gap[d],
                             "gap on": on.gap[d], "change": change, "beyond noise": abs(change) > noise})
    return pd.DataFrame(rows)


def switches_of(world: Profile) -> tuple[bool, bool]:
    """A world's (scenes, nuisance) switches, read from its data."""
    config = world.preset.data.resolved()
    return config.scenes, config.nuisance


def class_shares(dataset) -> pd.Series:
    """Share of the labelled pixels of each class over a dataset's label maps, in %: name -> share."""
    counts = sum(torch.bincount(torch.as_tensor(dataset.load(i)[1]).flatten().clamp_min(-1) + 1,
                                minlength=len(dataset.classes) + 1) for i in range(len(dataset)))
    counts = counts[1:].double()   # index 0 counted the ignored pixels
    return pd.Series((100 * counts / counts.sum()).numpy(), index=list(dataset.classes))
