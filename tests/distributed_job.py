"""A tiny job that tests/test_distributed.py runs in one process and in N (torchrun or by hand).

    python -m torch.distributed.run --nproc-per-node 2 tests/distributed_job.py stages OUT.pt
    python tests/distributed_job.py stages OUT.pt          # the same job in one process

Tasks: `stages` (feature cache, KNN lists from features and from images, 20 training iterations with
STEGO's probes, evaluation), `slow-train` (a run slow enough to be killed mid-way), `seed-per-rank`
(ranks that disagree on the training seed). Rank 0 saves what the test compares to OUT.
"""
from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import Dataset

from stego_lite import distributed, env, features, knn
from stego_lite import train as T
from stego_lite.backbone import Backbone
from stego_lite.sources import FeatureSource

N_TRAIN, N_VAL, SIZE, CLASSES = 40, 12, 16, ("sky", "grass", "road")
BATCH = 2          # extraction batch: 20 shards of one batch, 10 per rank
CONFIG = T.TrainConfig(dim=4, batch_size=8, steps=20, num_neighbors=3, lr=1e-2, probe_lr=1e-2,
                       loss=T.LossConfig(n_points=3, n_random=2))
SLOW = 0.05        # seconds per batch of the slow run


class TinyBackbone(Backbone):
    """A fixed random 4 x 4 patch embedding: (B, 3, 16, 16) -> (B, 8, 4, 4)."""

    def __init__(self) -> None:
        super().__init__("tiny_patches", 4, 8)
        self.proj = nn.Conv2d(3, 8, 4, stride=4)
        generator = torch.Generator().manual_seed(0)
        with torch.no_grad():
            self.proj.weight.copy_(torch.randn(self.proj.weight.shape, generator=generator) / 7)
            self.proj.bias.zero_()
        self.requires_grad_(False)

    def forward(self, img):
        return self.proj(img)


class Images(Dataset):
    """Images whose halves have one of 3 colours (deterministic per index), labelled (-1 on the border)."""

    def __init__(self, n: int, split: str) -> None:
        self.n, self.name, self.split = n, "tiny", split

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict:
        g = torch.Generator().manual_seed(1000 * (self.split == "val") + i)
        top, bottom = torch.randint(0, 3, (2,), generator=g).tolist()
        colours = torch.tensor([[1.0, -1.0, 0.5], [-1.0, 1.0, 0.0], [0.0, 0.0, -1.0]])
        label = torch.full((SIZE, SIZE), top, dtype=torch.long)
        label[SIZE // 2:] = bottom
        image = colours[label].permute(2, 0, 1) + 0.3 * torch.randn(3, SIZE, SIZE, generator=g)
        label[SIZE // 2 - 1:SIZE // 2 + 1] = -1
        return {"image": image, "label": label}


class SlowSource(FeatureSource):
    def batch(self, indices, positives, device):
        time.sleep(SLOW)
        return super().batch(indices, positives, device)


def source(slow: bool = False) -> FeatureSource:
    backbone, data = TinyBackbone(), Images(N_TRAIN, "train")
    fs = features.cached_features(backbone, data, batch_size=BATCH)
    nns = knn.nearest_neighbors(backbone, data, k=5, features=fs, chunk_size=8)
    return (SlowSource if slow else FeatureSource)(fs.feats, nns, fs.labels, key=fs.key.name)


def stages() -> dict:
    from stego_lite import evaluate   # imported here: scipy's import slows every rank's start
    from stego_lite.model import StegoModel, stego_probes

    backbone, data = TinyBackbone(), Images(N_TRAIN, "train")
    src = source()
    nns_images = knn.nearest_neighbors(backbone, data, k=6, batch_size=BATCH, chunk_size=8)
    result = T.train(CONFIG, src, probes=stego_probes(CONFIG.dim, len(CLASSES)), progress=False,
                     run_dir=env.cache_dir() / "run")
    model = StegoModel(backbone, result.head, result.probes["cluster"], result.probes["linear"], CLASSES)
    scores = evaluate.evaluate(model, Images(N_VAL, "val"), batch_size=4, progress=False)
    return {"knn_features": src.nns.clone(), "knn_images": nns_images.clone(), "history": result.history,
            "head": result.head.state_dict(), "probes": {k: p.state_dict() for k, p in result.probes.items()},
            "cluster_confusion": scores["cluster_confusion"], "linear_confusion": scores["linear_confusion"],
            "feature_file": str(features.cache_path(features.feature_key(backbone, data)))}


def slow_train(steps: int = 60) -> dict:
    run = env.cache_dir() / "slow-run"
    start = torch.load(run / T.CHECKPOINT, weights_only=True)["step"] if (run / T.CHECKPOINT).is_file() else 0
    config = dataclasses.replace(CONFIG, steps=steps)
    result = T.train(config, source(slow=True), run_dir=run, checkpoint_every=5, progress=False)
    return {"start": start, "head": result.head.state_dict(), "steps": len(result.history)}


def seed_per_rank() -> dict:
    config = dataclasses.replace(CONFIG, seed=distributed.rank())
    T.train(config, source(), progress=False)
    return {}


TASKS = {"stages": stages, "slow-train": slow_train, "seed-per-rank": seed_per_rank}


def main(task: str, out: str) -> None:
    with distributed.launched("train"):
        result = TASKS[task]()
        if distributed.is_main():
            torch.save(result, Path(out))


if __name__ == "__main__":
    main(*sys.argv[1:3])
