"""Training STEGO's head: a plain PyTorch loop, resumable exactly, fast from cached features.

    config = TrainConfig.from_preset("synthstuff")
    source = FeatureSource.from_cache(backbone, dataset)      # frozen features + KNN lists, cached on disk
    result = train(config, source, run_dir=run_dir_for(config, source))
    result.head, result.history                               # trained head, one dict per iteration

One iteration = one batch of anchors and their KNN positives, one backward pass, one step of each Adam
optimiser (head 5e-4, each probe 5e-3; reference §6); `steps` counts iterations (§9.11). Probes are
optional: any `nn.Module` with a method `loss(code, label) -> scalar Tensor`, where `code` is the
detached head output (B, D, h, w) and `label` (B, H, W) int64 (-1 = ignore), trains jointly on its own
optimiser, as in STEGO (the codes are detached, so probes never change the head).

A run directory holds `checkpoint.pt` (model, optimisers, RNG states, data order, history; written
atomically) and `history.json` / `history.csv`. Calling `train` again with the same directory resumes
from the checkpoint and gives bit-identical parameters to an uninterrupted run; a finished run returns at
once, which is how the book reuses trained heads, and a larger `steps` extends it (nothing in the loop
depends on the total: there is no learning-rate schedule).
"""
from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from stego_lite.backbone import Backbone
from stego_lite.env import cache_dir
from stego_lite.features import cached_features, feature_key, save_atomic
from stego_lite.head import SegmentationHead
from stego_lite.knn import NUM_NEIGHBORS, nearest_neighbors, sample_positives
from stego_lite.loss import LossConfig, LossTerms, get_preset, same_label, sample_labels, stego_loss

CHECKPOINT = "checkpoint.pt"


@dataclass(frozen=True)
class TrainConfig:
    """What a training run is: the loss, the head and the optimisation (reference §2, §3, §6)."""

    loss: LossConfig = field(default_factory=LossConfig)
    dim: int = 70                  # D, code dimension
    batch_size: int = 16
    steps: int = 5000              # optimiser iterations
    head_kind: str = "nonlinear"   # "linear" | "nonlinear"
    dropout: float = 0.1           # channel dropout on the head's inputs and the loss features
    lr: float = 5e-4               # Adam, head
    probe_lr: float = 5e-3         # Adam, each probe
    num_neighbors: int = NUM_NEIGHBORS   # KNN positives are drawn from ranks 1..num_neighbors
    seed: int = 0                  # head initialisation, dropout, data order, sampled points

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> TrainConfig:
        """The preset's dim, batch, steps, learning rate and loss (stego_lite.loss.PRESETS), with `overrides`."""
        preset = get_preset(name)
        base = cls(loss=preset.loss, dim=preset.dim, batch_size=preset.batch_size, steps=preset.steps,
                   lr=preset.lr)
        return dataclasses.replace(base, **overrides)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TrainConfig:
        """Inverse of dataclasses.asdict (as stored in checkpoints)."""
        return cls(**{**d, "loss": LossConfig(**d["loss"])})


class Batch(NamedTuple):
    feats: Tensor          # (B, C, h, w) anchors' frozen features
    feats_pos: Tensor      # (B, C, h, w) their KNN positives' features
    label: Tensor | None   # (B, H, W) int64 anchors' labels, -1 = ignore (None if the source has none)


class FeatureSource:
    """Training batches from cached frozen features (N, C, h, w) and KNN lists (N, k)."""

    def __init__(self, feats: Tensor, nns: Tensor, labels: Tensor | None = None, *, key: str = "") -> None:
        if feats.ndim != 4 or nns.ndim != 2 or nns.shape[0] != feats.shape[0]:
            raise ValueError(f"need feats (N, C, h, w) and nns (N, k) with the same N, "
                             f"got {tuple(feats.shape)} and {tuple(nns.shape)}")
        if labels is not None and labels.shape[0] != feats.shape[0]:
            raise ValueError(f"labels {tuple(labels.shape)} do not match {feats.shape[0]} feature maps")
        self.feats, self.nns, self.labels, self.key = feats, nns, labels, key
        self.in_dim = feats.shape[1]

    @classmethod
    def from_cache(cls, backbone: Backbone, dataset: Dataset, *, k: int = 30, batch_size: int = 64,
                   device: torch.device | str | None = None, progress: bool = False) -> FeatureSource:
        """Extract (once) and read the dataset's features, labels and KNN lists from the disk cache."""
        fs = cached_features(backbone, dataset, batch_size=batch_size, device=device, progress=progress)
        nns = nearest_neighbors(backbone, dataset, k=k, features=fs)
        return cls(fs.feats, nns, fs.labels, key=fs.key.name)

    def __len__(self) -> int:
        return self.feats.shape[0]

    def batch(self, indices: Tensor, positives: Tensor, device: torch.device) -> Batch:
        label = self.labels[indices].long().to(device) if self.labels is not None else None
        return Batch(self.feats[indices].float().to(device), self.feats[positives].float().to(device), label)


class ImageSource:
    """Training batches computed from images: the backbone runs on every anchor and positive."""

    def __init__(self, backbone: Backbone, dataset: Dataset, nns: Tensor) -> None:
        if nns.shape[0] != len(dataset):
            raise ValueError(f"KNN lists cover {nns.shape[0]} images but the dataset has {len(dataset)}")
        self.backbone, self.dataset, self.nns = backbone, dataset, nns
        self.key = "images-" + feature_key(backbone, dataset).name
        self.in_dim = backbone.embed_dim

    def __len__(self) -> int:
        return len(self.dataset)

    def _features(self, indices: Tensor, device: torch.device) -> tuple[Tensor, Tensor]:
        items = [self.dataset[int(i)] for i in indices]
        img = torch.stack([item["image"] for item in items]).to(device)  # (B, 3, H, W)
        return self.backbone.features(img), torch.stack([item["label"] for item in items]).to(device)

    def batch(self, indices: Tensor, positives: Tensor, device: torch.device) -> Batch:
        feats, label = self._features(indices, device)
        feats_pos, _ = self._features(positives, device)
        return Batch(feats, feats_pos, label)


Source = FeatureSource | ImageSource
ValFn = Callable[[SegmentationHead, Mapping[str, nn.Module], int], Mapping[str, float]]


class TrainResult(NamedTuple):
    head: SegmentationHead
    probes: dict[str, nn.Module]
    history: list[dict[str, float]]   # one entry per iteration: "step", the loss terms, mean S per term, ...
    run_dir: Path | None


def train_step(head: SegmentationHead, batch: Batch, config: TrainConfig, optimizers: list[torch.optim.Optimizer],
               *, probes: Mapping[str, nn.Module] | None = None, generator: torch.Generator | None = None,
               step: int = 0) -> dict[str, float]:
    """One iteration: head forward on anchors and positives, STEGO loss (+ probe losses), backward, step."""
    head.train()
    code, code_pos = head(batch.feats), head(batch.feats_pos)  # (B, D, h, w)
    terms = stego_loss(head.loss_features(batch.feats), code, head.loss_features(batch.feats_pos), code_pos,
                       config.loss, generator=generator)
    probe_losses = {name: probe.loss(code.detach(), batch.label) for name, probe in (probes or {}).items()}
    total = terms.total + sum(probe_losses.values())
    if not torch.isfinite(total):
        parts = {"stego": terms.total, **probe_losses}
        raise FloatingPointError(
            f"non-finite loss at step {step}: " + ", ".join(f"{k}={v.detach().item()}" for k, v in parts.items())
            + "; parameters were not updated. Check the features for NaN/Inf "
            "(torch.isfinite(feats).all()) or lower the learning rate.")
    for opt in optimizers:
        opt.zero_grad(set_to_none=True)
    total.backward()
    for opt in optimizers:
        opt.step()
    values = {"loss": terms.total, "self": terms.self_loss, "knn": terms.knn_loss, "random": terms.random_loss,
              "S_self": terms.self_corr.mean(), "S_knn": terms.knn_corr.mean(),
              "S_random": terms.random_corr.mean(), **{f"probe/{k}": v for k, v in probe_losses.items()}}
    return {k: v.detach().item() for k, v in values.items()}


def build_head(config: TrainConfig, in_dim: int) -> SegmentationHead:
    """The head `config` describes, initialised from torch's global RNG (`train` seeds it with config.seed)."""
    return SegmentationHead(in_dim, config.dim, kind=config.head_kind, dropout=config.dropout)


def initial_head(config: TrainConfig, in_dim: int) -> SegmentationHead:
    """The head a run of `config` starts from (same seed, same initialisation), in eval mode."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        return build_head(config, in_dim).eval()


def run_dir_for(config: TrainConfig, source: Source, probes: Mapping[str, nn.Module] | None = None) -> Path:
    """A run folder under <cache>/runs named by the config, the data and the probes: same inputs, same folder."""
    spec = json.dumps({"config": dataclasses.asdict(config), "source": source.key,
                       "probes": {k: repr(v) for k, v in (probes or {}).items()}}, sort_keys=True)
    digest = hashlib.sha1(spec.encode()).hexdigest()[:16]
    return cache_dir() / "runs" / f"d{config.dim}-b{config.batch_size}-s{config.steps}-seed{config.seed}-{digest}"


def train(config: TrainConfig, source: Source, *, probes: Mapping[str, nn.Module] | None = None,
          run_dir: str | Path | None = None, checkpoint_every: int = 0, val_fn: ValFn | None = None,
          val_every: int = 0, stop_at: int | None = None, device: torch.device | str | None = None,
          progress: bool = True) -> TrainResult:
    """Train a head for `config.steps` iterations (or until `stop_at`), resuming from `run_dir` if it has a checkpoint.

    Checkpoints go to `run_dir` every `checkpoint_every` iterations and at the end; `val_fn(head, probes,
    step)` runs (head in eval mode) every `val_every` iterations and its numbers join the history as "val/...".
    Raises FloatingPointError naming the iteration if the loss becomes NaN or infinite.
    """
    device = torch.device(device or "cpu")
    if config.batch_size < 2 or config.batch_size > len(source):
        raise ValueError(f"batch_size must be between 2 (random partners) and the {len(source)} training "
                         f"images, got {config.batch_size}")
    run_dir = Path(run_dir) if run_dir is not None else None
    probes = dict(probes or {})
    end = min(config.steps, stop_at) if stop_at is not None else config.steps
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(config.seed)  # the run's own RNG stream: initialisation, then dropout
        head = build_head(config, source.in_dim).to(device)
        for probe in probes.values():
            probe.to(device)
        optimizers = [torch.optim.Adam(head.parameters(), lr=config.lr)]
        optimizers += [torch.optim.Adam(p.parameters(), lr=config.probe_lr) for p in probes.values()]
        loop = _Loop(config, len(source), device)
        if run_dir is not None and (run_dir / CHECKPOINT).is_file():
            loop.load(run_dir / CHECKPOINT, source.key, head, probes, optimizers)
        bar = _progress(progress, config.steps, loop.step)
        start = time.perf_counter() - loop.seconds
        while loop.step < end:
            indices = loop.next_indices()
            positives = sample_positives(source.nns, indices, num_neighbors=config.num_neighbors,
                                         generator=loop.generator)
            batch = source.batch(indices, positives, device)
            metrics = train_step(head, batch, config, optimizers, probes=probes, generator=loop.generator,
                                 step=loop.step + 1)
            loop.step += 1
            loop.seconds = time.perf_counter() - start
            metrics = {"step": loop.step, **metrics, "seconds": round(loop.seconds, 3)}
            if val_fn is not None and val_every and loop.step % val_every == 0:
                metrics |= _validate(val_fn, head, probes, loop.step)
            loop.history.append(metrics)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{metrics['loss']:.4f}")
            if run_dir is not None and checkpoint_every and loop.step % checkpoint_every == 0:
                loop.save(run_dir, source.key, head, probes, optimizers)
        if bar is not None:
            bar.close()
        if run_dir is not None:
            loop.save(run_dir, source.key, head, probes, optimizers)
    head.eval()
    return TrainResult(head, probes, loop.history, run_dir)


def _validate(val_fn: ValFn, head: SegmentationHead, probes: Mapping[str, nn.Module], step: int) -> dict:
    head.eval()
    try:
        with torch.no_grad():
            return {f"val/{k}": float(v) for k, v in val_fn(head, probes, step).items()}
    finally:
        head.train()


def _progress(enabled: bool, total: int, initial: int):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc="training head", unit="it")


class _Loop:
    """The loop's mutable state: iteration, data order, RNG and history; saved and restored exactly."""

    def __init__(self, config: TrainConfig, n_images: int, device: torch.device) -> None:
        self.config, self.device = config, device
        self.per_epoch = n_images // config.batch_size   # full batches only: every batch has batch_size images
        self.generator = torch.Generator().manual_seed(config.seed)   # CPU: the same draws on every device
        self.order, self.position = torch.randperm(n_images, generator=self.generator), 0
        self.step, self.seconds, self.history = 0, 0.0, []

    def next_indices(self) -> Tensor:
        if self.position == self.per_epoch:
            self.order, self.position = torch.randperm(len(self.order), generator=self.generator), 0
        B = self.config.batch_size
        self.position += 1
        return self.order[(self.position - 1) * B:self.position * B]

    def save(self, run_dir: Path, source_key: str, head: nn.Module, probes: Mapping[str, nn.Module],
             optimizers: list[torch.optim.Optimizer]) -> None:
        state = {
            "config": dataclasses.asdict(self.config), "source": source_key, "step": self.step,
            "seconds": self.seconds, "head": head.state_dict(),
            "probes": {k: p.state_dict() for k, p in probes.items()},
            "optimizers": [opt.state_dict() for opt in optimizers], "generator": self.generator.get_state(),
            "torch_rng": torch.get_rng_state(), "order": self.order, "position": self.position,
            "history": self.history,
        }
        if self.device.type == "cuda":
            state["cuda_rng"] = torch.cuda.get_rng_state(self.device)
        save_atomic(state, run_dir / CHECKPOINT)
        _write_history(run_dir, self.history)

    def load(self, path: Path, source_key: str, head: nn.Module, probes: Mapping[str, nn.Module],
             optimizers: list[torch.optim.Optimizer]) -> None:
        state = torch.load(path, map_location="cpu", weights_only=True)
        ours = dataclasses.asdict(self.config)
        if ({**state["config"], "steps": 0} != {**ours, "steps": 0}) or state["source"] != source_key:
            raise ValueError(f"{path} belongs to another run (config {state['config']}, data {state['source']!r}); "
                             "pass another run_dir (e.g. run_dir_for(config, source)) or delete that folder")
        if state["step"] > self.config.steps:
            raise ValueError(f"{path} is at iteration {state['step']}, beyond steps={self.config.steps}; "
                             "ask for at least as many steps, or pass another run_dir")
        if sorted(state["probes"]) != sorted(probes):
            raise ValueError(f"{path} was trained with probes {sorted(state['probes'])}, not {sorted(probes)}")
        head.load_state_dict(state["head"])
        for name, probe in probes.items():
            probe.load_state_dict(state["probes"][name])
        for opt, opt_state in zip(optimizers, state["optimizers"], strict=True):
            opt.load_state_dict(opt_state)
        self.generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        if "cuda_rng" in state and self.device.type == "cuda":
            torch.cuda.set_rng_state(state["cuda_rng"], self.device)
        self.order, self.position = state["order"], state["position"]
        self.step, self.seconds, self.history = state["step"], state["seconds"], state["history"]


def _write_history(run_dir: Path, history: list[dict[str, float]]) -> None:
    """history.json and history.csv (one row per iteration) beside the checkpoint, both atomically."""
    from stego_lite.data.files import write_json_atomic

    write_json_atomic(run_dir / "history.json", history)
    columns = list(dict.fromkeys(k for row in history for k in row))
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=columns, restval="")
    writer.writeheader()
    writer.writerows(history)
    tmp = run_dir / ".history.csv.tmp"
    tmp.write_text(text.getvalue())
    tmp.replace(run_dir / "history.csv")


# ---------------------------------------------------------------------------------------------------------
# Diagnostics for the chapter and for tuning: S distributions split by ground-truth label agreement


class Diagnostics(NamedTuple):
    terms: LossTerms                 # the loss on one batch, head in eval mode (no dropout)
    same_label: dict[str, Tensor]    # "self" | "knn" | "random" -> int8 like the S tensor: 1 same, 0 not, -1 unknown


def diagnose(head: SegmentationHead, source: FeatureSource, config: TrainConfig, indices: Tensor, *,
             seed: int = 0) -> Diagnostics:
    """The loss terms and their S tensors on the images `indices` (B,), with label agreement of every pair."""
    if source.labels is None:
        raise ValueError("diagnose needs labels: build the FeatureSource with labels (FeatureSource.from_cache)")
    device = next(head.parameters()).device
    generator = torch.Generator().manual_seed(seed)
    positives = sample_positives(source.nns, indices, num_neighbors=config.num_neighbors, generator=generator)
    batch = source.batch(indices, positives, device)
    was_training = head.training
    head.eval()
    with torch.no_grad():
        code, code_pos = head(batch.feats), head(batch.feats_pos)
        terms = stego_loss(batch.feats, code, batch.feats_pos, code_pos, config.loss, generator=generator)
    head.train(was_training)
    grid = tuple(batch.feats.shape[-2:])
    label, label_pos = batch.label, source.labels[positives].long().to(device)
    anchors = sample_labels(label, terms.coords[0], grid)
    agreement = {"self": same_label(anchors, anchors),
                 "knn": same_label(anchors, sample_labels(label_pos, terms.coords[1], grid)),
                 "random": torch.cat([same_label(anchors, sample_labels(label[perm], terms.coords[1], grid))
                                      for perm in terms.partners])}
    return Diagnostics(terms, agreement)


def training_set(preset: str) -> Dataset:
    """The training split a preset was made for (SynthStuff; COCO-Stuff/Cityscapes five-crop; Potsdam)."""
    from stego_lite import data

    p = get_preset(preset)
    if preset == "synthstuff":
        return data.SYNTHSTUFF_OFFLINE.dataset("train")
    transform = data.SegTransform(p.res)
    if p.five_crop:
        return data.FiveCropDataset(preset, "train", transform=transform)
    return data.DATASETS[preset](split="train", transform=transform)

