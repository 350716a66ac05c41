"""Time of STEGO's dense CRF per 320x320 image (27 classes, 10 iterations), serial and in workers.

    python benchmarks/crf.py [--images 8] [--classes 27] [--workers 2]
"""
from __future__ import annotations

import argparse
import os
import time

import numpy as np

from stego_lite.crf import dense_crf_batch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--classes", type=int, default=27)
    parser.add_argument("--size", type=int, default=320)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (args.images, args.size, args.size, 3), dtype=np.uint8)
    logits = rng.normal(size=(args.images, args.classes, args.size, args.size)).astype(np.float32)
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    print(f"dense CRF, {args.images} images {args.size}x{args.size}, {args.classes} classes, "
          f"10 iterations; {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
    for workers in (0, args.workers):
        start = time.perf_counter()
        dense_crf_batch(images, probs, workers=workers)
        seconds = time.perf_counter() - start
        print(f"  workers={workers}: {seconds / args.images:.2f} s per image ({seconds:.1f} s total)")


if __name__ == "__main__":
    main()
