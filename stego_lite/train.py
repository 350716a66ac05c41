"""Training STEGO's head: a plain PyTorch loop, resumable exactly, fast from cached features.

    config = TrainConfig.from_preset("synthstuff")
    source = FeatureSource.from_cache(backbone, dataset)   # frozen features + KNN lists, cached on disk
    result = train(config, source, run_dir=run_dir_for(config, source))
    result.head, result.history                            # trained head, one dict per iteration

One iteration = one batch of anchors and their KNN positives, one backward pass, one step of each Adam
optimiser (head 5e-4, each probe 5e-3; reference §6); `steps` counts iterations (§9.11). Probes are
optional: any `nn.Module` with a method `loss(code, label) -> scalar Tensor`, where `code` is the
detached head output (B, D, h, w) and `label` (B, H, W) int64 (-1 = ignore), trains jointly on its own
optimiser, as in STEGO (the codes are detached, so probes never change the head).

A run directory holds `checkpoint.pt` (model, optimisers, RNG states, data order, history; written
atomically) and `history.json` / `history.csv`. Calling `train` again with the same directory resumes
from the checkpoint and gives bit-identical parameters to an uninterrupted run; a finished run returns
at once, which is how the book reuses trained heads, and a larger `steps` extends it (nothing in the
loop depends on the total: there is no learning-rate schedule).

Under torchrun (`stego_lite.ddp`) the head and probes train under DDP: `batch_size` is the global batch,
each rank computes its rows of it, and the run equals the one-process run with that batch.
"""
from __future__ import annotations

import contextlib
import csv
import dataclasses
import io
import pickle
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from stego_lite import distributed
from stego_lite.cache import checksum, keyed_path
from stego_lite.env import autocast, cache_dir
from stego_lite.files import (
    file_lock, remove_stale_temporaries, save_torch_atomic, write_atomic, write_json_atomic,
)
from stego_lite.head import SegmentationHead
from stego_lite.knn import NUM_NEIGHBORS, sample_positives
from stego_lite.loss import LossConfig, LossTerms, same_label, sample_labels, stego_loss
from stego_lite.progress import progress as progress_bar
from stego_lite.sources import Batch, FeatureSource, ImageSource

__all__ = [
    "Batch", "Diagnostics", "FeatureSource", "ImageSource", "TrainConfig", "TrainResult", "build_head",
    "diagnose", "initial_head", "run_dir_for", "train", "train_step",
]
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
        """A preset's dim, batch, steps, learning rate and loss (profiles.PRESETS), then `overrides`."""
        from stego_lite.profiles import get_preset

        return get_preset(name).train_config(**overrides)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TrainConfig:
        """Inverse of dataclasses.asdict (as stored in checkpoints)."""
        return cls(**{**d, "loss": LossConfig(**d["loss"])})


Source = FeatureSource | ImageSource
ValFn = Callable[[SegmentationHead, Mapping[str, nn.Module], int], Mapping[str, float]]


class TrainResult(NamedTuple):
    head: SegmentationHead            # in eval mode
    probes: dict[str, nn.Module]
    history: list[dict[str, float]]   # per iteration: "step", "loss", each term, mean S per term, ...
    run_dir: Path | None


def build_head(config: TrainConfig, in_dim: int) -> SegmentationHead:
    """The head `config` describes, initialised from torch's global RNG (`train` seeds it first)."""
    return SegmentationHead(in_dim, config.dim, kind=config.head_kind, dropout=config.dropout)


def initial_head(config: TrainConfig, in_dim: int) -> SegmentationHead:
    """The head a run of `config` starts from (same seed, same initialisation), in eval mode."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        return build_head(config, in_dim).eval()


def train_step(head: SegmentationHead, batch: Batch, config: TrainConfig,
               optimizers: list[torch.optim.Optimizer], *, probes: Mapping[str, nn.Module] | None = None,
               generator: torch.Generator | None = None, step: int = 0) -> dict[str, float]:
    """One iteration: head on anchors and positives, STEGO loss (+ probe losses), backward, optimiser steps.

    Returns the loss, its three (unweighted) terms, the mean S of each term and each probe's loss.
    """
    head.train()
    with autocast(batch.feats.device):   # bfloat16 on CUDA; the loss and the probes read float32
        code, code_pos = head(batch.feats).float(), head(batch.feats_pos).float()  # (B, D, h, w)
    terms = stego_loss(head.loss_features(batch.feats), code, head.loss_features(batch.feats_pos), code_pos,
                       config.loss, generator=generator)
    probe_losses = {name: probe.loss(code.detach(), batch.label) for name, probe in (probes or {}).items()}
    total = terms.total + sum(probe_losses.values())
    if not torch.isfinite(total):
        parts = {"stego": terms.total, **probe_losses}
        parts = ", ".join(f"{k}={v.detach().item()}" for k, v in parts.items())
        raise FloatingPointError(f"non-finite loss at step {step}: {parts}; parameters were not updated. "
                                 "Check the features for NaN/Inf (torch.isfinite(feats).all()) or lower the "
                                 "learning rate.")
    for opt in optimizers:
        opt.zero_grad(set_to_none=True)
    total.backward()
    for opt in optimizers:
        opt.step()
    values = {"loss": terms.total, "self": terms.self_loss, "knn": terms.knn_loss,
              "random": terms.random_loss, "S_self": terms.self_corr.mean(), "S_knn": terms.knn_corr.mean(),
              "S_random": terms.random_corr.mean(), **{f"probe/{k}": v for k, v in probe_losses.items()}}
    return {k: v.detach().item() for k, v in values.items()}


def run_dir_for(config: TrainConfig, source: Source, probes: Mapping[str, nn.Module] | None = None) -> Path:
    """A run folder under <cache>/runs named by config, data and probes: same inputs, same folder."""
    spec = {"config": dataclasses.asdict(config), "source": source.key,
            "probes": {k: repr(v) for k, v in (probes or {}).items()}}
    stem = f"d{config.dim}-b{config.batch_size}-s{config.steps}-seed{config.seed}"
    return keyed_path(cache_dir() / "runs", stem, spec, suffix="")


def train(config: TrainConfig, source: Source, *, probes: Mapping[str, nn.Module] | None = None,
          run_dir: str | Path | None = None, checkpoint_every: int = 0, val_fn: ValFn | None = None,
          val_every: int = 0, stop_at: int | None = None, device: torch.device | str | None = None,
          progress: bool = True) -> TrainResult:
    """Train a head for `config.steps` iterations (or until `stop_at`), resuming from `run_dir`'s checkpoint.

    Checkpoints go to `run_dir` every `checkpoint_every` iterations and at the end. `val_fn(head, probes,
    step)` runs every `val_every` iterations (head in eval mode, no grad); its numbers join the history as
    "val/<name>". Raises FloatingPointError naming the iteration if the loss becomes NaN or infinite. The
    caller's global RNG state is left as it was: the run draws from its own, seeded by `config.seed`.
    """
    device = torch.device(device or "cpu")
    if not 2 <= config.batch_size <= len(source):
        raise ValueError(f"batch_size must be between 2 (random partners) and the {len(source)} training "
                         f"images, got {config.batch_size}")
    probes = dict(probes or {})
    lock = _run_lock(run_dir if distributed.is_main() else None)   # rank 0 speaks for a torchrun job
    with lock, torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(config.seed)  # the run's own RNG stream: initialisation, then dropout
        loop = _Loop(config, source, build_head(config, source.in_dim).to(device), probes, device)
        if run_dir is not None and (Path(run_dir) / CHECKPOINT).is_file():
            loop.load(Path(run_dir) / CHECKPOINT)
        if distributed.world_size() > 1:   # torchrun: DDP, each rank computing its rows of every batch
            from stego_lite.ddp import data_parallel

            loop.next_batch, loop.model = data_parallel(loop.head, probes, config, source, loop.step)
        writes = run_dir is not None and distributed.is_main()   # rank 0 alone writes the run folder
        end = min(config.steps, stop_at) if stop_at is not None else config.steps
        bar = progress_bar(enabled=progress, total=config.steps, initial=loop.step, desc="training head",
                           unit="it")
        while loop.step < end:
            metrics = loop.iteration()
            if val_fn is not None and val_every and loop.step % val_every == 0:
                metrics |= _validate(val_fn, loop.head, probes, loop.step)
            bar.update(1)
            bar.set_postfix(loss=f"{metrics['loss']:.4f}")
            if writes and checkpoint_every and loop.step % checkpoint_every == 0:
                loop.save(Path(run_dir))
        bar.close()
        if writes:
            loop.save(Path(run_dir))
    return TrainResult(loop.head.eval(), probes, loop.history, Path(run_dir) if run_dir is not None else None)


@contextlib.contextmanager
def _run_lock(run_dir: str | Path | None):
    """One process at a time in a run folder: a second one waits (and says for whom), then resumes from
    the first one's checkpoint. Temporary files of killed writers are removed."""
    if run_dir is None:
        yield
        return
    run_dir = Path(run_dir)
    with file_lock(run_dir / ".lock", what=f"the training run in {run_dir}"):
        for name in (CHECKPOINT, "history.json", "history.csv"):
            remove_stale_temporaries(run_dir / name)
        yield


def _validate(val_fn: ValFn, head: SegmentationHead, probes: Mapping[str, nn.Module], step: int) -> dict:
    head.eval()
    try:
        with torch.no_grad():
            return {f"val/{k}": float(v) for k, v in val_fn(head, probes, step).items()}
    finally:
        head.train()


class EpochOrder:
    """Full batches of image indices in a shuffled order, reshuffled every epoch, drawn from `generator`.

    `order` and `position` are the state a checkpoint keeps; a last partial batch is skipped, so every
    batch has `batch_size` images.
    """

    def __init__(self, n_images: int, batch_size: int, generator: torch.Generator) -> None:
        self.batch_size, self.generator = batch_size, generator
        self.per_epoch = n_images // batch_size
        self.order, self.position = torch.randperm(n_images, generator=generator), 0

    def next(self) -> Tensor:
        """The next batch's indices (batch_size,)."""
        if self.position == self.per_epoch:
            self.order, self.position = torch.randperm(len(self.order), generator=self.generator), 0
        B = self.batch_size
        indices = self.order[self.position * B:(self.position + 1) * B]
        self.position += 1
        return indices


def next_batch(source: Source, batches: EpochOrder, config: TrainConfig, device: torch.device) -> Batch:
    """The next batch of `batches` with a KNN positive per image (ranks 1..config.num_neighbors)."""
    return source.batch(*draw_indices(source, batches, config), device)


def draw_indices(source: Source, batches: EpochOrder, config: TrainConfig) -> tuple[Tensor, Tensor]:
    """The next batch's image indices and a KNN positive for each (ranks 1..config.num_neighbors)."""
    indices = batches.next()
    return indices, sample_positives(source.nns, indices, num_neighbors=config.num_neighbors,
                                     generator=batches.generator)


def settings_differences(saved: dict[str, Any], config: TrainConfig) -> list[str]:
    """The settings in which a checkpoint's saved config differs from `config`, sorted; empty for the same
    run (the number of steps may differ: a run resumes towards more)."""
    current = dataclasses.asdict(config)
    return sorted(k for k in set(saved) | set(current) if k != "steps" and saved.get(k) != current.get(k))


class _Loop:
    """A run's modules and state (iteration, data order, RNGs, history), saved and restored exactly."""

    def __init__(self, config: TrainConfig, source: Source, head: SegmentationHead,
                 probes: dict[str, nn.Module], device: torch.device) -> None:
        self.config, self.source, self.head, self.probes, self.device = config, source, head, probes, device
        for probe in probes.values():
            probe.to(device)
        self.optimizers = [torch.optim.Adam(head.parameters(), lr=config.lr)]
        self.optimizers += [torch.optim.Adam(p.parameters(), lr=config.probe_lr) for p in probes.values()]
        self.generator = torch.Generator().manual_seed(config.seed)  # on the CPU: same draws on any device
        self.batches = EpochOrder(len(source), config.batch_size, self.generator)
        self.step, self.seconds, self.history = 0, 0.0, []
        self.next_batch, self.model = next_batch, head   # what `ddp.data_parallel` replaces

    def iteration(self) -> dict[str, float]:
        """One training iteration on the next batch of the epoch's shuffled order; appends to the history."""
        start = time.perf_counter()
        batch = self.next_batch(self.source, self.batches, self.config, self.device)
        metrics = train_step(self.model, batch, self.config, self.optimizers, probes=self.probes,
                             generator=self.generator, step=self.step + 1)
        self.step += 1
        self.seconds += time.perf_counter() - start
        self.history.append({"step": self.step, **metrics, "seconds": round(self.seconds, 3)})
        return self.history[-1]

    def save(self, run_dir: Path) -> None:
        state = {
            "config": dataclasses.asdict(self.config), "source": self.source.key, "step": self.step,
            "seconds": self.seconds, "head": self.head.state_dict(),
            "probes": {k: p.state_dict() for k, p in self.probes.items()},
            "optimizers": [opt.state_dict() for opt in self.optimizers],
            "generator": self.generator.get_state(), "torch_rng": torch.get_rng_state(),
            "order": self.batches.order, "position": self.batches.position, "history": self.history,
        }
        if self.device.type == "cuda":
            state["cuda_rng"] = torch.cuda.get_rng_state(self.device)
        state["checksum"] = checksum(state)   # verified on loading: damaged bytes are never trained on
        save_torch_atomic(state, run_dir / CHECKPOINT)
        _write_history(run_dir, self.history)

    def load(self, path: Path) -> None:
        state = read_checkpoint(path)
        if settings_differences(state["config"], self.config) or state["source"] != self.source.key:
            raise ValueError(f"{path} belongs to another run (config {state['config']}, data "
                             f"{state['source']!r}); pass another run_dir (e.g. run_dir_for(config, source)) "
                             "or delete that folder")
        if state["step"] > self.config.steps:
            raise ValueError(f"{path} is at iteration {state['step']}, beyond steps={self.config.steps}; "
                             "ask for at least as many steps, or pass another run_dir")
        if sorted(state["probes"]) != sorted(self.probes):
            raise ValueError(f"{path} was trained with probes {sorted(state['probes'])}, "
                             f"not {sorted(self.probes)}")
        self.head.load_state_dict(state["head"])
        for name, probe in self.probes.items():
            probe.load_state_dict(state["probes"][name])
        for opt, opt_state in zip(self.optimizers, state["optimizers"], strict=True):
            opt.load_state_dict(opt_state)
        self.generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        if "cuda_rng" in state and self.device.type == "cuda":
            torch.cuda.set_rng_state(state["cuda_rng"], self.device)
        self.batches.order, self.batches.position = state["order"], state["position"]
        self.step, self.seconds, self.history = state["step"], state["seconds"], state["history"]


class CheckpointError(RuntimeError):
    """A run's checkpoint cannot be used: damaged, or not a checkpoint; the message names file and fix."""


def read_checkpoint(path: Path) -> dict[str, Any]:
    """A run's checkpoint, its checksum verified; CheckpointError naming the file and the fix otherwise."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(state, dict) or "step" not in state:
            raise ValueError("it is not a training checkpoint")
        stored = state.pop("checksum", None)
        if stored is not None and stored != checksum(state):
            raise ValueError("its content does not match its checksum")
    except (OSError, RuntimeError, EOFError, ValueError, pickle.UnpicklingError) as err:
        raise CheckpointError(f"{path} is damaged ({str(err).splitlines()[0]}); delete it to train that run "
                              f"from the start, or pass another --run-dir / run_dir") from None
    return state


def _write_history(run_dir: Path, history: list[dict[str, float]]) -> None:
    """history.json and history.csv (one row per iteration) beside the checkpoint, both atomically."""
    write_json_atomic(run_dir / "history.json", history)
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=list(dict.fromkeys(k for row in history for k in row)),
                            restval="")
    writer.writeheader()
    writer.writerows(history)
    write_atomic(run_dir / "history.csv", lambda tmp: tmp.write_text(text.getvalue()))


# ---------------------------------------------------------------------------------------------------------
# Diagnostics for the chapter and for tuning: S distributions split by ground-truth label agreement


class Diagnostics(NamedTuple):
    terms: LossTerms               # the loss on one batch, head in eval mode (no dropout)
    same_label: dict[str, Tensor]  # "self" | "knn" | "random" -> int8, shaped like that term's S tensor:
    #                                1 same label, 0 different labels, -1 unknown (an ignored pixel)


def diagnose(head: SegmentationHead, source: FeatureSource, config: TrainConfig, indices: Tensor, *,
             seed: int = 0) -> Diagnostics:
    """The loss terms and S tensors on the images `indices` (B,), and the label agreement of each pair."""
    if source.labels is None:
        raise ValueError("diagnose needs labels: build the FeatureSource with labels "
                         "(FeatureSource.from_cache has them)")
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
    partners = [sample_labels(label[perm], terms.coords[1], grid) for perm in terms.partners]
    agreement = {"self": same_label(anchors, anchors),
                 "knn": same_label(anchors, sample_labels(label_pos, terms.coords[1], grid)),
                 "random": torch.cat([same_label(anchors, partner) for partner in partners])}
    return Diagnostics(terms, agreement)
