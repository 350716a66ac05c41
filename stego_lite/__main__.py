"""Command line: `python -m stego_lite <command> ...`.

    five-crop   write the five-crop training folders (STEGO's crop_datasets.py)
    download    fetch and unpack one of STEGO's prepared dataset zips
    synthstuff  generate the offline SynthStuff splits (default: the book's offline profile)
    train       train STEGO's head with a preset's settings (python -m stego_lite train --preset synthstuff)
"""
from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m stego_lite", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    crop = sub.add_parser("five-crop", help="write five crops (4 corners + centre) of every image of a split")
    crop.add_argument("dataset", choices=["cocostuff27", "cityscapes", "potsdam"])
    crop.add_argument("--split", nargs="+", default=["train"], help="splits to crop (default: train)")
    crop.add_argument("--root", help="data root holding the dataset (default: $STEGO_LITE_DATA)")
    crop.add_argument("--out-root", help="where cropped/ is written (default: the data root)")
    crop.add_argument("--crop-ratio", type=float, default=0.5, help="crop side / image side (default 0.5)")
    crop.add_argument("--workers", type=int, default=0, help="processes (default 0: this process)")
    crop.add_argument("--overwrite", action="store_true", help="redo splits that are already complete")

    download = sub.add_parser("download", help="download one of STEGO's prepared dataset zips")
    download.add_argument("name", choices=["cocostuff", "cityscapes", "potsdam", "potsdamraw"])
    download.add_argument("--root", help="data root to unpack into (default: $STEGO_LITE_DATA)")
    download.add_argument("--url", help="another address for the zip (a mirror)")

    synth = sub.add_parser("synthstuff", help="generate SynthStuff splits (default: the offline profile)")
    synth.add_argument("--root", help="folder for generated data (default: $STEGO_LITE_CACHE/synthstuff)")
    synth.add_argument("--image-size", type=int)
    synth.add_argument("--n-train", type=int)
    synth.add_argument("--n-val", type=int)
    synth.add_argument("--seed", type=int)
    synth.add_argument("--workers", type=int, help="processes (default: CPU count, at most 4)")
    _train_parser(sub)
    return parser


def _train_parser(sub: argparse._SubParsersAction) -> None:
    train = sub.add_parser("train", help="train STEGO's head with a preset's backbone, data and loss")
    train.add_argument("--preset", required=True,
                       help="a name from stego_lite.loss.PRESETS: synthstuff (offline), cocostuff27, "
                            "cityscapes, potsdam")
    train.add_argument("--steps", type=int, help="iterations (default: the preset's)")
    train.add_argument("--batch-size", type=int, help="default: the preset's")
    train.add_argument("--dim", type=int, help="code dimension D (default: the preset's)")
    train.add_argument("--head", choices=["linear", "nonlinear"], default="nonlinear")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--source", choices=["cache", "images"],
                       help="train from cached frozen features or run the backbone on images every step "
                            "(default: cache for synthstuff, images for the real datasets)")
    train.add_argument("--weights", default="official", help="backbone weights: 'official' or a file path")
    train.add_argument("--run-dir", help="checkpoint folder; an existing checkpoint there is resumed "
                                         "(default: $STEGO_LITE_CACHE/runs/<config hash>)")
    train.add_argument("--checkpoint-every", type=int, default=100, help="iterations between checkpoints")
    train.add_argument("--device", help="cpu, cuda, ... (default: the fastest available)")
    train.add_argument("--no-progress", action="store_true", help="no progress bars")


def _train(args: argparse.Namespace) -> None:
    from stego_lite import env, knn, train
    from stego_lite.backbone import load_backbone
    from stego_lite.loss import get_preset

    try:
        preset = get_preset(args.preset)
    except ValueError as err:
        raise SystemExit(f"python -m stego_lite train: {err}") from None
    given = {"steps": args.steps, "batch_size": args.batch_size, "dim": args.dim}
    config = train.TrainConfig.from_preset(args.preset, head_kind=args.head, seed=args.seed,
                                           **{k: v for k, v in given.items() if v is not None})
    device = args.device or env.default_device()
    backbone = load_backbone(preset.backbone, weights=args.weights).to(device)
    dataset = train.training_set(args.preset)
    source_kind = args.source or ("cache" if args.preset == "synthstuff" else "images")
    progress = not args.no_progress
    if source_kind == "cache":
        source = train.FeatureSource.from_cache(backbone, dataset, device=device, progress=progress)
    else:
        nns = knn.nearest_neighbors(backbone, dataset, device=device, progress=progress)
        source = train.ImageSource(backbone, dataset, nns)
    run_dir = args.run_dir or train.run_dir_for(config, source)
    result = train.train(config, source, run_dir=run_dir, checkpoint_every=args.checkpoint_every,
                         device=device, progress=progress)
    last = result.history[-1] if result.history else {}
    print(f"{args.preset}: {len(result.history)} iterations, loss {last.get('loss', float('nan')):.4f} "
          f"(self {last.get('self', float('nan')):.4f}, knn {last.get('knn', float('nan')):.4f}, "
          f"random {last.get('random', float('nan')):.4f}); checkpoint and history in {run_dir}")


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "train":
        _train(args)
        return 0
    from stego_lite import data   # imported here so that --help stays fast

    if args.command == "five-crop":
        for split in args.split:
            folder = data.five_crop(args.dataset, split, root=args.root, out_root=args.out_root,
                                    crop_ratio=args.crop_ratio, workers=args.workers,
                                    overwrite=args.overwrite, progress=True)
            print(f"{args.dataset} {split}: {folder}")
    elif args.command == "download":
        print(data.download_prepared(args.name, args.root, url=args.url, progress=True))
    elif args.command == "synthstuff":
        import dataclasses

        given = {"image_size": args.image_size, "n_train": args.n_train, "n_val": args.n_val,
                 "seed": args.seed}
        config = dataclasses.replace(data.SYNTHSTUFF_OFFLINE,
                                     **{k: v for k, v in given.items() if v is not None})
        for split in ("train", "val"):
            start = time.perf_counter()
            n = config.n_images(split)
            folder = data.generate_synthstuff(args.root, split, n_images=n, image_size=config.image_size,
                                              seed=config.seed, workers=args.workers)
            print(f"{split}: {n} images in {folder} ({time.perf_counter() - start:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
