"""Time of one training step of the paper preset (COCO-Stuff-27): a ViT-B/8 in the loop, head, loss, probes.

    python benchmarks/step_time.py [--res 32] [--steps 3] [--batch 32]

What `train.train` does per iteration with the `cocostuff27` preset (batch 32, D = 90, ImageSource: the
frozen backbone runs on the 32 anchors and their 32 KNN positives, STEGO's loss, both probes, Adam), with a
ViT-B/8 of random weights (the arithmetic is the same as with DINO's) on random images. On the CPU it runs
at a small size (`--res`, default 32 px); on a GPU also at the preset's 224 px, with and without bfloat16
autocast (env.autocast, switched off by STEGO_LITE_AMP=0).
"""
from __future__ import annotations

import argparse
import os
import time

import torch
from torch.utils.data import Dataset

from stego_lite import env
from stego_lite.backbone import load_backbone
from stego_lite.model import stego_probes
from stego_lite.profiles import PRESETS
from stego_lite.sources import ImageSource
from stego_lite.train import _Loop, build_head   # the loop that train.train runs, step by step


class RandomImages(Dataset):
    """n random normalised images of res x res px with random labels of 27 classes (made once)."""

    def __init__(self, n: int, res: int) -> None:
        g = torch.Generator().manual_seed(0)
        self.images = torch.randn(n, 3, res, res, generator=g)
        self.labels = torch.randint(-1, 27, (n, res, res), generator=g)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict:
        return {"image": self.images[i], "label": self.labels[i], "index": i}


def step_seconds(backbone, res: int, batch: int, steps: int, device: torch.device) -> float:
    """Mean wall time of `steps` training iterations after one warm-up iteration."""
    preset = PRESETS["cocostuff27"]
    config = preset.train_config(batch_size=batch)
    dataset = RandomImages(4 * batch, res)
    nns = torch.stack([torch.randperm(len(dataset), generator=torch.Generator().manual_seed(i))[:30]
                       for i in range(len(dataset))])
    source = ImageSource(backbone, dataset, nns)
    torch.manual_seed(0)
    head = build_head(config, backbone.embed_dim).to(device)
    loop = _Loop(config, source, head, stego_probes(config.dim, 27), device)   # training's own iteration
    times = []
    for _ in range(steps + 1):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        loop.iteration()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    return sum(times[1:]) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--res", type=int, default=32, help="image side on the CPU (px, a multiple of 8)")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--batch", type=int, default=PRESETS["cocostuff27"].batch_size)
    args = parser.parse_args()
    torch.manual_seed(0)
    backbone = load_backbone("dino_vitb8", weights=None)   # random weights: the same arithmetic as DINO's
    print(f"paper preset (cocostuff27): ViT-B/8 (random weights), batch {args.batch} + {args.batch} KNN "
          f"positives, D = {PRESETS['cocostuff27'].dim}; torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.1f}")
    cpu = step_seconds(backbone, args.res, args.batch, args.steps, torch.device("cpu"))
    print(f"  cpu   {args.res:4d} px: {cpu:7.2f} s per step")
    if torch.cuda.is_available():
        device = torch.device("cuda")
        backbone = backbone.to(device)
        print(f"  GPU: {torch.cuda.get_device_name(device)}")
        for res in sorted({args.res, 224}):
            for amp in ("1", "0"):
                os.environ[env.AMP_ENV] = amp
                seconds = step_seconds(backbone, res, args.batch, max(args.steps, 10), device)
                precision = "bf16 autocast" if amp == "1" else "float32"
                print(f"  cuda  {res:4d} px, {precision:13s}: {1000 * seconds:7.1f} ms per step")


if __name__ == "__main__":
    main()
