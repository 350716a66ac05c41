"""Backbone throughput on this machine: images per second through `Backbone.features`, for the record.

Random weights (the speed does not depend on them), square images, the CPU unless --device says otherwise.
Defaults: STEGO's two ViTs with patch 8 at its training (224) and evaluation (320) resolutions.

    python benchmarks/backbone.py
    python benchmarks/backbone.py --names dino_vits16 dinov2_vits14 --sizes 224 448 --batch 4
"""
from __future__ import annotations

import argparse
import os
import platform
import time

import torch

from stego_lite.backbone import Backbone, list_backbones, load_backbone


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
    parser.add_argument("--names", nargs="+", default=["dino_vits8", "dino_vitb8"], choices=list_backbones())
    parser.add_argument("--sizes", nargs="+", type=int, default=[224, 320], help="image side in pixels")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--min-seconds", type=float, default=3.0, help="timed run length per configuration")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    load = ", ".join(f"{x:.1f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {args.device}, "
          f"{platform.processor() or platform.machine()}, batch {args.batch}, random weights, "
          f"load average {load} (other jobs slow a shared CPU)")
    print(f"{'backbone':<16}{'image':>8}{'grid':>8}{'tokens':>8}{'images/s':>11}{'ms/image':>11}")
    for name in args.names:
        backbone = load_backbone(name, weights=None).to(args.device)
        for size in args.sizes:
            img = torch.randn(args.batch, 3, size, size, device=args.device)
            rate = images_per_second(backbone, img, args.min_seconds)
            h = size // backbone.patch_size
            tokens = h * h + getattr(backbone, "num_prefix_tokens", 0)
            grid = f"{h}x{h}"
            print(f"{name:<16}{size:>8}{grid:>8}{tokens:>8}{rate:>11.2f}{1000 / rate:>11.0f}", flush=True)


if __name__ == "__main__":
    main()
