"""Training under torchrun: DDP over the head and probes, each rank computing its rows of every batch.

    loop.next_batch, loop.model = ddp.data_parallel(head, probes, config, source, start_step)

What `train.train` swaps in when `distributed.world_size() > 1`. `config.batch_size` is the global
batch; each rank loads batch_size / world_size of its images (running the backbone on them for an
`ImageSource`) and runs the head on them. The data order, the KNN positives, the dropout masks, the
sampled points and the random partners are all drawn for the whole batch, on every rank, from the same
seeded generators; the batch's features and codes are all-gathered and the loss on the sampled points
and the probes' losses are computed on the whole batch by every rank. The run is therefore that of one
process with the global batch, up to the order of floating-point sums: the same checkpoints (which rank
0 writes), resumable with any number of ranks.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import torch
from torch import Tensor, nn

from stego_lite import distributed


def data_parallel(head: nn.Module, probes: Mapping[str, nn.Module], config, source, start_step: int):
    """(next-batch function, the head the training step runs) for this rank, after checking that every
    rank has the same configuration, data, probes and starting iteration."""
    world = distributed.world_size()
    if config.batch_size % world:
        raise ValueError(f"batch_size {config.batch_size} is the global batch and must be a multiple of the "
                         f"{world} ranks (each computes batch_size / {world} images of every batch)")
    settings = {"config": dataclasses.asdict(config), "data": source.key, "start_iteration": start_step,
                "probes": {k: repr(v) for k, v in probes.items()}}
    distributed.check_same(settings, "training (another start_iteration: do all ranks see the run folder?)")
    return next_global_batch, RowsHead(head, probes)


def next_global_batch(source, batches, config, device: torch.device):
    """The next global batch, of which this rank loads its rows and gathers the others' (no gradient)."""
    from stego_lite.sources import Batch
    from stego_lite.train import draw_indices

    indices, positives = draw_indices(source, batches, config)   # the same draw on every rank
    lo, hi = _batch_rows(len(indices))
    mine = source.batch(indices[lo:hi], positives[lo:hi], device)
    parts = [mine.feats, mine.feats_pos] + ([mine.label] if mine.label is not None else [])
    gathered = [distributed.all_gather_equal(t, "gathering the batch") for t in parts]
    return Batch(gathered[0], gathered[1], gathered[2] if mine.label is not None else None)


def _batch_rows(batch: int) -> tuple[int, int]:
    """This rank's rows [lo, hi) of a global batch of `batch` images."""
    per_rank, rank = batch // distributed.world_size(), distributed.rank()
    return rank * per_rank, (rank + 1) * per_rank


class RowsHead(nn.Module):
    """The head of a whole global batch as the training step sees it, computed rank by rank under DDP.

    `forward(feats)` (B, C, h, w) runs the DDP-wrapped head on this rank's rows only, with the channel-
    dropout masks that one process draws for all B images, and gathers the codes of every rank: ->
    (B, D, h, w). The gradient of a code flows back to the rank that computed it (times world_size,
    which DDP's averaging divides out), so the head's gradient is the one-process gradient. The probes
    sit inside the same DDP module; their losses, on the gathered codes, are the same on every rank.
    """

    def __init__(self, head: nn.Module, probes: Mapping[str, nn.Module]) -> None:
        super().__init__()
        from torch.nn.parallel import DistributedDataParallel

        self.head = head
        param = next(head.parameters())
        ids = [param.device.index] if param.device.type == "cuda" else None
        self.ddp = DistributedDataParallel(_HeadAndProbes(head, probes), device_ids=ids)

    def forward(self, feats: Tensor) -> Tensor:
        lo, hi = _batch_rows(feats.shape[0])
        return _GatherRows.apply(self.ddp(feats[lo:hi], feats.shape[0], lo))

    def loss_features(self, feats: Tensor) -> Tensor:
        return self.head.loss_features(feats)


class _HeadAndProbes(nn.Module):
    """What DDP wraps: the head, whose forward runs on this rank's rows, and the probes (for their grads)."""

    def __init__(self, head: nn.Module, probes: Mapping[str, nn.Module]) -> None:
        super().__init__()
        self.head, self.probes = head, nn.ModuleDict(dict(probes))

    def forward(self, feats: Tensor, batch: int, first_row: int) -> Tensor:
        original = self.head.dropout
        self.head.dropout = _BatchRowsDropout(original.p, batch, first_row).train(original.training)
        try:
            return self.head(feats)
        finally:
            self.head.dropout = original


class _BatchRowsDropout(nn.Module):
    """Channel dropout of rows [first, first + b) of a batch of `batch` maps: the mask is drawn for the
    whole batch, exactly as `nn.Dropout2d` draws it (bernoulli(1 - p) / (1 - p) per map and channel)."""

    def __init__(self, p: float, batch: int, first: int) -> None:
        super().__init__()
        self.p, self.batch, self.first = p, batch, first

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0:
            return x
        mask = torch.empty((self.batch, x.shape[1]) + (1,) * (x.ndim - 2), dtype=x.dtype, device=x.device)
        mask.bernoulli_(1 - self.p).div_(1 - self.p)
        return x * mask[self.first:self.first + x.shape[0]]


class _GatherRows(torch.autograd.Function):
    """All-gather of equal row blocks; backward keeps this rank's block, times world_size (see RowsHead)."""

    @staticmethod
    def forward(ctx, rows: Tensor) -> Tensor:
        ctx.lo, ctx.hi = _batch_rows(rows.shape[0] * distributed.world_size())
        return distributed.all_gather_equal(rows, "gathering the codes")

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        return grad[ctx.lo:ctx.hi] * distributed.world_size()
