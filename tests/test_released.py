"""Loading the released STEGO checkpoints (stego_lite.released), without the real files and without omegaconf.

The tests build, in a temporary folder, a checkpoint laid out exactly as STEGO's Lightning files are
(reference §1.6): `state_dict` keys net.model.* / net.cluster1.0.* / net.cluster2.{0,2}.* / cluster_probe.* /
linear_probe.* / train_cluster_probe.* / decoder.*, and `hyper_parameters` holding `n_classes` and a `cfg`
pickled under OmegaConf's class paths by stand-in classes that are removed from sys.modules before loading.
The backbone is a 2-block, 16-channel ViT registered under the name "dino_vits8" for the test. One more
test decodes bytes pickled by the real omegaconf 2.1.1. Nothing touches the network beyond 127.0.0.1.
"""
from __future__ import annotations

import base64
import contextlib
import os
import pickle
import socket
import sys
import time
import types
import typing
import zlib
from collections import OrderedDict, defaultdict
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

import stego_lite.backbone as bb
from stego_lite import released
from stego_lite.data import POTSDAM3_CLASSES
from stego_lite.env import weights_dir
from stego_lite.head import SegmentationHead
from stego_lite.probes import ClusterProbe, LinearProbe
from stego_lite.released import load_released, read_checkpoint
from loopback import http_server  # noqa: E402

C, D, K = 16, 6, 3  # tiny ViT channels, code dim, classes (Potsdam-3)
CFG = {  # a STEGO-like training config; every value type a real cfg holds
    "model_type": "vit_small", "dino_patch_size": 8, "arch": "dino", "dim": D, "projection_type": "nonlinear",
    "dropout": True, "extra_clusters": 0, "dataset_name": "potsdam", "lr": 5e-4, "pointwise": True,
    "crop_type": None, "neg_inter_shift": 0.76, "pos_inter_shift": 0.02, "batch_size": 16,
    "nested": {"res": [224, 320], "missing": "???", "interp": "${model_type}", "empty": {}},
}
POTSDAM_FILE = "potsdam_test.ckpt"

# pickle.dumps({"n_classes": 3, "cfg": cfg}, protocol=2) made by the real omegaconf 2.1.1, zlib + base64; with
#   cfg = OmegaConf.create({"model_type": "vit_small", "dino_patch_size": 8, "dim": 70, "lr": 5e-4,
#       "pointwise": True, "crop_type": None, "dataset_name": "potsdam", "neg_inter_shift": 0.76,
#       "typed": {"i": IntegerNode(3), "f": FloatNode(0.5), "b": BooleanNode(False), "s": StringNode("x")},
#       "nested": {"list": [1, 2.5, "a", None, {"k": [True]}], "missing": "???", "interp": "${model_type}"}})
#   OmegaConf.set_struct(cfg, True); OmegaConf.set_struct(cfg, False)      # as hydra, then STEGO, do
# omegaconf 2.0.6 and 2.3.0 pickle the same globals (DictConfig, ListConfig, nodes, (Container)Metadata, Any).
REAL_OMEGACONF_2_1_1 = (
    "eNptlneY1EQYxq/RcgcoYAOxoiwWFDu2o8mJB6cEy4pizGazO+Gyyb6b7MGBI6Ce3tmwgB2xK/Yu9oodVOwFxYYo6vP4v3/4zSQD"
    "Cec9+zw3O5n5ve98ZbKL6zhqMtkBNTU1nmG5ZhDYAWpb67P1NGMViqiz/JJdNC3fK4zNO1YoBk5Rm0LDydEQ9WOWoIGjT4QxSnZo"
    "5s3QRN/E1pwZ2BptCE3Hsysz4iUa+tHe/hwDMtn+tLdiF4yws2xDs+if4xW1iV6nhsZsIz30c3NtK4yeN7XJ9X45dHzPdDGwWxpu"
    "tzsxqC3bh4YF1ywGGMyxQ7YvfQ3CStUKsWNPkNXUU6Pi+yGG9GQHSenAdzvsimGZFrMx1LJ81yU94gda3i6YVTcU59cwzDKMXNVx"
    "Q8czDC2a26kLO+vYRZoiE5HJXVljtokmbNcu2V7sfDfWWM1l+4lAlc0KTWN4dBaD4hSK7yM4ds9IlyU/b7vRtpGJWHo0HYjItNFA"
    "wx4Uwj059sqwXgHfFue9adE+HPtmmMYaWVMbG9jNBrGRjAI0ig3pYUPZMEaH2E/H/tUcG84asg3CUwfFdrRMa4cTGkHJdF1kyP9g"
    "msk7nk9nCC1mBM4CG2OYcHIAx4HkhAnBgzgOTguOEYJjE4KH6Dg0EmSjW/sTuV6SSxgnaYdxHK5oR3AcmaaNE7SjErSjdRyzlTaV"
    "aHVEcysYL2HHchynYMdznJCGjRewExOwZh0TFKyleUJuxvp/Vv1LTBGNsu944TwnsDFRoidxTFboKRwnpdETBXpqAt2i42SF7o6R"
    "VsUvR7meJpGncLQq5HSOGWnkNIFsSyBP1XGaQrYRUhSeSH1gh4ZnlmzMlFSdY5ains5xRpo6U1DPTFDP0pFVVFm0ZT8M8mYJZ8dF"
    "4NlFg0JBfRMwpxBitlQ5h+NcpTKH47y0ymyhYiRUztdhbov05plbuvZYrZOA6GMRkTxyTFwyFkdeYMWlYXMU0ticwBYTWKbDYdSE"
    "TPacxFNvzc1ka4nroL1XS02jgxTtStRWLomUODx1Dp+jTIKp5nd9uqIA1sQQeWgXHioJD4GOUGpbVJH1dCahXUC1l/ZU1zfDSLmD"
    "1OZxzFfKnRwLtlcuiOUaFpL0wki6KqQvSEhzHRcq6ZbmjTXyL3aQw6JeDib5vmubXuRhMeku4bhIebiY45LtPeRog4YustAVWVgk"
    "LFyasHCZjm5loSeWDtDTS3pWWKHLPlK+nNSu4LhSKV/FcfX2ylXPseTipSS+NBLvEeLXJMSv1XGdEpfK83F9NVclG31l4QYhFdYy"
    "WVjLOW5QhXUjx03pwlomyDcnyLfouLV3Yd2WkXem6wQhViSOKCbit+Z0Gqq35u2ktZLjDqV7J8ddsW66xmiPhrsjKyuElXsSVu7V"
    "cR9ZwVYry9mIObg/I9vwAY5VKowPcjyUOlZrjWA9nGA9ouNRyVhJtVpLI8F4jONxxXiC48k0o1YwnkowntbxjGK0TGhQRSdRz3I8"
    "p1CrOZ5Po+oE6oUE6kUdLymUzJ+Jl2PSKxyvKtJrHK+nSfWC9EaC9KaOtxSJ7kaZ8jUcb6vQv8PxbhrRIBDvJRDv6/gglfKVIuUf"
    "Sl/tWMtENtdxfKSQH3N8EiNZnLu1grk+wfxUx2ep3K0RuftcnvALji/VCb/i+Pp/UvdNAvWtju8kYp18odBtGlRzdvxDo+QEAbUX"
    "Nkjy9xw/KPJGjh/Ttb5BkH9KkH/W8UtcWKPly7m5uRm/xk0kb/4yNknwbxybFfh3jj/S4E0CvCUB/lPHX1vBAwk2auG23zscf8tW"
    "FZ+x/wGvbY4N"
)


# ---------------------------------------------------------------------------------------------------------
# Stand-ins for OmegaConf and Lightning, present in sys.modules only while a checkpoint is written


class Metadata:
    """omegaconf.base.Metadata: a dataclass, pickled as its fields."""

    def __init__(self, key, object_type=None, **more):
        self.__dict__.update(ref_type=typing.Any, object_type=object_type, optional=True, key=key, flags={},
                             flags_root=False, resolver_cache=defaultdict(dict), **more)


class ContainerMetadata(Metadata):
    pass


class AnyNode:
    """omegaconf.nodes.AnyNode: pickled state {_metadata, _parent, _val}."""

    def __init__(self, value, key, parent):
        self._metadata, self._parent, self._val = Metadata(key), parent, value


class DictConfig:
    """omegaconf.dictconfig.DictConfig: pickled state {_metadata, _parent, _content: {key: node}}."""

    def __init__(self, content, key=None, parent=None):
        self._metadata = ContainerMetadata(key, dict, key_type=typing.Any, element_type=typing.Any)
        self._parent = parent
        self._content = {k: omega(v, k, self) for k, v in content.items()}


class ListConfig:
    """omegaconf.listconfig.ListConfig: pickled state {_metadata, _parent, _content: [node, ...]}."""

    def __init__(self, content, key=None, parent=None):
        self._metadata = ContainerMetadata(key, list, key_type=int, element_type=typing.Any)
        self._parent = parent
        self._content = [omega(v, i, self) for i, v in enumerate(content)]


class ModelCheckpoint:
    """pytorch_lightning's callback: Lightning 1.4 keys the callback states by the class itself."""


def omega(value, key=None, parent=None):
    """Plain Python -> stand-in OmegaConf objects, each child pointing back to its parent as in OmegaConf."""
    if isinstance(value, dict):
        return DictConfig(value, key, parent)
    if isinstance(value, list):
        return ListConfig(value, key, parent)
    return AnyNode(value, key, parent)


STAND_INS = {
    "omegaconf.base": [Metadata, ContainerMetadata], "omegaconf.nodes": [AnyNode],
    "omegaconf.dictconfig": [DictConfig], "omegaconf.listconfig": [ListConfig],
    "pytorch_lightning.callbacks.model_checkpoint": [ModelCheckpoint],
}


@contextlib.contextmanager
def stand_in_modules() -> Iterator[None]:
    """Make the stand-ins picklable under OmegaConf's and Lightning's class paths, then remove every trace."""
    names = ["omegaconf", "pytorch_lightning", "pytorch_lightning.callbacks", *STAND_INS]
    saved = {name: sys.modules.get(name) for name in names}
    for name in names:
        sys.modules[name] = types.ModuleType(name)
    for module, classes in STAND_INS.items():
        for cls in classes:
            cls.__module__ = module
            setattr(sys.modules[module], cls.__name__, cls)
    try:
        yield
    finally:
        for name, old in saved.items():
            if old is None:
                del sys.modules[name]
            else:
                sys.modules[name] = old


class RunsCode:
    """Unpickling this runs `touch <marker>`: what a malicious checkpoint would do."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


# ---------------------------------------------------------------------------------------------------------
# Fixtures: a tiny model, its checkpoint in STEGO's layout, a loopback server


def tiny_vit() -> bb.VisionTransformer:
    return bb.VisionTransformer("dino_vits8", patch_size=8, embed_dim=C, depth=2, num_heads=2, img_size=32)


@pytest.fixture(autouse=True)
def tiny_backbone_registry(monkeypatch):
    """Build "dino_vits8" as the tiny ViT (the real one is 87 MB); the registry is restored afterwards."""
    monkeypatch.setattr(bb, "_REGISTRY", {**bb._REGISTRY, "dino_vits8": tiny_vit})


@pytest.fixture(autouse=True)
def no_proxy_for_loopback(monkeypatch):
    for variable in ("no_proxy", "NO_PROXY"):
        monkeypatch.setenv(variable, "127.0.0.1,localhost")


@pytest.fixture(scope="module")
def model() -> dict:
    """Random modules with every parameter nonzero (biases too), seeded, without touching the global RNG."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        parts = {"vit": tiny_vit(), "head": SegmentationHead(C, D), "cluster": ClusterProbe(D, K),
                 "linear": LinearProbe(D, K)}
        with torch.no_grad():
            for module in parts.values():
                for p in module.parameters():
                    p.add_(torch.randn_like(p) * 0.1)
    return {name: module.eval() for name, module in parts.items()}


def lightning_state(model: dict) -> OrderedDict:
    """The state_dict of STEGO's LitUnsupervisedSegmenter, key names written out (reference §1.6)."""
    head = model["head"]
    state = OrderedDict((f"net.model.{k}", v) for k, v in model["vit"].state_dict().items())
    unused = torch.Generator().manual_seed(2)
    for ours, theirs in [(head.linear, "net.cluster1.0"), (head.nonlinear[0], "net.cluster2.0"),
                         (head.nonlinear[2], "net.cluster2.2")]:
        state[f"{theirs}.weight"], state[f"{theirs}.bias"] = ours.weight, ours.bias
    state["train_cluster_probe.clusters"] = torch.randn(K, D, generator=unused)  # unused by STEGO
    state["cluster_probe.clusters"] = model["cluster"].clusters
    state["linear_probe.weight"] = model["linear"].linear.weight
    state["linear_probe.bias"] = model["linear"].linear.bias
    state["decoder.weight"] = torch.randn(C, D, 1, 1, generator=unused)  # unused by STEGO
    state["decoder.bias"] = torch.randn(C, generator=unused)
    return OrderedDict((k, v.detach().clone()) for k, v in state.items())


def save_checkpoint(path: Path, state: dict, cfg: dict = CFG, n_classes: int = K, **extra) -> Path:
    """torch.save a Lightning checkpoint: weights, hyper_parameters with the cfg as OmegaConf objects, and
    trainer state (optimizer, a callback keyed by its class, a logged metric's reducer torch.mean)."""
    with stand_in_modules():
        torch.save({
            "epoch": 3, "global_step": 7000, "pytorch-lightning_version": "1.4.9",
            "state_dict": state,
            "callbacks": {ModelCheckpoint: {"monitor": "test/cluster/mIoU",
                                            "best_model_score": torch.tensor(0.6)}},
            "loops": {"results": {"meta": {"reduce_fx": torch.mean, "device": torch.device("cpu")}}},
            "optimizer_states": [{"state": {0: {"step": torch.tensor(5.0), "exp_avg": torch.zeros(3)}},
                                  "param_groups": [{"lr": 5e-4, "betas": (0.9, 0.999), "params": [0]}]}],
            "lr_schedulers": [], "hparams_name": "kwargs",
            "hyper_parameters": {"n_classes": n_classes, "cfg": omega(cfg)},
            **extra,
        }, path)
    return path


@pytest.fixture(scope="module")
def ckpt_path(model, tmp_path_factory) -> Path:
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / POTSDAM_FILE, lightning_state(model))


@pytest.fixture
def without_omegaconf(monkeypatch):
    """Importing omegaconf or pytorch_lightning fails while a test loads (None in sys.modules blocks it)."""
    for name in ["omegaconf", "pytorch_lightning", *STAND_INS]:
        monkeypatch.setitem(sys.modules, name, None)


def closed_port() -> int:
    """A loopback port with nobody listening: connecting is refused at once."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def assert_plain(obj, where="cfg"):
    """Only dicts, lists and Python scalars all the way down."""
    if isinstance(obj, dict):
        assert type(obj) is dict, f"{where} is a {type(obj).__name__}"
        for key, value in obj.items():
            assert type(key) is str, f"{where} has key {key!r}"
            assert_plain(value, f"{where}[{key!r}]")
    elif isinstance(obj, list):
        assert type(obj) is list, f"{where} is a {type(obj).__name__}"
        for i, value in enumerate(obj):
            assert_plain(value, f"{where}[{i}]")
    else:
        assert obj is None or type(obj) in (str, int, float, bool), f"{where} is a {type(obj).__name__}"


IMG = torch.randn(2, 3, 32, 48, generator=torch.Generator().manual_seed(1))


# ---------------------------------------------------------------------------------------------------------
# Round trip


def test_round_trip_without_omegaconf(model, ckpt_path, without_omegaconf):
    stego = load_released(ckpt_path)
    saved = lightning_state(model)
    loaded = {f"net.model.{k}": v for k, v in stego.backbone.state_dict().items()}
    loaded |= {"net.cluster1.0.weight": stego.head.linear.weight,
               "net.cluster1.0.bias": stego.head.linear.bias,
               "net.cluster2.0.weight": stego.head.nonlinear[0].weight,
               "net.cluster2.0.bias": stego.head.nonlinear[0].bias,
               "net.cluster2.2.weight": stego.head.nonlinear[2].weight,
               "net.cluster2.2.bias": stego.head.nonlinear[2].bias,
               "cluster_probe.clusters": stego.cluster_probe.clusters,
               "linear_probe.weight": stego.linear_probe.linear.weight,
               "linear_probe.bias": stego.linear_probe.linear.bias}
    used = [k for k in saved if not k.startswith(("train_cluster_probe.", "decoder."))]
    assert sorted(loaded) == sorted(used)
    for key, value in loaded.items():
        assert torch.equal(value, saved[key]), key
    n_params = sum(p.numel() for m in (stego.head, stego.cluster_probe, stego.linear_probe)
                   for p in m.parameters())
    assert n_params == sum(saved[k].numel() for k in used if not k.startswith("net.model"))  # nothing else

    # the same numbers through the whole pipeline: images -> features -> code -> cluster cosines / logits
    feats = stego.backbone.features(IMG)
    assert torch.equal(feats, model["vit"].features(IMG)) and feats.shape == (2, C, 4, 6)
    with torch.no_grad():
        code = stego.head(feats)
        assert torch.equal(code, model["head"](feats)) and code.shape == (2, D, 4, 6)
        assert torch.equal(stego.cluster_probe(code), model["cluster"](code))
        assert torch.equal(stego.linear_probe(code), model["linear"](code))

    assert not stego.backbone.training and not stego.head.training  # eval mode: dropout off
    assert not any(p.requires_grad for p in stego.backbone.parameters())
    assert stego.backbone.weights == f"{ckpt_path} (net.model.*)"
    assert (stego.name, stego.source, stego.n_classes) == ("potsdam_test", str(ckpt_path), K)
    assert stego.classes == POTSDAM3_CLASSES
    assert stego.cfg == CFG
    assert_plain(stego.cfg)
    assert sys.modules["omegaconf"] is None  # never imported: the fixture's block is still in place


def test_read_checkpoint_gives_plain_python(ckpt_path, model, without_omegaconf):
    ckpt = read_checkpoint(ckpt_path)
    assert sorted(ckpt) == ["epoch", "global_step", "hyper_parameters", "pytorch-lightning_version",
                            "state_dict"]
    assert (ckpt["epoch"], ckpt["global_step"], ckpt["pytorch-lightning_version"]) == (3, 7000, "1.4.9")
    saved = lightning_state(model)
    assert type(ckpt["state_dict"]) is dict and list(ckpt["state_dict"]) == list(saved)  # all keys, in order
    assert torch.equal(ckpt["state_dict"]["decoder.bias"], saved["decoder.bias"])
    assert ckpt["hyper_parameters"] == {"n_classes": K, "cfg": CFG}
    cfg = ckpt["hyper_parameters"]["cfg"]
    assert_plain(cfg)
    assert type(cfg["lr"]) is float and type(cfg["dim"]) is int and cfg["crop_type"] is None
    assert cfg["nested"]["missing"] == "???" and cfg["nested"]["interp"] == "${model_type}"  # kept as stored


def test_real_omegaconf_pickle_decodes_to_plain_python():
    data = zlib.decompress(base64.b64decode("".join(REAL_OMEGACONF_2_1_1)))
    plain = released.to_plain(released.restricted_pickle.loads(data))
    assert plain == {"n_classes": 3, "cfg": {
        "model_type": "vit_small", "dino_patch_size": 8, "dim": 70, "lr": 5e-4, "pointwise": True,
        "crop_type": None, "dataset_name": "potsdam", "neg_inter_shift": 0.76,
        "typed": {"i": 3, "f": 0.5, "b": False, "s": "x"},
        "nested": {"list": [1, 2.5, "a", None, {"k": [True]}], "missing": "???", "interp": "${model_type}"}}}
    assert_plain(plain["cfg"])


@pytest.mark.parametrize("model_type, patch, name", [
    ("vit_small", 8, "dino_vits8"), ("vit_small", 16, "dino_vits16"),
    ("vit_base", 8, "dino_vitb8"), ("vit_base", 16, "dino_vitb16"),
])
def test_backbone_name_from_cfg(model_type, patch, name):
    cfg = {"model_type": model_type, "dino_patch_size": patch, "arch": "dino"}
    assert released.backbone_name(cfg) == name
    assert name in bb.list_backbones()


def test_backbone_name_rejects_what_stego_did_not_release():
    with pytest.raises(ValueError, match="model_type='vit_large', dino_patch_size=8"):
        released.backbone_name({"model_type": "vit_large", "dino_patch_size": 8})
    with pytest.raises(ValueError, match="cfg\\['arch'\\] is 'picie'"):
        released.backbone_name({"model_type": "vit_small", "dino_patch_size": 8, "arch": "picie"})


def test_head_kind_extra_clusters_and_classes_come_from_the_cfg(model, tmp_path):
    """A linear head, 2 extra clusters, a dataset we have no class list for: all read off the cfg."""
    cfg = {**CFG, "projection_type": "linear", "extra_clusters": 2, "dataset_name": "directory"}
    state = lightning_state(model)
    for key in [k for k in state if k.startswith("net.cluster2.")]:
        del state[key]
    state["cluster_probe.clusters"] = torch.randn(K + 2, D)
    stego = load_released(save_checkpoint(tmp_path / "linear.ckpt", state, cfg))
    assert stego.head.kind == "linear" and stego.cluster_probe.clusters.shape == (K + 2, D)
    assert stego.classes is None and stego.cfg["dataset_name"] == "directory"


# ---------------------------------------------------------------------------------------------------------
# Refusals: code in the file, wrong shapes, missing and unexpected keys, foreign files


def test_a_global_outside_the_allow_list_is_refused_and_never_runs(model, tmp_path):
    marker = tmp_path / "ran"
    path = save_checkpoint(tmp_path / "evil.ckpt", lightning_state(model), payload=RunsCode(marker))
    forbidden = f"{os.system.__module__}.system"  # posix.system on Linux
    for load in (read_checkpoint, load_released):
        with pytest.raises(pickle.UnpicklingError) as caught:
            load(path)
        assert repr(forbidden) in str(caught.value) and str(path) in str(caught.value)
    assert not marker.exists()
    run, args = RunsCode(marker).__reduce__()
    run(*args)  # the payload does create the marker when it runs, so its absence above means something
    assert marker.exists()


def test_getattr_only_looks_into_records():
    data = pickle.dumps(getattr, protocol=2)  # the global builtins.getattr itself is allowed ...
    getattr_ = released.restricted_pickle.loads(data)
    with pytest.raises(pickle.UnpicklingError, match="refusing getattr"):
        getattr_(os, "system")  # ... but only on inert records, never on a real object


def test_wrong_shapes_missing_and_unexpected_keys_are_listed(model, tmp_path):
    state = lightning_state(model)
    state["cluster_probe.clusters"] = torch.zeros(K + 1, D)
    state["net.model.pos_embed"] = torch.zeros(1, 50, C)
    del state["net.cluster2.2.bias"]
    state["net.cluster3.0.weight"] = torch.zeros(D, C, 1, 1)
    with pytest.raises(ValueError) as caught:
        load_released(save_checkpoint(tmp_path / "bad.ckpt", state))
    message = str(caught.value)
    assert "missing keys: net.cluster2.2.bias" in message
    assert "unexpected keys: net.cluster3.0.weight" in message
    assert f"cluster_probe.clusters: file ({K + 1}, {D}), model ({K}, {D})" in message
    assert f"net.model.pos_embed: file (1, 50, {C}), model (1, 17, {C})" in message
    assert "decoder" not in message and "train_cluster_probe" not in message  # known-unused, ignored


def test_a_config_that_disagrees_with_the_weights_is_caught(model, tmp_path):
    path = save_checkpoint(tmp_path / "dim.ckpt", lightning_state(model), {**CFG, "dim": D + 1})
    with pytest.raises(ValueError) as caught:
        load_released(path)
    message = str(caught.value)
    assert f"head {C} -> {D + 1}" in message
    assert f"net.cluster1.0.weight: file ({D}, {C}, 1, 1), model ({D + 1}, {C}, 1, 1)" in message
    assert f"linear_probe.weight: file ({K}, {D}, 1, 1), model ({K}, {D + 1}, 1, 1)" in message


def test_foreign_and_truncated_files_are_named(ckpt_path, tmp_path):
    torch.save({"model": {"w": torch.zeros(2)}}, tmp_path / "other.pth")
    with pytest.raises(ValueError, match="needs 'state_dict' and 'hyper_parameters', it holds \\['model'\\]"):
        load_released(tmp_path / "other.pth")
    (tmp_path / "half.ckpt").write_bytes(ckpt_path.read_bytes()[: ckpt_path.stat().st_size // 2])
    with pytest.raises(ValueError, match="truncated") as caught:
        load_released(tmp_path / "half.ckpt")
    assert str(tmp_path / "half.ckpt") in str(caught.value)
    with pytest.raises(FileNotFoundError, match="cocostuff27"):
        load_released("cocostuf27")  # a typo of a name is a missing path, and the message lists the names


# ---------------------------------------------------------------------------------------------------------
# Download: loopback HTTP, the cache, offline errors


def test_download_through_loopback_then_from_the_cache(model, ckpt_path, tmp_path, monkeypatch):
    root = tmp_path / "served"
    (root / "saved_models").mkdir(parents=True)
    (root / "saved_models" / POTSDAM_FILE).write_bytes(ckpt_path.read_bytes())
    cache = tmp_path / "hub"
    with http_server(root) as (base, requests):
        url = f"{base}/saved_models/{POTSDAM_FILE}"
        monkeypatch.setitem(released.RELEASED, "potsdam", url)
        first = load_released("potsdam", cache_dir=cache, progress=False)
        assert requests == [f"/saved_models/{POTSDAM_FILE}"]
    assert (cache / POTSDAM_FILE).read_bytes() == ckpt_path.read_bytes()
    assert sorted(p.name for p in cache.iterdir()) == [POTSDAM_FILE]  # no temporary file left behind
    second = load_released("potsdam", cache_dir=cache, progress=False)  # the server is gone: from the cache
    assert len(requests) == 1
    assert (first.name, first.source) == ("potsdam", url) and first.backbone.weights == f"{url} (net.model.*)"
    with torch.no_grad():
        expected = model["head"](model["vit"].features(IMG))
        assert torch.equal(first.head(first.backbone.features(IMG)), expected)
        assert torch.equal(second.head(second.backbone.features(IMG)), expected)


def test_offline_error_names_url_cache_path_and_file(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # the default cache: torch.hub's folder
    url = f"http://127.0.0.1:{closed_port()}/saved_models/{POTSDAM_FILE}"
    monkeypatch.setitem(released.RELEASED, "potsdam", url)
    start = time.perf_counter()
    with pytest.raises(ConnectionError) as caught:
        load_released("potsdam", progress=False)
    assert time.perf_counter() - start < 5
    message = str(caught.value)
    assert url in message and repr(POTSDAM_FILE) in message
    assert str(weights_dir() / POTSDAM_FILE) in message
    assert str(tmp_path / "torch" / "hub" / "checkpoints" / POTSDAM_FILE) in message
    assert not (weights_dir() / POTSDAM_FILE).exists()


def test_released_names_and_urls():
    assert released.RELEASED == {
        "cocostuff27": "https://marhamilresearch4.blob.core.windows.net/stego-public/saved_models/"
                       "cocostuff27_vit_base_5.ckpt",
        "cityscapes": "https://marhamilresearch4.blob.core.windows.net/stego-public/saved_models/"
                      "cityscapes_vit_base_1.ckpt",
        "potsdam": "https://marhamilresearch4.blob.core.windows.net/stego-public/saved_models/potsdam_test.ckpt",
    }
    assert released.checkpoint_key("head", "nonlinear.2.bias") == "net.cluster2.2.bias"
    assert released.checkpoint_key("linear_probe", "linear.weight") == "linear_probe.weight"
    assert released.checkpoint_key("backbone", "blocks.0.attn.qkv.weight") == \
        "net.model.blocks.0.attn.qkv.weight"
