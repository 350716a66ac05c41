"""STEGO heads of several code sizes D, trained together for the dimension sweep (reference §8).

    heads, seconds = train_heads((3, 12, 48), config, source)   # {D: head}, each as train.train trains it
    headset = sweep_heads(cfg, source, seed=0)                  # the sweep's heads: trained once, then cached

All heads train in one loop on the same batches, sampled points and random partners, so the backbone
features, their sampled points and their correlation F are computed once per step for every head
(`loss.stego_losses`); each head's loss is exactly `loss.stego_loss`.
"""
from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from stego_lite import cache
from stego_lite.env import autocast, cache_dir
from stego_lite.head import SegmentationHead
from stego_lite.loss import stego_losses
from stego_lite.progress import progress as progress_bar
from stego_lite.train import EpochOrder, TrainConfig, build_head, next_batch

if TYPE_CHECKING:
    from stego_lite.profiles import SweepConfig

CACHE_VERSION = 1   # bump when anything changes the cached heads (here) or the analysis tables


def train_heads(dims: Sequence[int], config: TrainConfig, source, *, device: torch.device | str | None = None,
                progress: bool = False) -> tuple[dict[int, SegmentationHead], float]:
    """Train one STEGO head per D in `dims` on the same batches: -> ({D: head in eval mode}, seconds).

    Each head is what `train.train(replace(config, dim=D), source)` trains, but all heads see the same
    images, KNN positives, sampled points, random partners and loss-feature dropout draw (their own
    dropout inside the head stays independent). One Adam over all heads equals one Adam per head (Adam
    is per parameter). Seeded by `config.seed`; the caller's RNG state is left as it was.
    """
    device = torch.device(device or "cpu")
    if not 2 <= config.batch_size <= len(source):
        raise ValueError(f"batch_size must be between 2 and the {len(source)} training images, "
                         f"got {config.batch_size}")
    if not dims or min(dims) < 1:
        raise ValueError(f"dims must be positive code sizes, got {tuple(dims)}")
    start = time.perf_counter()
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(config.seed)
        heads = {d: build_head(dataclasses.replace(config, dim=d), source.in_dim).to(device) for d in dims}
        loss_dropout = nn.Dropout2d(config.dropout)   # the correlation target's channel dropout, shared
        optimizer = torch.optim.Adam([p for h in heads.values() for p in h.parameters()], lr=config.lr)
        generator = torch.Generator().manual_seed(config.seed)
        batches = EpochOrder(len(source), config.batch_size, generator)   # the data order of train.train
        for step in progress_bar(range(config.steps), enabled=progress, desc=f"{len(heads)} heads", unit="it"):
            batch = next_batch(source, batches, config, device)
            with autocast(device):   # bfloat16 on CUDA; the loss reads float32
                codes = [h.train()(batch.feats).float() for h in heads.values()]
                codes_knn = [h(batch.feats_pos).float() for h in heads.values()]
            terms = stego_losses(loss_dropout(batch.feats), codes, loss_dropout(batch.feats_pos), codes_knn,
                                 config.loss, generator=generator)
            totals = [t.total for t in terms]
            total = torch.stack(totals).sum()
            if not torch.isfinite(total):
                raise FloatingPointError(f"non-finite loss at iteration {step + 1} (per head: "
                                         f"{[t.item() for t in totals]}); lower the learning rate or check "
                                         "the features for NaN/Inf")
            optimizer.zero_grad(set_to_none=True)
            total.backward()
            optimizer.step()
    return {d: h.eval() for d, h in heads.items()}, time.perf_counter() - start


@dataclass
class HeadSet:
    """The sweep's heads of one seed, {D: head}, with the cache key they were stored under."""

    heads: dict[int, SegmentationHead]
    key: str
    seconds: float   # training time when they were trained (maybe in an earlier session)


def sweep_heads(cfg: SweepConfig, source, seed: int, *, device: torch.device | str | None = None,
                progress: bool = False) -> HeadSet:
    """The STEGO heads of `seed` for every D of the grid: trained once (`train_heads`), then read back."""
    config = cfg.head_config(seed)
    spec = {"config": dataclasses.asdict(config), "dims": list(cfg.dims), "source": source.key,
            "version": CACHE_VERSION}

    def compute() -> dict[str, Any]:
        heads, seconds = train_heads(cfg.dims, config, source, device=device, progress=progress)
        return {"seconds": seconds, "heads": {str(d): {k: v.cpu() for k, v in h.state_dict().items()}
                                              for d, h in heads.items()}}

    state = cache.load_or_compute(cache.keyed_path(cache_dir() / "analysis", f"heads-seed{seed}", spec), spec,
                                  compute, version=CACHE_VERSION)
    with torch.random.fork_rng(devices=[]):   # an initialisation that the stored state replaces
        heads = {d: build_head(dataclasses.replace(config, dim=d), source.in_dim) for d in cfg.dims}
    for d, head in heads.items():
        head.load_state_dict(state["heads"][str(d)])
    return HeadSet({d: h.eval().to(device or "cpu") for d, h in heads.items()}, cache.digest(spec),
                   state["seconds"])
