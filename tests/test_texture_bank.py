"""Tests for stego_lite.texture_bank: registry, the patch-8 grid for any size, determinism across runs and
processes, per-patch normalisation, colour invariance, the Gabor pairs and HOG against independent
computations, and the documented errors. CPU only, small images.
"""
from __future__ import annotations

import hashlib
import math
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from stego_lite.backbone import Backbone, VisionTransformer, list_backbones, load_backbone
from stego_lite.data import IMAGENET_MEAN, IMAGENET_STD
from stego_lite.texture_bank import TextureBank, TextureBankConfig, gabor_kernels


@pytest.fixture(scope="module")
def bank() -> TextureBank:
    return load_backbone("texture_bank")


def paint(t: torch.Tensor, c1: tuple[float, ...], c2: tuple[float, ...]) -> torch.Tensor:
    """SynthStuff's colouring, c1 + (c2 - c1) * t, ImageNet-normalised: (H, W) in [0, 1] -> (1, 3, H, W)."""
    c1_, c2_ = torch.tensor(c1).view(3, 1, 1), torch.tensor(c2).view(3, 1, 1)
    rgb = c1_ + (c2_ - c1_) * t
    mean, std = torch.tensor(IMAGENET_MEAN).view(3, 1, 1), torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return ((rgb - mean) / std)[None]


def grid(H: int, W: int) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.meshgrid(torch.arange(H, dtype=torch.float32), torch.arange(W, dtype=torch.float32),
                          indexing="ij")


def stripes(H: int, W: int, period: float = 9.0, slant: float = 0.3) -> torch.Tensor:
    yy, xx = grid(H, W)
    return 0.5 + 0.5 * torch.tanh(4 * torch.sin(2 * math.pi * (slant * xx + yy) / period))


def checks(H: int, W: int, cell: float = 6.0) -> torch.Tensor:
    yy, xx = grid(H, W)
    return 0.5 + 0.5 * torch.tanh(6 * torch.sin(math.pi * xx / cell) * torch.sin(math.pi * yy / cell))


# ---------------------------------------------------------------------------------------------------------
# The Backbone contract


def test_registered_and_loaded_without_a_file(bank):
    assert "texture_bank" in list_backbones()
    assert isinstance(bank, Backbone) and bank.weights == "built in (no file needed)"
    assert bank.patch_size == 8 and 192 <= bank.embed_dim <= 384
    assert list(bank.parameters()) == [] and bank.state_dict() == {}  # nothing learned, nothing to load
    assert bank.groups["contrast_stats"].stop == bank.embed_dim      # the groups tile the channels
    starts = sorted(s.start for s in bank.groups.values())
    stops = sorted(s.stop for s in bank.groups.values())
    assert starts[0] == 0 and starts[1:] == stops[:-1]


@pytest.mark.parametrize("size", [(8, 8), (16, 40), (96, 96), (72, 24)])
def test_grid_matches_a_patch8_vit_for_any_multiple_of_8(bank, size):
    vit = VisionTransformer("tiny", patch_size=8, embed_dim=16, depth=1, num_heads=2, img_size=32)
    img = torch.randn(2, 3, *size)
    feats = bank.features(img)
    assert feats.shape == (2, bank.embed_dim, size[0] // 8, size[1] // 8)
    assert feats.shape[2:] == vit.features(img).shape[2:]
    assert torch.isfinite(feats).all()


def test_patch_grid_is_aligned_with_the_image(bank):
    """Changing only the pixels of patch (row 2, column 4) changes that patch's features the most."""
    flat = stripes(48, 64)
    changed = flat.clone()
    changed[16:24, 32:40] = checks(48, 64)[16:24, 32:40]
    colours = ((0.2, 0.3, 0.8), (0.9, 0.6, 0.1))
    diff = (bank.features(paint(changed, *colours)) - bank.features(paint(flat, *colours))).norm(dim=1)[0]
    assert diff.shape == (6, 8)
    assert divmod(int(diff.argmax()), 8) == (2, 4)


def test_identical_across_runs_and_instances(bank):
    img = torch.randn(3, 3, 32, 48)
    assert torch.equal(bank.features(img), bank.features(img.clone()))
    assert torch.equal(bank.features(img), TextureBank().features(img))


def test_identical_in_a_fresh_process(bank):
    """The features of a seeded random batch hash the same here and in a new interpreter."""
    code = ("import hashlib, torch; from stego_lite.texture_bank import TextureBank; "
            "g = torch.Generator().manual_seed(7); img = torch.randn(2, 3, 24, 32, generator=g); "
            "print(hashlib.sha256(TextureBank().features(img).numpy().tobytes()).hexdigest())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    img = torch.randn(2, 3, 24, 32, generator=torch.Generator().manual_seed(7))
    assert out.strip() == hashlib.sha256(bank.features(img).numpy().tobytes()).hexdigest()


def test_each_patch_is_normalised_like_a_layernorm_token(bank):
    feats = bank.features(torch.randn(2, 3, 32, 32))
    assert torch.allclose(feats.mean(1), torch.zeros(1), atol=1e-5)
    assert torch.allclose(feats.square().mean(1), torch.ones(1), atol=1e-4)


def test_colour_invariant_but_texture_sensitive(bank):
    t = stripes(48, 48)
    a = bank.features(paint(t, (0.1, 0.2, 0.9), (0.8, 0.7, 0.1)))
    recoloured = bank.features(paint(t, (0.9, 0.9, 0.2), (0.2, 0.6, 0.5)))      # other colours and sign
    other = bank.features(paint(checks(48, 48), (0.1, 0.2, 0.9), (0.8, 0.7, 0.1)))  # same colours
    same = F.cosine_similarity(a, recoloured, dim=1)
    different = F.cosine_similarity(a, other, dim=1)
    assert same.min() > 0.99
    assert different.max() < 0.8


# ---------------------------------------------------------------------------------------------------------
# The parts, against independent computations


def test_gabor_pairs_are_zero_mean_unit_norm_quadrature():
    kernels = gabor_kernels((3.0, 4.24), 8, 0.45)[:, 0].double()          # (2 * 2 * 8, k, k)
    even, odd = kernels[0::2], kernels[1::2]
    assert kernels.shape[0] == 32
    assert torch.allclose(kernels.flatten(1).norm(dim=1), torch.ones(32, dtype=torch.float64), atol=1e-6)
    assert even.sum((1, 2)).abs().max() < 1e-6 and odd.sum((1, 2)).abs().max() < 1e-6
    assert (even * odd).sum((1, 2)).abs().max() < 1e-6                      # orthogonal pair


def test_gabor_energy_is_phase_invariant_and_orientation_tuned():
    """A sinusoid at the filter's wavelength: the pair's energy is the same at every pixel (quadrature),
    and the filter of the sinusoid's orientation responds the most."""
    kernels = gabor_kernels((6.0,), 8, 0.45)                                # (16, 1, k, k)
    yy, xx = grid(64, 64)
    theta = 3 * math.pi / 8                                                 # orientation index 3
    wave = torch.cos(2 * math.pi * (xx * math.cos(theta) + yy * math.sin(theta)) / 6.0)
    resp = F.conv2d(wave[None, None], kernels)[0]                           # (16, h, w), valid part only
    energy = resp[0::2].square() + resp[1::2].square()                      # (8, h, w)
    assert int(energy.mean((1, 2)).argmax()) == 3
    assert energy[3].std() / energy[3].mean() < 0.01                          # one filter alone: 0 to max
    assert resp[6].square().std() / resp[6].square().mean() > 0.5


def reference_hog(rgb: np.ndarray, nb: int = 9, cell: int = 4) -> np.ndarray:
    """Loops over pixels: colour-max gradient, unsigned angle, linear split between the two nearest bins
    (centres at (b + 1/2) pi / nb), mean per cell: (3, H, W) -> (nb, H/cell, W/cell)."""
    _, H, W = rgb.shape
    padded = np.pad(rgb, ((0, 0), (1, 1), (1, 1)), mode="edge").astype(np.float64)
    out = np.zeros((nb, H // cell, W // cell))
    for y in range(H):
        for x in range(W):
            gx = padded[:, y + 1, x + 2] - padded[:, y + 1, x]
            gy = padded[:, y + 2, x + 1] - padded[:, y, x + 1]
            c = int(np.argmax(gx**2 + gy**2))
            angle = math.atan2(gy[c], gx[c]) % math.pi
            position = angle / math.pi * nb - 0.5
            lower = math.floor(position)
            share = position - lower
            out[lower % nb, y // cell, x // cell] += math.hypot(gx[c], gy[c]) * (1 - share)
            out[(lower + 1) % nb, y // cell, x // cell] += math.hypot(gx[c], gy[c]) * share
    return out / cell**2


def test_gradient_histograms_match_a_loop_over_pixels(bank):
    rgb = torch.rand(2, 3, 16, 24, generator=torch.Generator().manual_seed(0))
    hist = bank.gradient_histograms(rgb)
    assert hist.shape == (2, 9, 4, 6)
    for b in range(2):
        np.testing.assert_allclose(hist[b].numpy(), reference_hog(rgb[b].numpy()), atol=1e-5)


# ---------------------------------------------------------------------------------------------------------
# Errors


def test_attention_says_there_is_none(bank):
    with pytest.raises(NotImplementedError, match="no attention maps.*features"):
        bank.attention(torch.zeros(1, 3, 16, 16))


def test_sizes_that_are_not_multiples_of_8_are_rejected(bank):
    with pytest.raises(ValueError, match="not a multiple of the patch size 8"):
        bank.features(torch.zeros(1, 3, 20, 16))


def test_patch_size_must_match_the_pyramid():
    with pytest.raises(ValueError, match="patch_size must be 2 \\*\\* levels"):
        TextureBank(TextureBankConfig(patch_size=16, levels=3))
