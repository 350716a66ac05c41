"""Wall time of feature extraction and training in 1 process and in N (torchrun, gloo) on this CPU.

    python benchmarks/distributed.py [--images 256] [--steps 20] [--batches 16,64] [--image-batches 16]
    python benchmarks/distributed.py --arithmetic      # COCO-scale memory and time per GPU count

The workload is the offline profile's: texture_bank features of SynthStuff images (generated once into a
temporary folder), and the synthstuff preset's head trained from the cached features or, as the paper
preset does at COCO scale, with the backbone run on every batch's images. Each configuration runs as a
torchrun job with a fresh cache; the stage times are measured on rank 0 between barriers, so they leave
out Python's start-up. One process is timed with all the CPU's threads and with one thread (torchrun
gives each of its processes one). The machine's load average is printed beside the figures: other jobs
on a shared machine slow every row.

`--arithmetic` prints the arithmetic (not a measurement) of the book's "Scaling out" table.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def worker(args: argparse.Namespace) -> None:
    """One torchrun rank: extract features and KNN lists, then train; rank 0 prints the times as JSON."""
    import torch

    from stego_lite import distributed, features, knn
    from stego_lite.backbone import load_backbone
    from stego_lite.data import SynthStuffConfig
    from stego_lite.profiles import get_preset
    from stego_lite.sources import FeatureSource, ImageSource
    from stego_lite.train import train

    distributed.init("cpu")
    dataset = SynthStuffConfig(n_train=args.images).dataset("train", root=args.data)
    backbone = load_backbone("texture_bank")
    times = {}
    distributed.barrier()
    start = time.perf_counter()
    fs = features.cached_features(backbone, dataset, batch_size=16)
    distributed.barrier()
    times["extract"] = time.perf_counter() - start
    nns = knn.nearest_neighbors(backbone, dataset, features=fs)
    sources = {"cached": FeatureSource(fs.feats, nns, fs.labels, key=fs.key.name),
               "images": ImageSource(backbone, dataset, nns)}   # the backbone every batch, as at COCO scale
    runs = [("cached", b) for b in args.batches] + [("images", b) for b in args.image_batches]
    for kind, batch in runs:
        config = get_preset("synthstuff").train_config(batch_size=batch, steps=args.steps)
        distributed.barrier()
        start = time.perf_counter()
        train(config, sources[kind], progress=False)
        distributed.barrier()
        times[f"train {kind} b{batch}"] = time.perf_counter() - start
    if distributed.is_main():
        print(json.dumps({"threads": torch.get_num_threads(), **times}))
    distributed.shutdown()


def run(processes: int, threads: int, args: argparse.Namespace, data: Path) -> dict:
    with tempfile.TemporaryDirectory(prefix="bench-distributed-") as cache:
        env = {**os.environ, "STEGO_LITE_CACHE": cache, "OMP_NUM_THREADS": str(threads),
               "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
        command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(processes),
                   "--master-addr", "127.0.0.1", "--master-port", str(29500 + os.getpid() % 1000),
                   __file__, "--worker", "--data", str(data), "--images", str(args.images),
                   "--steps", str(args.steps), "--batches", ",".join(map(str, args.batches)),
                   "--image-batches", ",".join(map(str, args.image_batches))]
        start = time.perf_counter()
        done = subprocess.run(command, env=env, capture_output=True, text=True)
        if done.returncode:
            raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
        result = json.loads(done.stdout.strip().splitlines()[-1])
        return {**result, "command": time.perf_counter() - start}


def measure(args: argparse.Namespace) -> None:
    from stego_lite.data import SynthStuffConfig

    cpus = os.cpu_count() or 1
    with tempfile.TemporaryDirectory(prefix="bench-synthstuff-") as data:
        SynthStuffConfig(n_train=args.images).dataset("train", root=data)   # generated once, outside timing
        print(f"{args.images} SynthStuff images (96 px, texture_bank 254 x 12 x 12), {args.steps} training "
              f"iterations per run (global batch bN); {cpus} CPUs, load average before "
              f"{' '.join(f'{x:.1f}' for x in os.getloadavg())}")
        rows = [(f"1 process, {cpus} threads", 1, cpus), ("1 process, 1 thread", 1, 1),
                (f"{args.processes} processes, 1 thread each", args.processes, 1)]
        results = [(label, run(n, threads, args, Path(data))) for label, n, threads in rows]
    stages = [k for k in results[0][1] if k not in ("threads", "command")] + ["command"]
    print(f"{'seconds (CPU, gloo)':<32}" + "".join(f"{s:>18}" for s in stages))
    for label, result in results:
        print(f"{label:<32}" + "".join(f"{result[s]:>18.2f}" for s in stages))
    best_one = {s: min(results[0][1][s], results[1][1][s]) for s in stages}
    print(f"{'speed-up vs the faster 1-process':<32}"
          + "".join(f"{best_one[s] / results[2][1][s]:>17.2f}x" for s in stages))
    print(f"load average after {' '.join(f'{x:.1f}' for x in os.getloadavg())} ('command' includes "
          "Python's start-up, the KNN lists and torchrun)")


# ---------------------------------------------------------------------------------------------------------
# COCO-scale arithmetic: stated assumptions times counts; nothing here is measured

N_IMAGES, TOKENS, CHANNELS, LAYERS, HEADS = 118_000, 784, 768, 12, 12   # COCO train; ViT-B/8 at 224 px
VAL_IMAGES, STEPS, BATCH = 5_000, 7000, 32   # COCO val; the cocostuff27 preset's iterations and batch
SUSTAINED = 12e12     # ASSUMED fp32 FLOP/s one GPU sustains on ViT-B/8 (A100-class: 19.5 peak, TF32 off)
CRF_SECONDS = 2.0     # ASSUMED dense-CRF seconds per 320-px image and probe on one core (benchmarks/crf.py)
CRF_WORKERS = 4       # CRF processes per rank (evaluate's crf_workers)
GIB = 2 ** 30


def vit_flops(tokens: int) -> float:
    """Forward FLOPs of ViT-B (12 layers, d = 768, MLP 4d) on `tokens` patches (+ CLS): 2 x MACs."""
    n, d = tokens + 1, CHANNELS
    return 2 * LAYERS * (12 * n * d * d + 2 * n * n * d)


def vit_peak_bytes(images: int, tokens: int) -> float:
    """fp32 weights (86 M) plus the largest no-grad activations of a batch: attention scores and MLP."""
    n = tokens + 1
    return 86e6 * 4 + images * 4 * (HEADS * n * n + 4 * n * CHANNELS + 2 * n * CHANNELS)


def arithmetic() -> None:
    minutes, pixels = 60 * SUSTAINED, N_IMAGES * TOKENS * CHANNELS
    lines = [
        f"ARITHMETIC, not measurement. {N_IMAGES:,} images; ViT-B/8 at 224 px = {TOKENS} tokens x {CHANNELS} "
        f"channels",
        f"  {vit_flops(TOKENS) / 1e9:.0f} GFLOP per forward ({vit_flops(1600) / 1e9:.0f} at 320 px); "
        f"ASSUMED: {SUSTAINED / 1e12:.0f} TFLOP/s sustained per GPU (fp32),",
        f"  CRF {CRF_SECONDS:.0f} s per image and probe on one core, {CRF_WORKERS} CRF processes per rank",
        f"  features of every image: {pixels * 2 / 1e9:.0f} GB in fp16, {pixels * 4 / 1e9:.0f} GB in fp32 "
        "(the paper preset caches the KNN lists only)",
        f"  KNN on every rank: descriptors {N_IMAGES * CHANNELS * 4 / GIB:.2f} GiB + one 256-row chunk of "
        f"similarities {256 * N_IMAGES * 4 / GIB:.2f} GiB",
        f"  (the N x N matrix would be {N_IMAGES ** 2 * 4 / GIB:.0f} GiB); ranking all rows "
        f"{2 * N_IMAGES ** 2 * CHANNELS / 1e12:.0f} TFLOP",
        f"  extraction memory per GPU at batch 64: {vit_peak_bytes(64, TOKENS) / GIB:.1f} GiB, any GPU count",
    ]
    print("\n".join(lines))
    print(f"  training: each step runs the backbone on {BATCH} anchors + {BATCH} positives "
          f"({2 * BATCH * vit_flops(TOKENS) / 1e12:.1f} TFLOP);\n  every rank gathers the batch's features, "
          f"{2 * BATCH * TOKENS * CHANNELS * 4 / GIB:.2f} GiB per step")
    print(f"{'GPUs':>4} | {'descriptors':>11} {'x5 crops':>8} | {'train 7k':>8} {'backbone mem':>12} | "
          f"{'eval 320':>8} {'eval CRF':>8}")
    for gpus in (1, 2, 4, 8, 16):
        describe = N_IMAGES * vit_flops(TOKENS) / gpus / minutes
        train = STEPS * 2 * BATCH * vit_flops(TOKENS) / gpus / minutes
        evaluate = VAL_IMAGES * 2 * vit_flops(1600) / gpus / minutes   # flip test-time augmentation
        crf = VAL_IMAGES * 2 * CRF_SECONDS / (gpus * CRF_WORKERS) / 60
        memory = vit_peak_bytes(2 * BATCH // gpus, TOKENS) / GIB
        print(f"{gpus:>4} | {describe:>7.0f} min {5 * describe:>4.0f} min | {train:>4.0f} min "
              f"{memory:>8.1f} GiB | {evaluate:>4.0f} min {crf:>4.0f} min")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--steps", type=int, default=20)
    numbers = lambda s: [int(x) for x in s.split(",") if x]   # noqa: E731
    parser.add_argument("--batches", type=numbers, default=[16, 64], help="global batches, cached features")
    parser.add_argument("--image-batches", type=numbers, default=[16],
                        help="global batches with the backbone on every batch's images")
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--arithmetic", action="store_true", help="print the COCO-scale arithmetic only")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.arithmetic:
        arithmetic()
    elif args.worker:
        worker(args)
    else:
        measure(args)


if __name__ == "__main__":
    main()
