"""The `extract` and `evaluate` commands of `python -m stego_lite`; torchrun splits them over its ranks.

    python -m stego_lite extract --preset synthstuff                   # features and KNN lists, cached
    torchrun --nproc-per-node 4 -m stego_lite extract --preset cocostuff27
    torchrun --nproc-per-node 4 -m stego_lite evaluate --model run/model.pt --preset cocostuff27 --crf

`extract` fills the caches that `train` reads (the preset's frozen features if it trains from them, and
the KNN lists), so that a job can extract on many GPUs and train elsewhere. `evaluate` scores a model
file on the preset's validation split; under torchrun each rank scores its part and rank 0 prints.
"""
from __future__ import annotations

import argparse

WHAT = ("features", "knn", "both")


def add_parsers(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """Add `extract` and `evaluate` to the command line's subcommands."""
    extract = sub.add_parser("extract", parents=[common], help="cache a preset's frozen features and KNN lists for train")
    extract.add_argument("--preset", required=True, help="a name from stego_lite.profiles.PRESETS")
    extract.add_argument("--what", choices=WHAT,
                         help="default: what training reads (both when the preset trains from cached "
                              "features, else the KNN lists)")
    extract.add_argument("--split", choices=["train", "val"], default="train")
    extract.add_argument("--weights", help="backbone weights: 'official' or a file (default: the preset's)")
    extract.add_argument("--batch-size", type=int, default=64, help="images per backbone pass (default 64)")
    _common(extract)

    evaluate = sub.add_parser("evaluate", parents=[common], help="score a model file on a preset's validation split")
    evaluate.add_argument("--model", required=True, help="a model file (train --probes writes one)")
    evaluate.add_argument("--preset", required=True, help="the preset whose validation split is scored")
    evaluate.add_argument("--crf", action="store_true", help="refine with the dense CRF (slower)")
    evaluate.add_argument("--no-flip", action="store_true", help="no flip test-time augmentation")
    evaluate.add_argument("--batch-size", type=int, default=16, help="images per batch (default 16)")
    evaluate.add_argument("--crf-workers", type=int, default=0, help="CRF processes per rank (default 0)")
    _common(evaluate)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", help="cpu, cuda, ... (default: the fastest available)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def _setting(args: argparse.Namespace):
    from stego_lite import distributed, env
    from stego_lite.profiles import get_preset

    preset = get_preset(args.preset)   # an unknown name: main's one-line error, exit 2, as for train
    device = distributed.device(args.device or env.default_device())
    return preset, device, not args.no_progress and distributed.is_main()


def extract(args: argparse.Namespace) -> int:
    from stego_lite import distributed, features, knn
    from stego_lite.backbone import load_backbone

    preset, device, progress = _setting(args)
    what = args.what or ("both" if preset.cache_features else "knn")
    backbone = load_backbone(preset.backbone, weights=args.weights or preset.weights).to(device)
    dataset = preset.data.split(args.split)
    fs = None
    lines = [f"{preset.name} {args.split}: {len(dataset)} images, {distributed.world_size()} process(es)"]
    if what in ("features", "both"):
        fs = features.cached_features(backbone, dataset, batch_size=args.batch_size, device=device,
                                      progress=progress)
        lines.append(f"features {tuple(fs.feats.shape)} in {features.cache_path(fs.key)}")
    if what in ("knn", "both"):
        nns = knn.nearest_neighbors(backbone, dataset, features=fs, batch_size=args.batch_size, device=device,
                                    progress=progress)
        path = features.cache_path(features.feature_key(backbone, dataset), "knn", f"-k{nns.shape[1]}")
        lines.append(f"KNN lists {tuple(nns.shape)} in {path}")
    if distributed.is_main():
        print("\n".join(lines))
    return 0


def evaluate(args: argparse.Namespace) -> int:
    from stego_lite import distributed
    from stego_lite.evaluate import evaluate as score
    from stego_lite.model import load_model

    preset, device, progress = _setting(args)
    model = load_model(args.model, progress=progress).to(device)
    dataset = preset.val_set()
    result = score(model, dataset, flip_tta=not args.no_flip, crf=args.crf, batch_size=args.batch_size,
                   device=device, crf_workers=args.crf_workers, progress=progress)
    if distributed.is_main():
        pixels = int(result["linear_confusion"].sum())
        print(f"{preset.name} val: {len(dataset)} images, {pixels} labelled pixels, "
              f"{distributed.world_size()} process(es), flip {not args.no_flip}, CRF {args.crf}")
        for probe in ("cluster", "linear"):
            print(f"  {probe}: mIoU {result[probe]['miou']:.2f}, accuracy {result[probe]['accuracy']:.2f}")
    return 0
