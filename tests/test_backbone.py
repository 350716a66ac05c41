"""Tests for stego_lite.backbone: equivalence with timm, the official state-dict layout, the +0.1 position
interpolation, weight loading (local files, a loopback HTTP server, offline errors), attention maps and every
documented input error. CPU only; nothing here touches the network beyond 127.0.0.1.
"""
from __future__ import annotations

import functools
import math
import os
import socket
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from stego_lite import backbone as bb
from stego_lite import checkpoints
from stego_lite.backbone import (
    Attention,
    Backbone,
    VisionTransformer,
    list_backbones,
    load_backbone,
    register_backbone,
)
from stego_lite.env import weights_dir
from loopback import http_server  # noqa: E402

os.environ["HF_HUB_OFFLINE"] = "1"  # timm (test-only, imported where used) must never wait on the hub
VITS16_FILE = "dino_deitsmall16_pretrain.pth"  # the official file name of dino_vits16


# ---------------------------------------------------------------------------------------------------------
# Independent references: a hand-written bicubic resize, timm's ViTs, the layout listed in reference §1.5


def _cubic(x: float, a: float = -0.75) -> float:
    """Keys' cubic convolution kernel with a = -0.75, the one PyTorch's bicubic mode uses."""
    x = abs(x)
    if x <= 1:
        return (a + 2) * x**3 - (a + 3) * x**2 + 1
    return a * x**3 - 5 * a * x**2 + 8 * a * x - 4 * a if x < 2 else 0.0


def _resize_matrix(n_out: int, n_in: int, offset: float) -> torch.Tensor:
    """(n_out, n_in) float64 weights of a 1-D bicubic resize that samples output i at input coordinate
    (i + 0.5) * n_in / (n_out + offset) - 0.5, taps outside the grid clamped to its edge.

    That is where DINO's F.interpolate(scale_factor=(n_out + offset) / n_in) samples; offset 0 is a plain
    resize to n_out.
    """
    weights = torch.zeros(n_out, n_in, dtype=torch.float64)
    for i in range(n_out):
        src = (i + 0.5) * n_in / (n_out + offset) - 0.5
        left = math.floor(src)
        for tap in range(left - 1, left + 3):
            weights[i, min(max(tap, 0), n_in - 1)] += _cubic(src - tap)
    return weights


def dino_resize(grid: torch.Tensor, h: int, w: int, offset: float = 0.1) -> torch.Tensor:
    """Hand-written, float64 version of DINO's position-grid interpolation: (C, M, M) -> (C, h, w)."""
    M = grid.shape[-1]
    rows, cols = _resize_matrix(h, M, offset), _resize_matrix(w, M, offset)  # (h, M), (w, M)
    return torch.einsum("hm,cmn,wn->chw", rows, grid.double(), cols)


TIMM_TWINS = {  # our backbone: timm's model of the same architecture
    "dino_vits8": "vit_small_patch8_224.dino",
    "dino_vitb16": "vit_base_patch16_224.dino",
    "dinov2_vits14": "vit_small_patch14_dinov2.lvd142m",
    "dinov2_vits14_reg": "vit_small_patch14_reg4_dinov2.lvd142m",
}


def _timm_meta(timm_name: str, **kwargs) -> torch.nn.Module:
    """A timm ViT without memory (meta device); its weights come later, by load_state_dict(assign=True)."""
    import timm

    with torch.device("meta"):
        return timm.create_model(timm_name, pretrained=False, num_classes=0, **kwargs)


@functools.cache
def timm_twin(name: str) -> tuple[dict[str, torch.Tensor], VisionTransformer]:
    """A random timm state dict (every tensor random, LayerScale and LayerNorm scales near 1) and our backbone
    holding the same weights, mapped onto our (= the official) names."""
    model = _timm_meta(TIMM_TWINS[name])
    generator = torch.Generator().manual_seed(0)
    state = {}
    for key, meta in model.state_dict().items():
        value = torch.randn(meta.shape, generator=generator) * 0.05
        if key.endswith(("gamma", "norm1.weight", "norm2.weight", "norm.weight")):
            value += 1.0
        state[key] = value
    ours_state = dict(state)
    if "reg_token" in ours_state:  # timm gives neither CLS nor registers a position (no_embed_class) ...
        ours_state["register_tokens"] = ours_state.pop("reg_token")
        cls_pos = torch.zeros_like(ours_state["cls_token"])  # ... the official layout has one for CLS: zero
        ours_state["pos_embed"] = torch.cat([cls_pos, ours_state["pos_embed"]], dim=1)
    if name.startswith("dinov2"):  # DINOv2 files carry an (unused) mask token, which timm drops
        ours_state["mask_token"] = torch.zeros(1, ours_state["cls_token"].shape[-1])
    with torch.device("meta"):  # skip the random initialisation: every weight is assigned just below
        ours = load_backbone(name, weights=None)
    ours.load_state_dict(ours_state, strict=True, assign=True)
    return state, ours


def timm_features(name: str, img: torch.Tensor) -> torch.Tensor:
    """Features from timm's own forward: (B, 3, H, W) -> (B, C, h, w), tokens after the final norm.

    timm is built for exactly H x W, so it resamples nothing itself. Its position embeddings are the random
    ones of `timm_twin`, resized to h x w by `dino_resize` above where h x w is not the trained grid: timm's
    own dynamic-size resampling (size-based, antialiased) is not DINO's +0.1 convention and would differ.
    """
    state, _ = timm_twin(name)
    B, _, H, W = img.shape
    model = _timm_meta(TIMM_TWINS[name], img_size=(H, W))
    state = dict(state)
    h, w = model.patch_embed.grid_size
    n_pos_prefix = 0 if model.no_embed_class else model.num_prefix_tokens
    pos = state["pos_embed"]
    C, M = pos.shape[-1], math.isqrt(pos.shape[1] - n_pos_prefix)
    if (h, w) != (M, M):
        grid = pos[0, n_pos_prefix:].T.reshape(C, M, M)
        patch_pos = dino_resize(grid, h, w).reshape(C, h * w).T[None].float()  # (1, h*w, C)
        state["pos_embed"] = torch.cat([pos[:, :n_pos_prefix], patch_pos], dim=1)
    model.load_state_dict(state, strict=True, assign=True)
    with torch.no_grad():
        tokens = model.eval().forward_features(img)  # (B, prefix + h*w, C)
    return tokens[:, model.num_prefix_tokens:].reshape(B, h, w, C).permute(0, 3, 1, 2)  # STEGO's recipe


def official_layout(dim: int, patch_size: int, grid: int, dinov2: bool = False) -> dict[str, tuple[int, ...]]:
    """Names and shapes of an official DINO (reference §1.5) or DINOv2 file with 12 blocks."""
    layout = {"cls_token": (1, 1, dim), "pos_embed": (1, 1 + grid * grid, dim)}
    if dinov2:
        layout["mask_token"] = (1, dim)
    layout |= {"patch_embed.proj.weight": (dim, 3, patch_size, patch_size), "patch_embed.proj.bias": (dim,)}
    for i in range(12):
        block = {
            "norm1.weight": (dim,), "norm1.bias": (dim,),
            "attn.qkv.weight": (3 * dim, dim), "attn.qkv.bias": (3 * dim,),
            "attn.proj.weight": (dim, dim), "attn.proj.bias": (dim,),
            "norm2.weight": (dim,), "norm2.bias": (dim,),
            "mlp.fc1.weight": (4 * dim, dim), "mlp.fc1.bias": (4 * dim,),
            "mlp.fc2.weight": (dim, 4 * dim), "mlp.fc2.bias": (dim,),
        }
        if dinov2:
            block |= {"ls1.gamma": (dim,), "ls2.gamma": (dim,)}
        layout |= {f"blocks.{i}.{key}": shape for key, shape in block.items()}
    return layout | {"norm.weight": (dim,), "norm.bias": (dim,)}


def _layout(model: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    return {key: tuple(value.shape) for key, value in model.state_dict().items()}


# ---------------------------------------------------------------------------------------------------------
# Fixtures: one random ViT-S/16 and its file in the official layout, served or read locally


@pytest.fixture(scope="module")
def vits16() -> VisionTransformer:
    torch.manual_seed(0)
    return load_backbone("dino_vits16", weights=None)


@pytest.fixture(scope="module")
def served(vits16, tmp_path_factory) -> Path:
    """A folder laid out like dl.fbaipublicfiles.com/dino holding vits16's weights as the official file."""
    root = tmp_path_factory.mktemp("served")
    (root / "dino_deitsmall16_pretrain").mkdir()
    torch.save(vits16.state_dict(), root / "dino_deitsmall16_pretrain" / VITS16_FILE)
    return root


@pytest.fixture(autouse=True)
def no_proxy_for_loopback(monkeypatch):
    """Requests to 127.0.0.1 go straight to the test's own server, even where an HTTP proxy is configured."""
    for variable in ("no_proxy", "NO_PROXY"):
        monkeypatch.setenv(variable, "127.0.0.1,localhost")


def closed_port() -> int:
    """A loopback port with nobody listening: connecting is refused at once."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def vits16_url(base: str) -> str:
    return f"{base}/dino_deitsmall16_pretrain/{VITS16_FILE}"


IMG = torch.randn(2, 3, 64, 96, generator=torch.Generator().manual_seed(1))


# ---------------------------------------------------------------------------------------------------------
# Equivalence with timm and the official layout


@pytest.mark.parametrize("name, sizes", [
    ("dino_vits8", [(1, 224, 224), (2, 96, 160)]),
    ("dino_vitb16", [(1, 224, 224), (1, 96, 160)]),
    ("dinov2_vits14", [(1, 224, 224), (2, 112, 168)]),
    ("dinov2_vits14_reg", [(2, 56, 84)]),
])
def test_features_equal_timm(name, sizes):
    """Same weights, same images: our features equal timm's to 1e-5 at 224 x 224 and at a non-square size.

    DINO v1 at 224 runs on the trained 28 x 28 / 14 x 14 grid: pure timm against us. Everywhere else the
    position grid is interpolated; there the reference is timm's forward with position embeddings resized by
    the hand-written `dino_resize` (timm's own resampling follows another convention); ours by F.interpolate.
    """
    _, ours = timm_twin(name)
    generator = torch.Generator().manual_seed(2)
    for B, H, W in sizes:
        img = torch.randn(B, 3, H, W, generator=generator)
        feats = ours.features(img)
        p = ours.patch_size
        assert feats.shape == (B, ours.embed_dim, H // p, W // p)
        diff = (feats - timm_features(name, img)).abs().max().item()
        assert diff <= 1e-5, f"{name} at {H}x{W}: max abs diff {diff:.2e}"


@pytest.mark.parametrize("name, dim, patch_size", [
    ("dino_vits16", 384, 16), ("dino_vits8", 384, 8), ("dino_vitb16", 768, 16), ("dino_vitb8", 768, 8),
])
def test_dino_layout_equals_official_files(name, dim, patch_size):
    with torch.device("meta"):  # shapes only, no memory
        model = load_backbone(name, weights=None)
    assert _layout(model) == official_layout(dim, patch_size, grid=224 // patch_size)
    n_params = sum(value.numel() for value in model.state_dict().values())
    if name == "dino_vits8":
        assert (len(model.state_dict()), n_params) == (150, 21_670_272)
    if name == "dino_vitb8":
        assert n_params == 85_807_872


@pytest.mark.parametrize("name, dim", [("dinov2_vits14", 384), ("dinov2_vitb14", 768)])
def test_dinov2_layout_equals_official_files(name, dim):
    with torch.device("meta"):
        model = load_backbone(name, weights=None)
    assert _layout(model) == official_layout(dim, 14, grid=37, dinov2=True)  # trained at 518 px
    with torch.device("meta"):
        registers = load_backbone(f"{name}_reg", weights=None)
    expected = official_layout(dim, 14, grid=37, dinov2=True) | {"register_tokens": (1, 4, dim)}
    assert _layout(registers) == expected


def test_list_backbones():
    names = list_backbones()
    for name in ["dino_vits16", "dino_vits8", "dino_vitb16", "dino_vitb8", "dinov2_vits14", "dinov2_vitb14"]:
        assert name in names and name in bb.WEIGHTS
    assert bb.WEIGHTS["dino_vits8"].endswith("/dino_deitsmall8_300ep_pretrain.pth")  # STEGO's file


# ---------------------------------------------------------------------------------------------------------
# Position interpolation and attention


def test_pos_embed_interpolation_is_dinos_convention():
    torch.manual_seed(0)
    model = VisionTransformer("tiny", patch_size=4, embed_dim=8, depth=1, num_heads=2, img_size=20)  # M = 5
    grid = model.pos_embed.detach()[0, 1:].T.reshape(8, 5, 5)
    assert model.pos_embed_for(5, 5) is model.pos_embed  # the trained grid is used as it is
    for h, w in [(7, 11), (3, 4), (5, 9), (16, 6)]:
        pos = model.pos_embed_for(h, w).detach()
        assert pos.shape == (1, 1 + h * w, 8)
        assert torch.equal(pos[:, 0], model.pos_embed[:, 0].detach())  # the CLS position is not interpolated
        ours = pos[0, 1:].T.reshape(8, h, w)
        assert (ours - dino_resize(grid, h, w)).abs().max() <= 1e-6
        # The check can tell the conventions apart: a plain resize to (h, w) samples elsewhere ...
        assert (ours - dino_resize(grid, h, w, offset=0.0)).abs().max() > 1e-3
        # ... and the hand-written kernel is PyTorch's bicubic (checked where both do a plain resize).
        plain = F.interpolate(grid[None], size=(h, w), mode="bicubic", align_corners=False)[0]
        assert (plain - dino_resize(grid, h, w, offset=0.0)).abs().max() <= 1e-6


def test_attention_map_is_what_the_forward_pass_uses():
    torch.manual_seed(0)
    attn, x = Attention(32, num_heads=4), torch.randn(2, 10, 32)
    v = attn.qkv(x).reshape(2, 10, 3, 4, 8)[:, :, 2].transpose(1, 2)  # (B, heads, N, d)
    explicit = attn.proj((attn.attention_map(x) @ v).transpose(1, 2).reshape(2, 10, 32))
    assert (attn(x) - explicit).abs().max() <= 1e-6


@pytest.mark.parametrize("registers", [0, 4])
def test_attention_sums_to_one(vits16, registers):
    torch.manual_seed(0)
    model = vits16 if registers == 0 else VisionTransformer(
        "tiny_reg", patch_size=16, embed_dim=32, depth=2, num_heads=4, num_register_tokens=registers,
        layer_scale=True, mask_token=True).eval()
    attn = model.attention(IMG)
    assert attn.shape == (2, model.num_heads, 4, 6) and (attn >= 0).all()
    full = model.last_self_attention(IMG).detach()  # (B, heads, N, N), N = 1 + registers + 24
    assert torch.allclose(full.sum(-1), torch.ones(()), atol=1e-5)
    cls_to_prefix = full[:, :, 0, :1 + registers].sum(-1)  # CLS attending to itself and the registers
    assert torch.allclose(attn.sum((-2, -1)) + cls_to_prefix, torch.ones(()), atol=1e-5)
    assert torch.equal(attn.flatten(2), full[:, :, 0, 1 + registers:])  # row-major over the patch grid


# ---------------------------------------------------------------------------------------------------------
# The features call: frozen, shapes, input errors


def test_features_are_frozen(vits16):
    img = IMG.clone().requires_grad_(True)
    feats = vits16.features(img)
    assert feats.shape == (2, 384, 4, 6) and feats.grad_fn is None
    assert not any(p.requires_grad for p in vits16.parameters())
    vits16.train()
    assert not vits16.training  # a frozen backbone stays in eval mode
    assert torch.allclose(vits16.features(IMG.double()), feats, atol=1e-6)  # float64 is cast, not refused
    assert "random (untrained)" in repr(vits16)


@pytest.mark.parametrize("images, error, words", [
    (torch.randn(1, 3, 65, 96), ValueError, ["65x96", "multiple of the patch size 16",
     "CenterCrop((64, 96))"]),
    (torch.randn(1, 3, 8, 8), ValueError, ["multiple of the patch size 16", "Resize((16, 16))"]),
    (torch.zeros(1, 3, 64, 64, dtype=torch.uint8), TypeError, ["float", "uint8", "ToTensor", "Normalize"]),
    (torch.randn(2, 1, 64, 64), ValueError, ["3 (RGB) channels, got 1", "convert('RGB')", "data pipeline"]),
    (torch.randn(2, 64, 64, 3), ValueError, ["channels last", "permute(0, 3, 1, 2)"]),
    (torch.randn(3, 64, 64), ValueError, ["(B, 3, H, W)", "images[None]"]),
    ([[0.0]], TypeError, ["torch.Tensor", "list"]),
])
def test_bad_images_are_rejected_with_the_fix(vits16, images, error, words):
    for method in (vits16.features, vits16.attention):
        with pytest.raises(error) as caught:
            method(images)
        for word in words:
            assert word in str(caught.value)


# ---------------------------------------------------------------------------------------------------------
# Loading: the download path over loopback HTTP, the cache, offline errors, local files, strictness


def test_official_download_then_cache_without_network(vits16, served, tmp_path, monkeypatch):
    cache = tmp_path / "hub"
    with http_server(served) as (base, requests):
        url = vits16_url(base)
        monkeypatch.setitem(bb.WEIGHTS, "dino_vits16", url)
        first = load_backbone("dino_vits16", cache_dir=cache, progress=False)
        assert requests == [f"/dino_deitsmall16_pretrain/{VITS16_FILE}"]
    assert (cache / VITS16_FILE).is_file()
    # The server is gone (its port is closed): a second load must come from the cache.
    second = load_backbone("dino_vits16", cache_dir=cache, progress=False)
    assert len(requests) == 1
    expected = vits16.features(IMG)
    assert torch.equal(first.features(IMG), expected) and torch.equal(second.features(IMG), expected)
    assert first.weights == url and url in repr(second)


def test_unreachable_url_names_url_cache_path_and_file(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # the default cache: torch.hub's folder
    url = vits16_url(f"http://127.0.0.1:{closed_port()}")
    monkeypatch.setitem(bb.WEIGHTS, "dino_vits16", url)
    start = time.perf_counter()
    with pytest.raises(ConnectionError) as caught:
        load_backbone("dino_vits16", progress=False)
    assert time.perf_counter() - start < 5
    message = str(caught.value)
    assert url in message and str(weights_dir() / VITS16_FILE) in message and repr(VITS16_FILE) in message
    assert str(tmp_path / "torch" / "hub" / "checkpoints" / VITS16_FILE) in message


def test_offline_switch_fails_at_once_without_trying_the_network(monkeypatch, tmp_path):
    """$STEGO_LITE_OFFLINE (CI's miniature paper world): a missing file is the usual clear error, no download."""
    monkeypatch.setenv("STEGO_LITE_OFFLINE", "1")
    monkeypatch.setattr(torch.hub, "download_url_to_file", lambda *a, **k: pytest.fail("tried to download"))
    with pytest.raises(ConnectionError) as caught:
        load_backbone("dino_vits16", cache_dir=tmp_path, progress=False)
    message = str(caught.value)
    assert "STEGO_LITE_OFFLINE is set" in message and str(tmp_path / VITS16_FILE) in message


def test_silent_server_times_out(monkeypatch, tmp_path):
    """A server that accepts the connection but never answers: torch.hub alone would wait forever."""
    monkeypatch.setattr(checkpoints, "DOWNLOAD_TIMEOUT_S", 0.5)
    default_timeout = socket.getdefaulttimeout()
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()  # the kernel completes the handshake; nobody ever reads or replies
        url = vits16_url(f"http://127.0.0.1:{silent.getsockname()[1]}")
        monkeypatch.setitem(bb.WEIGHTS, "dino_vits16", url)
        start = time.perf_counter()
        with pytest.raises(ConnectionError, match="could not download"):
            load_backbone("dino_vits16", cache_dir=tmp_path, progress=False)
        assert time.perf_counter() - start < 5
    assert socket.getdefaulttimeout() == default_timeout  # the timeout was only for the download


def test_truncated_file_in_cache_is_named(served, tmp_path, monkeypatch):
    data = (served / "dino_deitsmall16_pretrain" / VITS16_FILE).read_bytes()
    (tmp_path / VITS16_FILE).write_bytes(data[: len(data) // 2])
    monkeypatch.setitem(bb.WEIGHTS, "dino_vits16", vits16_url(f"http://127.0.0.1:{closed_port()}"))
    with pytest.raises(ValueError) as caught:
        load_backbone("dino_vits16", cache_dir=tmp_path, progress=False)
    assert str(tmp_path / VITS16_FILE) in str(caught.value) and "truncated" in str(caught.value)


def test_local_files(vits16, served, tmp_path):
    good = served / "dino_deitsmall16_pretrain" / VITS16_FILE
    loaded = load_backbone("dino_vits16", weights=good)
    assert torch.equal(loaded.features(IMG), vits16.features(IMG)) and loaded.weights == str(good)

    (tmp_path / "notes.pth").write_text("not a checkpoint")
    (tmp_path / "half.pth").write_bytes(good.read_bytes()[:1_000_000])
    for bad in ["notes.pth", "half.pth"]:
        with pytest.raises(ValueError, match="is not a readable PyTorch checkpoint") as caught:
            load_backbone("dino_vits16", weights=tmp_path / bad)
        assert str(tmp_path / bad) in str(caught.value)
    with pytest.raises(FileNotFoundError, match="weights='official'"):
        load_backbone("dino_vits16", weights=tmp_path / "missing.pth")
    with pytest.raises(FileNotFoundError):
        load_backbone("dino_vits16", weights="offical")  # a typo is a (missing) path, never random weights


def test_strict_loading_lists_missing_unexpected_and_misshaped_keys(vits16, tmp_path):
    state = dict(vits16.state_dict())
    del state["norm.bias"]
    state["head.weight"] = torch.zeros(10, 384)
    state["pos_embed"] = torch.zeros(1, 785, 384)  # a ViT-S/8 grid
    torch.save(state, tmp_path / "mixed.pth")
    with pytest.raises(ValueError) as caught:
        load_backbone("dino_vits16", weights=tmp_path / "mixed.pth")
    message = str(caught.value)
    assert "missing keys: norm.bias" in message and "unexpected keys: head.weight" in message
    assert "pos_embed: file (1, 785, 384), model (1, 197, 384)" in message

    torch.save({"teacher": state}, tmp_path / "training.pth")
    with pytest.raises(ValueError, match="not a flat state dict"):
        load_backbone("dino_vits16", weights=tmp_path / "training.pth")


def test_unknown_name_lists_choices():
    with pytest.raises(ValueError, match="unknown backbone 'dino_vits32'; choose one of .*dino_vits8"):
        load_backbone("dino_vits32")


# ---------------------------------------------------------------------------------------------------------
# The registry takes other backbones (texture_bank, later) behind the same interface


class PatchMean(Backbone):
    """Mean colour of each 4 x 4 patch: (B, 3, H, W) -> (B, 3, H/4, W/4). No parameters, no file."""

    def __init__(self) -> None:
        super().__init__("patch_mean", patch_size=4, embed_dim=3)

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(img, self.patch_size)


def test_registry_takes_a_backbone_without_weights(monkeypatch):
    monkeypatch.setattr(bb, "_REGISTRY", dict(bb._REGISTRY))  # registrations below vanish after the test
    register_backbone("patch_mean", PatchMean)
    assert "patch_mean" in list_backbones()
    with pytest.raises(ValueError, match="already registered"):
        register_backbone("patch_mean", PatchMean)
    for weights in ["official", None]:
        model = load_backbone("patch_mean", weights=weights)
        assert model.weights == "built in (no file needed)"
        assert model.features(IMG).shape == (2, 3, 16, 24)
    with pytest.raises(ValueError, match="multiple of the patch size 4"):
        model.features(IMG[..., :63, :])
    with pytest.raises(NotImplementedError, match="'patch_mean' has no attention maps"):
        model.attention(IMG)


def test_a_registered_weights_source_is_used_by_name(vits16, monkeypatch):
    """Weights sources are a registry: load_backbone calls the named one, and checks what it covers."""
    monkeypatch.setattr(checkpoints, "_SOURCES", dict(checkpoints._SOURCES))   # gone after the test
    calls = []

    def load(name, cache_dir, progress):
        calls.append((name, cache_dir))
        return vits16.state_dict(), "vits16 from a test source"

    checkpoints.register_weights_source("test-source", load, backbones=("dino_vits16",))
    assert "test-source" in checkpoints.weights_sources()
    model = load_backbone("dino_vits16", weights="test-source", cache_dir="somewhere", progress=False)
    assert calls == [("dino_vits16", "somewhere")]
    assert model.weights == "vits16 from a test source" and model.weights_source == "test-source"
    assert torch.equal(model.features(IMG), vits16.features(IMG))
    with pytest.raises(ValueError, match="already registered"):
        checkpoints.register_weights_source("test-source", load)
    with pytest.raises(ValueError, match=r"has weights for \['dino_vits16'\], not 'dino_vits8'"):
        load_backbone("dino_vits8", weights="test-source")
    assert load_backbone("dino_vits16", weights=None).weights_source is None
