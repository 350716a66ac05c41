"""The released STEGO checkpoints: a Lightning `.ckpt` file -> backbone, head and probes (reference §1.6).

    stego = load_released("cocostuff27")                 # downloads once into torch.hub's cache
    feats = stego.backbone.features(img)                 # (B, 3, H, W) -> (B, 768, H/8, W/8)
    code = stego.head(feats)                             # (B, 768, h, w) -> (B, 90, h, w)
    clusters = stego.cluster_probe.predict(code)         # (B, 90, h, w) -> (B, h, w) cluster ids
    stego.cfg["pos_inter_shift"], stego.classes[0]       # the training config, the class names

Koenig et al. found that the saved configs, not the repository's config file, hold the hyperparameters of
the released models. A `.ckpt` file is a pickle: besides tensors it holds the config as OmegaConf objects
and Lightning's trainer state. Unpickling it with `torch.load(weights_only=False)` would run whatever the
file asks for, and reading the config that way needs omegaconf installed. `read_checkpoint` uses a restricted
unpickler instead: tensors and plain containers are rebuilt, OmegaConf and Lightning objects become inert
records, and every other global in the file raises an `UnpicklingError` that names it.

Key layout of `state_dict` (STEGO's `LitUnsupervisedSegmenter`) -> our modules:

    net.model.*                      -> backbone (a DINO ViT, same parameter names)
    net.cluster1.0.{weight,bias}     -> head.linear             (Conv1x1 C -> D)
    net.cluster2.0.* / net.cluster2.2.*  -> head.nonlinear.0 / .2  (Conv1x1 C -> C, ReLU, Conv1x1 C -> D)
    cluster_probe.clusters           -> cluster_probe.clusters  (K, D)
    linear_probe.{weight,bias}       -> linear_probe.linear     (Conv1x1 D -> n_classes)
    train_cluster_probe.*, decoder.* -> ignored (built but unused by STEGO)
"""
from __future__ import annotations

import _compat_pickle
import io
import os
import pickle
import types
from collections import OrderedDict, defaultdict
from dataclasses import dataclass
from functools import cache, lru_cache
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from stego_lite import backbone as bb
from stego_lite.checkpoints import cached_download, shorten, state_mismatch, unreadable
from stego_lite.head import SegmentationHead
from stego_lite.probes import ClusterProbe, LinearProbe

_STEGO_URL = "https://marhamilresearch4.blob.core.windows.net/stego-public/saved_models"

# The models of STEGO's download_models.py: COCO-Stuff-27 and Cityscapes on ViT-B/8, Potsdam-3 on ViT-S/8.
RELEASED: dict[str, str] = {
    "cocostuff27": f"{_STEGO_URL}/cocostuff27_vit_base_5.ckpt",
    "cityscapes": f"{_STEGO_URL}/cityscapes_vit_base_1.ckpt",
    "potsdam": f"{_STEGO_URL}/potsdam_test.ckpt",
}

# (cfg.model_type, cfg.dino_patch_size) -> our backbone name
BACKBONES: dict[tuple[str, int], str] = {
    ("vit_small", 8): "dino_vits8",
    ("vit_small", 16): "dino_vits16",
    ("vit_base", 8): "dino_vitb8",
    ("vit_base", 16): "dino_vitb16",
}

# checkpoint key prefix -> (part of ReleasedStego, key prefix inside that module)
KEY_MAP: tuple[tuple[str, str, str], ...] = (
    ("net.model.", "backbone", ""),
    ("net.cluster1.0.", "head", "linear."),
    ("net.cluster2.0.", "head", "nonlinear.0."),
    ("net.cluster2.2.", "head", "nonlinear.2."),
    ("cluster_probe.", "cluster_probe", ""),
    ("linear_probe.", "linear_probe", "linear."),
)
IGNORED_PREFIXES = ("train_cluster_probe.", "decoder.")  # saved by STEGO, never used for predictions


@dataclass(frozen=True)
class ReleasedStego:
    """A released STEGO model, every module on the CPU in eval mode; the backbone is frozen.

    backbone: images (B, 3, H, W) -> features (B, C, h, w); head: features -> code (B, D, h, w);
    cluster_probe / linear_probe: code -> (B, K, h, w) cosines / (B, n_classes, h, w) logits.
    classes: the dataset's class names in label order, None where cfg names no dataset we know.
    cfg: the training config saved in the file, as plain Python (dicts, lists, numbers, strings).
    """

    name: str
    source: str
    backbone: bb.Backbone
    head: SegmentationHead
    cluster_probe: ClusterProbe
    linear_probe: LinearProbe
    n_classes: int
    classes: tuple[str, ...] | None
    cfg: dict


# ---------------------------------------------------------------------------------------------------------
# The restricted unpickler


class _Record:
    """An inert stand-in for an object of a class that is not imported: it keeps what the pickle gave it
    (constructor arguments, state, items) and runs no code. Subclassed once per allowed global name."""

    global_name = "?"

    def __new__(cls, *args: Any, **kwargs: Any) -> _Record:
        record = object.__new__(cls)
        record.__dict__.update(args=args, kwargs=kwargs, state=None, items=[], entries={})
        return record

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        self.__dict__["state"] = state

    def __setitem__(self, key: Any, value: Any) -> None:  # pickled dict subclasses (SETITEMS)
        self.__dict__["entries"][key] = value

    def append(self, value: Any) -> None:  # pickled list subclasses (APPENDS)
        self.__dict__["items"].append(value)

    def extend(self, values: Any) -> None:
        self.__dict__["items"].extend(values)

    def __repr__(self) -> str:
        return f"<record of {self.global_name}>"


# OmegaConf's classes: containers keep their children in state["_content"], value nodes in state["_val"].
_OMEGACONF = {
    "omegaconf.dictconfig": ("DictConfig",),
    "omegaconf.listconfig": ("ListConfig",),
    "omegaconf.nodes": ("ValueNode", "AnyNode", "StringNode", "PathNode", "IntegerNode", "BytesNode",
                        "FloatNode", "BooleanNode", "EnumNode", "InterpolationResultNode"),
    "omegaconf.base": ("Metadata", "ContainerMetadata", "UnionNode", "SCMode"),
}
_TYPING = ("Any", "Dict", "List", "Tuple", "Optional", "Union")  # OmegaConf's ref/key/element types
# Lightning's trainer state is read as inert records and discarded: the model needs none of it. It holds
# callback classes as dict keys (Lightning 1.4), and logged metrics with reducers (1.5) such as torch.mean,
# which torch >= 1.5 pickles as getattr(torch._C._VariableFunctionsClass, "mean") and older torch by name.
_RECORD_PREFIXES = ("pytorch_lightning.", "lightning.", "lightning_fabric.", "torchmetrics.")
_REDUCERS = ("mean", "sum", "max", "min")
_RECORD_NAMES = frozenset(
    [f"{module}.{name}" for module, names in _OMEGACONF.items() for name in names]
    + [f"typing.{name}" for name in _TYPING]
    + [f"{owner}.{name}" for owner in ("torch", "torch._C._VariableFunctions") for name in _REDUCERS]
    + ["torch._C._VariableFunctionsClass"])


@cache
def _record_class(global_name: str) -> type:
    return type(global_name.rsplit(".", 1)[-1], (_Record,), {"global_name": global_name})


def _record_getattr(owner: Any, name: str) -> type:
    """getattr for pickles, limited to records: getattr(<record of a.B>, "c") is the record of a.B.c."""
    if isinstance(owner, type) and issubclass(owner, _Record) and isinstance(name, str):
        return _record_class(f"{owner.global_name}.{name}")
    raise pickle.UnpicklingError(
        f"refusing getattr({type(owner).__name__}, {name!r}): the file may look names up only in inert "
        "records")


@lru_cache(maxsize=1)
def _allowed_callables() -> dict[str, Any]:
    """Globals rebuilt for real: tensors, dtypes, sizes, devices, plain containers, NumPy scalars/arrays."""
    import numpy as np

    allowed: dict[str, Any] = {
        f"torch._utils.{name}": getattr(torch._utils, name)
        for name in ("_rebuild_tensor", "_rebuild_tensor_v2", "_rebuild_parameter",
                     "_rebuild_parameter_with_state") if hasattr(torch._utils, name)}
    allowed.update({
        "torch.Size": torch.Size, "torch.device": torch.device,
        "collections.OrderedDict": OrderedDict, "collections.defaultdict": defaultdict,
        "_codecs.encode": __import__("_codecs").encode,  # how protocol 2 pickles bytes
        "builtins.getattr": _record_getattr,
        # where these modules pickle from depends on the NumPy version; the objects are the same
        "numpy.dtype": np.dtype, "numpy.ndarray": np.ndarray,
        "numpy.core.multiarray.scalar": np.float64(0).__reduce__()[0],
        "numpy._core.multiarray.scalar": np.float64(0).__reduce__()[0],
        "numpy.core.multiarray._reconstruct": np.zeros(1).__reduce__()[0],
        "numpy._core.multiarray._reconstruct": np.zeros(1).__reduce__()[0],
    })
    allowed.update({f"torch.{name}": value for name, value in vars(torch).items()
                    if isinstance(value, torch.dtype)})
    allowed.update({f"builtins.{t.__name__}": t for t in (
        dict, list, tuple, set, frozenset, int, float, complex, bool, str, bytes, bytearray, slice)})
    return allowed


class _RestrictedUnpickler(pickle.Unpickler):
    """pickle.Unpickler whose find_class resolves only the allow-list above; anything else is refused."""

    def find_class(self, module: str, name: str) -> Any:
        # Protocol-2 pickles name Python-2 modules (__builtin__.long); map them as pickle itself would.
        if (module, name) in _compat_pickle.NAME_MAPPING:
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        full = f"{module}.{name}"
        allowed = _allowed_callables().get(full)
        if allowed is not None:
            return allowed
        if full in _RECORD_NAMES or full.startswith(_RECORD_PREFIXES):
            return _record_class(full)
        raise pickle.UnpicklingError(
            f"refusing to unpickle the global {full!r}: a STEGO checkpoint holds only tensors, plain "
            "containers, OmegaConf configs and Lightning trainer state, and loading anything else could run "
            "code from the file. If you trust the file, torch.load(path, weights_only=False) reads it.")


def _load(file: Any, **kwargs: Any) -> Any:
    return _RestrictedUnpickler(file, **kwargs).load()


def _loads(data: bytes, **kwargs: Any) -> Any:
    return _load(io.BytesIO(data), **kwargs)


# What torch.load(pickle_module=...) needs: Unpickler (zip and legacy files) and load (legacy headers).
restricted_pickle = types.SimpleNamespace(__name__="stego_lite.released.restricted_pickle",
                                          Unpickler=_RestrictedUnpickler, load=_load, loads=_loads)


def to_plain(obj: Any, where: str = "") -> Any:
    """Unpickled records -> plain Python: OmegaConf containers to dicts and lists, nodes to their values.

    Tensors and numbers stay as they are; tuples stay tuples; dict subclasses become dicts. Interpolations
    ("${a.b}") and missing values ("???") stay strings, as OmegaConf stores them. A record of anything else
    (a Lightning object) raises a ValueError naming it and where it was.
    """
    return _plain(obj, where or "<root>", set())


def _plain(obj: Any, where: str, active: set[int]) -> Any:
    if isinstance(obj, (dict, list, tuple, _Record)):
        if id(obj) in active:
            raise ValueError(f"{where} contains itself; a config cannot be cyclic")
        active = active | {id(obj)}
    if isinstance(obj, dict):
        return {_plain(k, where, active): _plain(v, f"{where}[{k!r}]", active) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_plain(v, f"{where}[{i}]", active) for i, v in enumerate(obj)]
    if isinstance(obj, tuple):
        return tuple(_plain(v, f"{where}[{i}]", active) for i, v in enumerate(obj))
    if not isinstance(obj, _Record):
        return obj
    state = obj.state
    if obj.global_name.startswith("omegaconf.") and isinstance(state, dict):
        if "_val" in state:  # a value node
            return _plain(state["_val"], where, active)
        if "_content" in state:  # DictConfig / ListConfig / UnionNode; None, "???" or "${...}" stay so
            return _plain(state["_content"], where, active)
    if state is None and not obj.args and (obj.entries or obj.items):  # a dict or list subclass
        return _plain(obj.entries or obj.items, where, active)
    raise ValueError(f"{where} holds a {obj.global_name} object, which has no plain-Python form")


# ---------------------------------------------------------------------------------------------------------
# Reading, downloading and loading


def read_checkpoint(path: str | os.PathLike) -> dict:
    """A STEGO Lightning checkpoint as plain Python, through the restricted unpickler; omegaconf not needed.

    Returns {"state_dict": {name: tensor}, "hyper_parameters": {"n_classes": int, "cfg": dict, ...}} plus
    the file's "epoch", "global_step" and "pytorch-lightning_version" where present. Everything else in the
    file (optimizer and trainer state) is read inertly and dropped.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint file at {path}; pass one of {sorted(RELEASED)} to download "
                                "a released model, or the path of a STEGO .ckpt file")
    if os.environ.get("TORCH_FORCE_WEIGHTS_ONLY_LOAD", "0").lower() in ("1", "y", "yes", "true"):
        raise RuntimeError("TORCH_FORCE_WEIGHTS_ONLY_LOAD is set, so torch.load would refuse the restricted "
                           "unpickler that reads STEGO's Lightning files; unset it for this call")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False, pickle_module=restricted_pickle)
    except pickle.UnpicklingError as err:
        if "refusing to unpickle" in str(err):
            raise pickle.UnpicklingError(f"{path}: {err}") from err
        raise unreadable(path, err) from err
    except Exception as err:
        raise unreadable(path, err) from err
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt or "hyper_parameters" not in ckpt:
        keys = sorted(map(str, ckpt)) if isinstance(ckpt, dict) else type(ckpt).__name__
        raise ValueError(f"{path} is not a Lightning checkpoint of STEGO: it needs 'state_dict' and "
                         f"'hyper_parameters', it holds {keys}")
    state = ckpt["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ValueError(f"{path}: 'state_dict' is not a flat dict of tensors")
    hparams = to_plain(ckpt["hyper_parameters"], "hyper_parameters")
    # detach: a tensor in a pickle may carry backward hooks (torch keeps them for old files); drop them
    out = {"state_dict": {k: v.detach() for k, v in state.items()}, "hyper_parameters": hparams}
    for key in ("epoch", "global_step", "pytorch-lightning_version"):
        if isinstance(ckpt.get(key), (int, str)):
            out[key] = ckpt[key]
    return out


def download_released(name: str, *, cache_dir: str | os.PathLike | None = None,
                      progress: bool = True) -> Path:
    """The path of released checkpoint `name` in torch.hub's cache (`cache_dir` replaces that folder):
    downloaded once, atomically (torch.hub writes a temporary file, then renames it), then read from there."""
    if name not in RELEASED:
        raise ValueError(f"unknown released STEGO model {name!r}; choose one of {sorted(RELEASED)}")
    return cached_download(RELEASED[name], cache_dir=cache_dir, progress=progress,
                           what=f"the released STEGO model {name!r}", retry=f"load_released({name!r})",
                           alternative="pass its path: load_released('/path/to/{file}')")


def backbone_name(cfg: dict) -> str:
    """Our backbone name for a STEGO config, from cfg["model_type"] and cfg["dino_patch_size"]."""
    if cfg.get("arch", "dino") != "dino":
        raise ValueError(f"cfg['arch'] is {cfg['arch']!r}; only STEGO's DINO backbones ('dino') are "
                         "supported")
    key = (cfg.get("model_type"), cfg.get("dino_patch_size"))
    if key not in BACKBONES:
        raise ValueError(f"no backbone for model_type={key[0]!r}, dino_patch_size={key[1]!r}; "
                         f"STEGO's DINO backbones are {sorted(BACKBONES)}")
    return BACKBONES[key]


def load_released(name_or_path: str | os.PathLike, *, cache_dir: str | os.PathLike | None = None,
                  progress: bool = True) -> ReleasedStego:
    """A released STEGO model by name (see RELEASED; downloaded once) or from a local .ckpt file.

    Every tensor of backbone, head and probes must be in the file with the shape that the saved config
    implies, and the file may hold nothing else except STEGO's unused `train_cluster_probe` and `decoder`;
    one ValueError lists every missing, unexpected and wrongly shaped key.
    """
    if isinstance(name_or_path, str) and name_or_path in RELEASED:
        name, source = name_or_path, RELEASED[name_or_path]
        path = download_released(name, cache_dir=cache_dir, progress=progress)
    else:
        path = Path(name_or_path).expanduser()
        name, source = path.stem, str(path)
        if not path.is_file():
            raise FileNotFoundError(f"no checkpoint at {path}; pass one of {sorted(RELEASED)} to download a "
                                    "released model, or the path of a STEGO .ckpt file")
    ckpt = read_checkpoint(path)
    hparams = ckpt["hyper_parameters"]
    cfg, n_classes = hparams.get("cfg"), hparams.get("n_classes")
    if not isinstance(cfg, dict) or not isinstance(n_classes, int):
        raise ValueError(f"{path}: hyper_parameters need 'n_classes' (int) and 'cfg' (a config), as STEGO "
                         f"saves them; found {sorted(hparams)}")
    parts = _build_parts(cfg, n_classes, str(path))
    _load_parts(parts, ckpt["state_dict"], str(path))
    parts["backbone"].weights = f"{source} (net.model.*)"
    parts["backbone"].requires_grad_(False)
    for module in parts.values():
        module.eval()
    return ReleasedStego(name=name, source=source, n_classes=n_classes, classes=_classes(cfg, n_classes),
                         cfg=cfg, **parts)


def _build_parts(cfg: dict, n_classes: int, source: str) -> dict[str, nn.Module]:
    """Empty (meta-device) modules shaped as the config says: the file supplies every tensor."""
    name = backbone_name(cfg)
    kind = cfg.get("projection_type", "nonlinear")
    if kind not in ("linear", "nonlinear"):
        raise ValueError(f"{source}: cfg['projection_type'] is {kind!r}; only STEGO's 'linear' and "
                         "'nonlinear' heads are supported")
    dim, extra = cfg.get("dim"), cfg.get("extra_clusters") or 0
    if not isinstance(dim, int) or not isinstance(extra, int):
        raise ValueError(f"{source}: cfg['dim'] and cfg['extra_clusters'] must be ints, got {dim!r} and "
                         f"{extra!r}")
    with torch.device("meta"):
        backbone = bb.build_backbone(name)
        dropout = 0.1 if cfg.get("dropout", True) else 0.0  # STEGO's Dropout2d(0.1) when cfg.dropout
        head = SegmentationHead(backbone.embed_dim, dim, kind=kind, dropout=dropout)
        return {"backbone": backbone, "head": head, "cluster_probe": ClusterProbe(dim, n_classes + extra),
                "linear_probe": LinearProbe(dim, n_classes)}


def checkpoint_key(part: str, key: str) -> str:
    """Our module's key -> the checkpoint's, e.g. ("head", "nonlinear.2.bias") -> "net.cluster2.2.bias"."""
    for ckpt_prefix, owner, prefix in KEY_MAP:
        if owner == part and key.startswith(prefix):
            return ckpt_prefix + key[len(prefix):]
    raise KeyError(f"{part}.{key} has no place in a STEGO checkpoint")


def _load_parts(parts: dict[str, nn.Module], state: dict[str, Tensor], source: str) -> None:
    """Check every key and shape against the built modules, report all problems at once, then load."""
    expected = {checkpoint_key(part, k): (part, k, v) for part, module in parts.items()
                for k, v in module.state_dict().items()}
    used = {k: v for k, v in state.items() if not k.startswith(IGNORED_PREFIXES)}
    missing, unexpected, wrong_shape = state_mismatch({k: v for k, (_, _, v) in expected.items()}, used)
    if missing or unexpected or wrong_shape:
        raise ValueError(
            f"{source} does not fit the STEGO model its config describes ({parts['backbone'].name}, head "
            f"{parts['head'].in_dim} -> {parts['head'].code_dim}, {len(parts['cluster_probe'].clusters)} "
            f"clusters, {parts['linear_probe'].linear.out_channels} classes)\n"
            f"  missing keys: {shorten(missing)}\n  unexpected keys: {shorten(unexpected)}\n"
            f"  wrongly shaped: {shorten(wrong_shape)}")
    for part, module in parts.items():
        own = {k: state[ckpt].to(v.dtype) for ckpt, (p, k, v) in expected.items() if p == part}
        module.load_state_dict(own, strict=True, assign=True)  # assign: takes the tensors of the meta modules


def _classes(cfg: dict, n_classes: int) -> tuple[str, ...] | None:
    from stego_lite.data.classes import CLASS_INFO

    classes = CLASS_INFO.get(cfg.get("dataset_name"), (None,))[0]
    return classes if classes is not None and len(classes) == n_classes else None
