"""Time per stage of the mechanism chapters' sweep (stego_lite.analysis), cold, in a scratch cache.

    python benchmarks/sweep.py                   # offline profile, its SweepConfig
    python benchmarks/sweep.py --steps 100       # another head budget
    python benchmarks/sweep.py --compare-heads   # also: the heads trained one by one (train.train)
    python benchmarks/sweep.py --real-cache --preset-runs   # warm; and the preset runs under the same probes

`--preset-runs` scores the training chapter's preset runs (`evaluate.train_model`, e.g. D = 16, 300 x 16;
read back or trained) with the sweep's probes, beside PCA and RP at the same D: is the sweep's small head
budget what decides STEGO vs PCA? The scratch cache links the existing feature/KNN caches (features are
assumed extracted, as the chapters assume), so heads, tables and studies are all computed from scratch.
Prints the seconds of each stage, the machine load, and the cluster / linear mIoU of each method at each D
(mean over seeds).
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import tempfile
import time
from pathlib import Path

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="offline")
    parser.add_argument("--steps", type=int, default=None, help="override the sweep heads' iterations")
    parser.add_argument("--batch", type=int, default=None, help="override the sweep heads' batch size")
    parser.add_argument("--seeds", type=int, default=None, help="number of seeds (0, 1, ...)")
    parser.add_argument("--real-cache", action="store_true",
                        help="use the real cache (warm) instead of a scratch one")
    parser.add_argument("--preset-runs", action="store_true",
                        help="also score the preset runs (train_model) of each seed with the sweep's probes")
    parser.add_argument("--compare-heads", action="store_true",
                        help="also train the heads of one seed one by one with train.train")
    args = parser.parse_args()

    from stego_lite import env
    real_cache = env.cache_dir()
    scratch = real_cache
    if not args.real_cache:
        scratch = Path(tempfile.mkdtemp(prefix="stego-sweep-bench-"))
        for name in ("features", "knn", "synthstuff", "data"):
            if (real_cache / name).exists():
                (scratch / name).symlink_to(real_cache / name)
        os.environ[env.CACHE_ENV] = str(scratch)

    import stego_lite as sl
    from stego_lite import analysis as A

    overrides = {}
    if args.steps:
        overrides["head_steps"] = args.steps
    if args.batch:
        overrides["head_batch"] = args.batch
    if args.seeds:
        overrides["seeds"] = tuple(range(args.seeds))
    cfg = A.SweepConfig.for_profile(args.profile, **overrides)
    print(f"{cfg}\ntorch threads {torch.get_num_threads()}, load average {os.getloadavg()[0]:.1f}, "
          f"scratch cache {scratch}")
    times: dict[str, float] = {}

    def stage(name: str, fn):
        start = time.perf_counter()
        out = fn()
        times[name] = time.perf_counter() - start
        print(f"{name:34s} {times[name]:7.1f} s   (load {os.getloadavg()[0]:.1f})", flush=True)
        return out

    p = sl.profiles.get_profile(args.profile)
    backbone = sl.backbone.load_backbone(p.backbone)
    train_set, val_set = p.train_set(), p.val_set()
    source = stage("features + KNN (cached)", lambda: sl.train.FeatureSource.from_cache(backbone, train_set))
    data = stage("sweep data", lambda: A.SweepData.from_features(
        sl.features.cached_features(backbone, train_set), sl.features.cached_features(backbone, val_set),
        len(val_set.classes)))
    headsets = {s: stage(f"heads {list(cfg.dims)}, seed {s}", lambda s=s: A.sweep_heads(cfg, source, s))
                for s in cfg.seeds}
    stage("explained variance", lambda: A.explained_variance(data, cfg))
    table = stage("dimension sweep (probes)", lambda: A.dimension_sweep(cfg, data, headsets))
    stage("k-means convergence", lambda: A.convergence_study(cfg, data, headsets[cfg.seeds[0]]))
    stage("distinctness", lambda: A.distinctness_study(cfg, data, headsets))
    print(f"{'total':34s} {sum(times.values()):7.1f} s")
    if args.compare_heads:
        config = cfg.head_config(cfg.seeds[0])
        stage("heads one by one (train.train)", lambda: [
            sl.train.train(dataclasses.replace(config, dim=d), source, progress=False) for d in cfg.dims])
    summary = A.summarize(table, ["probe", "method", "dim"], ["miou"])
    print(summary.pivot_table(index="dim", columns=["probe", "method"], values="miou").round(1).to_string())
    if args.preset_runs:
        preset_runs(cfg, p, backbone, source, data, train_set)


def preset_runs(cfg, p, backbone, source, data, train_set) -> None:
    """The preset heads (train_model, as the training and evaluation chapters train them) under the sweep's
    probes, beside PCA and RP at the same D fitted on the same token sample."""
    import pandas as pd

    import stego_lite as sl
    from stego_lite import analysis as A

    rows = []
    for seed in cfg.seeds:
        config = sl.train.TrainConfig.from_preset(p.loss_preset, seed=seed)
        start = time.perf_counter()
        model, _ = sl.evaluate.train_model(config, backbone, source, train_set.classes)
        seconds = time.perf_counter() - start
        x, y = data.train_tokens(cfg.tokens_per_image, seed)
        reducers = {"STEGO (preset)": A.HeadReducer(model.head), "PCA": A.PCA(config.dim).fit(x),
                    "RP": A.RandomProjection(config.dim, seed=seed).fit(x)}
        for name, reducer in reducers.items():
            probes = A.fit_probes(reducer.transform(x), y, data.n_classes, seed=seed,
                                  n_init=cfg.kmeans_n_init, linear_max_iter=cfg.linear_max_iter)
            scores = A.score_probes(reducer, probes, data)
            rows.append({"method": name, "seed": seed, **scores})
        print(f"preset run seed {seed} (D = {config.dim}, {config.steps} x {config.batch_size}): "
              f"{seconds:.1f} s")
    table = pd.DataFrame(rows).groupby("method").agg(["mean", "std"]).drop(columns="seed").round(1)
    print(table.to_string())


if __name__ == "__main__":
    main()
