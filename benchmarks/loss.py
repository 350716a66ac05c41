"""Loss and training-step timings on this machine, for the record: STEGO's loss and one step of the loop.

1. forward + backward of `stego_loss` (11 x 11 points, self + KNN + 5 random terms) for batches 8/16/32,
   at the offline shapes (texture_bank features of 96-px SynthStuff: C x 12 x 12, the synthstuff preset's D)
   and the paper shape (ViT-B/8 at 224 px: 768 x 28 x 28, D = 90); "loss" times the loss alone on leaf
   codes, "head+loss" adds the head's forward and backward on anchors and positives;
2. one training iteration (`train_step`: head, loss, Adam) from cached features vs from images (the
   backbone runs on anchors and positives every step), offline (texture_bank, 96 px) and, with --paper,
   with a random-weight ViT-B/8 at 224 px (slow on a CPU).

    python benchmarks/loss.py
    python benchmarks/loss.py --paper --device cuda
"""
from __future__ import annotations

import argparse
import os
import platform
import time
from collections.abc import Callable

import torch

from stego_lite import train as T
from stego_lite.backbone import list_backbones, load_backbone
from stego_lite.head import SegmentationHead
from stego_lite.loss import get_preset, stego_loss


def seconds_per_call(fn: Callable[[], object], min_seconds: float, sync: Callable[[], None]) -> float:
    """Mean wall time of fn() over repeated calls lasting at least `min_seconds`, after one warm-up call."""
    fn()
    sync()
    runs, start = 0, time.perf_counter()
    while runs == 0 or time.perf_counter() - start < min_seconds:
        fn()
        sync()
        runs += 1
    return (time.perf_counter() - start) / runs


def loss_timings(C: int, h: int, D: int, batch: int, device: str, min_seconds: float,
                 sync) -> tuple[float, float]:
    """(loss alone, head + loss) forward + backward, seconds."""
    config = get_preset("cocostuff27").loss  # the loss cost does not depend on the weights and shifts
    feats, feats_pos = (torch.randn(batch, C, h, h, device=device) for _ in range(2))
    code, code_pos = (torch.randn(batch, D, h, h, device=device, requires_grad=True) for _ in range(2))
    head = SegmentationHead(C, D).to(device).train()

    def loss_only():
        stego_loss(feats, code, feats_pos, code_pos, config).total.backward()

    def head_and_loss():
        head.zero_grad()
        stego_loss(head.loss_features(feats), head(feats), head.loss_features(feats_pos), head(feats_pos),
                   config).total.backward()

    return seconds_per_call(loss_only, min_seconds, sync), seconds_per_call(head_and_loss, min_seconds, sync)


class RandomImages(torch.utils.data.Dataset):
    """n random normalised images of side `size` with empty labels (only the speed is measured)."""

    name, split = "random-images", "train"

    def __init__(self, n: int, size: int) -> None:
        self.images = torch.randn(n, 3, size, size)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict:
        return {"image": self.images[i], "label": torch.full(self.images.shape[-2:], -1), "index": i}


def step_timings(backbone_name: str, size: int, dim: int, batch: int, device: str, min_seconds: float,
                 sync) -> tuple[float, float]:
    """(from cached features, from images) seconds per training iteration."""
    backbone = load_backbone(backbone_name, weights=None).to(device)
    dataset = RandomImages(max(2 * batch, 32), size)
    feats = torch.cat([backbone.features(dataset.images[i:i + 8].to(device)).cpu()
                       for i in range(0, len(dataset), 8)])
    nns = torch.randint(len(dataset), (len(dataset), 30))
    config = T.TrainConfig(dim=dim, batch_size=batch)
    sources = {"cache": T.FeatureSource(feats, nns, key="bench"),
               "images": T.ImageSource(backbone, dataset, nns)}
    out = []
    for source in sources.values():
        head = SegmentationHead(source.in_dim, dim).to(device)
        optimizers = [torch.optim.Adam(head.parameters(), lr=config.lr)]
        generator = torch.Generator().manual_seed(0)

        def step():
            indices = torch.randperm(len(source), generator=generator)[:batch]
            positives = nns[indices, torch.randint(1, 8, (batch,), generator=generator)]
            T.train_step(head, source.batch(indices, positives, torch.device(device)), config, optimizers,
                         generator=generator)

        out.append(seconds_per_call(step, min_seconds, sync))
    return out[0], out[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", nargs="+", type=int, default=[8, 16, 32])
    parser.add_argument("--paper", action="store_true",
                        help="also time training steps with ViT-B/8 at 224 px")
    parser.add_argument("--min-seconds", type=float, default=2.0, help="timed run length per configuration")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)

    load = ", ".join(f"{x:.1f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {args.device}, "
          f"{platform.processor() or platform.machine()}, load average {load} (other jobs slow a shared CPU)")
    offline = get_preset("synthstuff")
    if offline.backbone in list_backbones():
        bank = load_backbone(offline.backbone)
        offline_shape = (bank.embed_dim, offline.res // bank.patch_size, offline.dim)
    else:
        print(f"backbone {offline.backbone!r} is not registered here: offline rows skipped")
        offline_shape = None
    shapes = {"offline": offline_shape, "paper": (768, 28, 90)}

    print("\n1. stego_loss forward + backward (11 x 11 points, 1 self + 1 KNN + 5 random terms)")
    print(f"{'shape':<10}{'C x h x w':>14}{'D':>5}{'batch':>7}{'loss ms':>10}{'head+loss ms':>14}")
    for label, shape in shapes.items():
        if shape is None:
            continue
        C, h, D = shape
        for batch in args.batches:
            loss_s, head_s = loss_timings(C, h, D, batch, args.device, args.min_seconds, sync)
            shape = f"{C}x{h}x{h}"
            print(f"{label:<10}{shape:>14}{D:>5}{batch:>7}{1e3 * loss_s:>10.1f}{1e3 * head_s:>14.1f}",
                  flush=True)

    print("\n2. one training iteration (head + loss + Adam), from cached features vs from images")
    print(f"{'setting':<34}{'batch':>7}{'cache ms':>10}{'images ms':>11}{'ratio':>8}")
    runs = []
    if offline_shape is not None:
        runs.append((f"offline ({offline.backbone}, {offline.res} px)", offline.backbone, offline.res,
                     offline.dim, offline.batch_size))
    if args.paper:
        runs.append(("paper (ViT-B/8 random, 224 px)", "dino_vitb8", 224, 90, 8))
    per_step = {}
    for label, name, size, dim, batch in runs:
        cache_s, images_s = step_timings(name, size, dim, batch, args.device, args.min_seconds, sync)
        per_step[name] = cache_s
        print(f"{label:<34}{batch:>7}{1e3 * cache_s:>10.1f}{1e3 * images_s:>11.1f}{images_s / cache_s:>8.1f}",
              flush=True)
    if offline.backbone in per_step:
        cache_s = per_step[offline.backbone]
        print(f"\nsynthstuff preset: {offline.steps} iterations x {1e3 * cache_s:.0f} ms = "
              f"{offline.steps * cache_s:.0f} s of training from the feature cache (chapter budget: 120 s)")


if __name__ == "__main__":
    main()
