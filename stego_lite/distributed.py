"""torch.distributed in one place: the processes `torchrun` starts, and what every stage needs from them.

    torchrun --nproc-per-node 2 -m stego_lite train --preset synthstuff   # 2 processes, "ranks" 0 and 1
    distributed.init()                       # join the job torchrun started; False in a plain process
    distributed.rank(), world_size(), is_main()
    distributed.check_same({"seed": 0}, "training")     # refuse ranks that were given other settings
    lo, hi = distributed.row_range(n, block)            # this rank's rows: contiguous, block-aligned
    rows = distributed.all_gather_rows(mine, n, block)  # every rank's rows, in order, on every rank
    distributed.all_reduce_sum(confusion)

One process is the default and changes nothing: without `init` (or with one rank) every helper is the
identity, and the stages run exactly as before. Under torchrun the backend is NCCL on GPUs and gloo on CPUs,
and every collective has a timeout (`$STEGO_LITE_DIST_TIMEOUT` seconds, default 1800): a rank that dies
makes the others stop with `RankFailure` at once (gloo: the connection closes) or after the timeout (a
hung rank, NCCL), instead of waiting forever. Rerunning the command resumes: training from its last
checkpoint, extraction from its finished shards. Rank 0 alone writes checkpoints and cache files; the
cache folder must therefore be one that every node sees.

What each stage splits, and how it stays equal to one process: `sharded` (feature extraction and KNN
lists), `ddp` (training), `evaluate.evaluate` (confusion matrices summed).
"""
from __future__ import annotations

import contextlib
import datetime
import os
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import Tensor

from stego_lite import cache

T = TypeVar("T")
TIMEOUT_ENV = "STEGO_LITE_DIST_TIMEOUT"
DEFAULT_TIMEOUT = 1800.0   # seconds; torch's own default for gloo
RERUN = "rerun the same command to resume (training from its last checkpoint, extraction from its shards)"


class RankFailure(RuntimeError):
    """A collective did not complete: another rank died or hung (its own output says why)."""


class SettingsMismatch(ValueError):
    """The ranks of one job were started with different settings."""


# ---------------------------------------------------------------------------------------------------------
# The process group


def active() -> bool:
    """True inside a process group of more than one rank."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    """True on rank 0, the one that writes files and prints (and in a plain process)."""
    return rank() == 0


def launched_by_torchrun() -> bool:
    """True when torchrun (or another launcher setting its variables) started more than one rank."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def timeout() -> float:
    """The collective timeout in seconds: $STEGO_LITE_DIST_TIMEOUT, else 1800."""
    value = os.environ.get(TIMEOUT_ENV, "")
    try:
        seconds = float(value) if value else DEFAULT_TIMEOUT
    except ValueError:
        raise ValueError(f"{TIMEOUT_ENV}={value!r} is not a number of seconds") from None
    if seconds <= 0:
        raise ValueError(f"{TIMEOUT_ENV} must be a positive number of seconds, got {value!r}")
    return seconds


def init(device: str | torch.device | None = None, command: Sequence[str] | None = None) -> bool:
    """Join the job torchrun started (its RANK, WORLD_SIZE, MASTER_ADDR, ... variables); False if none.

    NCCL when `device` is CUDA (or None and CUDA is available), otherwise gloo; the collective timeout
    is `timeout()`. Then checks that every rank runs the same `command` (default: sys.argv), stego_lite
    and torch versions, and folders.
    """
    if active():
        return True
    if not launched_by_torchrun():
        return False
    kind = torch.device(device).type if device is not None else (
        "cuda" if torch.cuda.is_available() else "cpu")
    backend = "nccl" if kind == "cuda" else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    try:
        dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout()))
    except (RuntimeError, ValueError) as err:
        raise RankFailure(f"could not join the torchrun job as rank {os.environ.get('RANK')} of "
                          f"{os.environ.get('WORLD_SIZE')} ({_first_line(err)}); check MASTER_ADDR/"
                          "MASTER_PORT (torchrun's --rdzv-endpoint) and that every rank was started") from err
    check_same(_job_settings(command), "the job (command line, versions, folders)")
    return True


def _job_settings(command: Sequence[str] | None) -> dict[str, Any]:
    from stego_lite import __version__, env

    return {"command": list(sys.argv[1:] if command is None else command), "stego_lite": __version__,
            "torch": torch.__version__, "cache": str(env.cache_dir()), "data": str(env.data_dir()),
            "timeout": timeout()}


def shutdown() -> None:
    """Leave the process group (a no-op outside one)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def device(default: str | torch.device) -> torch.device:
    """The device of this rank: cuda:LOCAL_RANK when `default` is CUDA under torchrun, else `default`."""
    default = torch.device(default)
    if active() and default.type == "cuda":
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return default


DISTRIBUTED_COMMANDS = ("train", "extract", "evaluate")


@contextlib.contextmanager
def launched(name: str, device: str | torch.device | None = None,
             command: Sequence[str] | None = None) -> Iterator[None]:
    """The command line's frame around command `name`: join the torchrun job if there is one, explain a
    failed rank or mismatched settings in one line, and leave the job."""
    if launched_by_torchrun() and name not in DISTRIBUTED_COMMANDS:
        raise SystemExit(f"python -m stego_lite {name} runs in one process; start it without torchrun "
                         f"(torchrun splits {', '.join(DISTRIBUTED_COMMANDS)})")
    try:
        init(device, command)
        yield
    except (RankFailure, SettingsMismatch) as err:
        raise SystemExit(f"python -m stego_lite: error on rank {rank()}: {err}") from None
    except RuntimeError as err:   # a collective inside torch (e.g. DDP's gradient all-reduce)
        if not active() or not _collective_error(err):
            raise
        raise SystemExit(f"python -m stego_lite: error on rank {rank()}: {_failure(err, 'a collective')}") \
            from None
    finally:
        shutdown()


def _collective_error(err: BaseException) -> bool:
    text = str(err).lower()
    return isinstance(err, getattr(dist, "DistError", ())) or any(
        word in text for word in ("gloo", "nccl", "connection", "timed out", "timeout", "peer"))


def _first_line(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    return f"{type(err).__name__}: {lines[0] if lines else ''}"


def _failure(err: BaseException, what: str) -> str:
    return (f"{what} across the {world_size()} ranks failed ({_first_line(err)}). Another rank has "
            f"probably died or hung (look at its output), or waited more than the {timeout():.0f} s timeout "
            f"(${TIMEOUT_ENV}); {RERUN}")


def _collective(what: str, call: Callable[[], T]) -> T:
    """Run one collective; a failure becomes RankFailure saying what this rank was waiting for."""
    try:
        return call()
    except RuntimeError as err:
        raise RankFailure(_failure(err, what)) from err


# ---------------------------------------------------------------------------------------------------------
# Collectives (the identity in one process)


def _comm_device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else \
        torch.device("cpu")


def barrier(what: str = "a barrier") -> None:
    if active():
        _collective(what, dist.barrier)


def all_gather_objects(obj: Any, what: str = "an exchange of settings") -> list[Any]:
    """Every rank's `obj` (picklable), in rank order."""
    if not active():
        return [obj]
    out: list[Any] = [None] * world_size()
    _collective(what, lambda: dist.all_gather_object(out, obj))
    return out


def all_reduce_sum(tensor: Tensor, what: str = "a sum") -> Tensor:
    """The elementwise sum of `tensor` over the ranks (a new tensor on `tensor`'s device)."""
    if not active():
        return tensor
    total = tensor.detach().to(_comm_device()).clone()
    _collective(what, lambda: dist.all_reduce(total, op=dist.ReduceOp.SUM))
    return total.to(tensor.device)


def everywhere(flag: bool, what: str = "a check") -> bool:
    """True if `flag` holds on every rank."""
    return bool(all_reduce_sum(torch.tensor([int(not flag)]), what).item() == 0)


def row_range(n: int, block: int, of_rank: int | None = None) -> tuple[int, int]:
    """Rows [lo, hi) of `of_rank` (default: this rank): contiguous runs of whole `block`-row blocks.

    Blocks are dealt out in order, so rank 0 has the first rows; a block is never split, so a chunked
    computation sees the same chunks as in one process.
    """
    if block < 1:
        raise ValueError(f"block must be positive, got {block}")
    r, world = rank() if of_rank is None else of_rank, world_size()
    blocks = -(-n // block)
    first, last = r * blocks // world, (r + 1) * blocks // world
    return min(first * block, n), min(last * block, n)


def all_gather_equal(t: Tensor, what: str = "gathering rows") -> Tensor:
    """Every rank's `t` (the same shape on each), concatenated along the first axis in rank order."""
    if not active():
        return t
    parts = [torch.empty_like(t) for _ in range(world_size())]
    _collective(what, lambda: dist.all_gather(parts, t.contiguous()))
    return torch.cat(parts)


def all_gather_rows(mine: Tensor, n: int, block: int, what: str = "gathering rows") -> Tensor:
    """Every rank's rows `row_range(n, block)` (its `mine`), concatenated in order: -> (n, ...) on every rank.

    `mine` must have this rank's number of rows (possibly 0) and the same trailing shape on every rank.
    """
    if not active():
        return mine
    sizes = [hi - lo for lo, hi in (row_range(n, block, r) for r in range(world_size()))]
    if mine.shape[0] != sizes[rank()]:
        raise ValueError(f"rank {rank()} holds {mine.shape[0]} rows, expected {sizes[rank()]}")
    padded = torch.zeros((max(sizes), *mine.shape[1:]), dtype=mine.dtype, device=_comm_device())
    padded[:mine.shape[0]] = mine.detach()
    parts = [torch.empty_like(padded) for _ in sizes]
    _collective(what, lambda: dist.all_gather(parts, padded))
    return torch.cat([part[:size] for part, size in zip(parts, sizes)]).to(mine.device)


def rows_of(dataset, block: int, what: str = "the data"):
    """This rank's part of `dataset` (a Subset of `row_range` rows); the dataset itself in one process."""
    if not active():
        return dataset
    from torch.utils.data import Subset

    check_same({"images": len(dataset), "block": block}, what)
    lo, hi = row_range(len(dataset), block)
    return Subset(dataset, range(lo, hi))


# ---------------------------------------------------------------------------------------------------------
# Same settings on every rank; one writer for cached results


def check_same(settings: Mapping[str, Any], what: str) -> None:
    """Raise SettingsMismatch naming each rank whose `settings` differ from rank 0's, and how.

    The settings are compared as their canonical JSON (`cache.canonical`, as the caches compare specs).
    """
    if not active():
        return
    settings = all_gather_objects(cache.canonical(dict(settings)), f"checking {what}")
    lines = [f"rank {r}: " + _difference(settings[0], theirs)
             for r, theirs in enumerate(settings) if theirs != settings[0]]
    if lines:
        raise SettingsMismatch(f"the {world_size()} ranks were started with different settings for {what}, "
                               f"compared with rank 0:\n  " + "\n  ".join(lines)
                               + "\nstart every rank with the same command, code and environment")


def _difference(ours: dict[str, Any], theirs: dict[str, Any], prefix: str = "") -> str:
    """`key: theirs (rank 0: ours)` for each differing key, recursively into dicts."""
    parts = []
    for key in sorted(set(ours) | set(theirs)):
        a, b = ours.get(key, "<missing>"), theirs.get(key, "<missing>")
        if isinstance(a, dict) and isinstance(b, dict):
            parts.append(_difference(a, b, f"{prefix}{key}."))
        elif a != b:
            parts.append(f"{prefix}{key}={b!r} (rank 0: {a!r})")
    return ", ".join(p for p in parts if p)


def load_or_compute(path: Path, spec: Any, compute: Callable[[], T], *, version: int,
                    mmap: bool = False) -> T:
    """`cache.load_or_compute` for a `compute` that every rank takes part in (it may use collectives).

    In one process it is `cache.load_or_compute`. Under torchrun every rank reads the file; if any
    misses it, all compute, rank 0 stores its result, and every rank reads it back (so the cache folder
    must be shared by every node).
    """
    if not active():
        return cache.load_or_compute(path, spec, compute, version=version, mmap=mmap)
    value = cache.read(path, spec, version=version, mmap=mmap)
    if everywhere(value is not None, f"looking up {path.name}"):
        return value
    result = compute()
    if is_main():   # writes the file and returns what it reads back, as the other ranks read it
        value = cache.load_or_compute(path, spec, lambda: result, version=version, mmap=mmap)
    barrier(f"waiting for rank 0 to write {path.name}")
    if not is_main():
        value = cache.read(path, spec, version=version, mmap=mmap)
    if value is None:
        raise OSError(f"rank {rank()} cannot read {path}, which rank 0 wrote: every rank must see the same "
                      "cache folder (put $STEGO_LITE_CACHE on a file system that every node mounts)")
    return value
