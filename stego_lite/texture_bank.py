"""`texture_bank`: the offline profile's frozen features, a fixed dense texture descriptor on a ViT's grid.

Offline there are no DINO weights, and a tiny ViT cannot be self-supervised on two CPU cores in minutes
(the DINO chapter shows its collapse). STEGO only consumes frozen patch features and their correlations, so
the offline profile uses this honest stand-in: no training, no weights, the same `Backbone` interface as
the ViTs, and the same patch-8 grid. For every 8 x 8 patch it describes *texture*, never colour:

    gabor_patch        log energy of quadrature Gabor pairs, 6 wavelengths x 8 orientations, in the patch
    gabor_context      the same energies averaged over the 3 x 3 patches around it (24 px)
    gabor_sorted       the context energies sorted over orientation at each wavelength (rotation invariant)
    gabor_wide         the sorted energies averaged over 5 x 5 patches (40 px)
    hog_cell8          histogram of oriented gradients (9 unsigned bins) of the patch
    hog_cell4          the same for its four 4 x 4 cells
    hog_context        the same over 3 x 3 patches
    contrast_stats     how oriented each wavelength's energy is, how evenly the gradients fill the patch

Colour enters only through filter energies summed over R, G, B and gradients of the strongest channel, and
each group is normalised per patch, so a pattern painted in any two colours, at any contrast, gives the same
vector. The groups overlap on purpose: 254 correlated channels, like a ViT's redundant embedding, so that
k-means on them sees the classes only partly while a linear probe finds much more.

    backbone = load_backbone("texture_bank")          # or TextureBank(); nothing is downloaded
    feats = backbone.features(img)                     # (B, 3, 96, 96) -> (B, 254, 12, 12)
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from stego_lite.backbone import Backbone
from stego_lite.data.transforms import IMAGENET_MEAN, IMAGENET_STD

_BINOMIAL = (1.0, 4.0, 6.0, 4.0, 1.0)  # blur before halving the resolution (Burt & Adelson's pyramid)


@dataclass(frozen=True)
class TextureBankConfig:
    patch_size: int = 8
    wavelengths: tuple[float, ...] = (3.0, 4.24)  # px at full resolution; each pyramid level doubles them
    levels: int = 3                 # pyramid levels: wavelengths 3, 4.2, 6, 8.5, 12, 17 px with the defaults
    n_orientations: int = 8         # Gabor orientations over [0, pi)
    sigma_ratio: float = 0.45       # Gaussian envelope sigma / wavelength: about 1.3 octaves of bandwidth
    hog_bins: int = 9               # unsigned gradient orientations, as in Dalal & Triggs
    energy_floor: float = 1e-4      # added before the log: below the energy of SynthStuff's pixel noise


class TextureBank(Backbone):
    """Hand-crafted, training-free texture features: (B, 3, H, W) ImageNet-normalised -> (B, C, H/8, W/8).

    Deterministic (no parameters, fixed filters) and normalised per patch like a ViT token after its final
    LayerNorm: every patch vector has zero mean and unit variance over its C channels. `groups` names the
    channel ranges of each part (see the module docstring).
    """

    mixed_precision = False   # log-energies and histograms of fixed filters: bfloat16 would blur them

    def __init__(self, config: TextureBankConfig | None = None) -> None:
        config = config or TextureBankConfig()
        if config.patch_size != 2 ** (config.levels) or config.levels < 1:
            raise ValueError(f"patch_size must be 2 ** levels (each level halves the image down to half a "
                             f"patch), got patch_size={config.patch_size}, levels={config.levels}")
        n_scales = len(config.wavelengths) * config.levels
        O, nb = config.n_orientations, config.hog_bins
        sizes = {"gabor_patch": n_scales * O, "gabor_context": n_scales * O, "gabor_sorted": n_scales * O,
                 "gabor_wide": n_scales * O, "hog_cell8": nb, "hog_cell4": 4 * nb, "hog_context": nb,
                 "contrast_stats": n_scales + 2}
        groups, start = {}, 0
        for name, size in sizes.items():
            groups[name] = slice(start, start + size)
            start += size
        super().__init__("texture_bank", patch_size=config.patch_size, embed_dim=start)
        self.config = config
        self.groups: dict[str, slice] = groups
        self.weights = "built in (hand-crafted, no file)"
        self.register_buffer("gabor", gabor_kernels(config.wavelengths, O, config.sigma_ratio),
                             persistent=False)  # (2 * S * O, 1, k, k): fixed, so not in the state dict
        self.register_buffer("blur", torch.tensor(_BINOMIAL) / sum(_BINOMIAL), persistent=False)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, img: Tensor) -> Tensor:
        B = img.shape[0]
        rgb = img * self.std + self.mean  # back to [0, 1] intensities
        energy = self.gabor_energy(rgb) + self.config.energy_floor      # (B, S*O, h, w)
        O = self.config.n_orientations
        S = energy.shape[1] // O
        log_e = energy.log()
        context = _neighbourhood_mean(energy, 3).log()                   # energies pooled before the log
        ranked = context.view(B, S, O, *context.shape[-2:]).sort(2).values.flatten(1, 2)  # (B, S*O, h, w)
        hist = self.gradient_histograms(rgb)                             # (B, nb, H/4, W/4)
        cell8 = F.avg_pool2d(hist, 2)                                    # (B, nb, h, w)
        parts = {
            "gabor_patch": log_e,
            "gabor_context": context,
            "gabor_sorted": ranked,
            "gabor_wide": torch.log(_neighbourhood_mean(ranked.exp(), 5)),
            "hog_cell8": _hellinger(cell8),
            "hog_cell4": _hellinger(F.pixel_unshuffle(hist, 2)),         # (B, 4 * nb, h, w)
            "hog_context": _hellinger(_neighbourhood_mean(cell8, 3)),
            "contrast_stats": contrast_stats(log_e, hist, S),
        }
        feats = torch.cat([_unit(parts[name]) for name in self.groups], dim=1)  # (B, C, h, w)
        feats = feats - feats.mean(1, keepdim=True)
        return feats * (self.embed_dim ** 0.5 / feats.norm(dim=1, keepdim=True).clamp_min(1e-6))

    def gabor_energy(self, rgb: Tensor) -> Tensor:
        """Quadrature Gabor energy summed over R, G, B, mean per patch: (B, 3, H, W) -> (B, S*O, H/p, W/p).

        The filters run at every pyramid level, so each level adds the base wavelengths doubled. Responses
        are sampled every second pixel: a quadrature pair's energy is the squared envelope of the response,
        smooth on the scale of the filter, so its patch mean hardly changes.
        """
        B, _, H, W = rgb.shape
        k, p = self.gabor.shape[-1], self.patch_size
        x, out = rgb, []
        for level in range(self.config.levels):                             # x: (B, 3, H / 2^level, ...)
            padded = F.pad(x.flatten(0, 1)[:, None], (k // 2,) * 4, mode="replicate")
            resp = F.conv2d(padded, self.gabor, stride=2).square_()          # (B*3, 2*F, H/2^(l+1), ...)
            pooled = F.avg_pool2d(resp, p >> (level + 1))                      # (B*3, 2*F, H/p, W/p)
            summed = pooled.view(B, 3, -1).sum(1).view(B, -1, 2, H // p, W // p)  # over R, G, B
            out.append(summed.sum(2))                                           # and phases: (B, F, h, w)
            if level + 1 < self.config.levels:
                x = self.downsample(x)
        # out[level] holds [wavelength, orientation]; wavelength index = level * len(wavelengths) + i
        return torch.cat(out, dim=1)

    def downsample(self, x: Tensor) -> Tensor:
        """Binomial blur and halve: (B, C, H, W) -> (B, C, H/2, W/2)."""
        B, C, H, W = x.shape
        g = self.blur
        x = F.pad(x.reshape(B * C, 1, H, W), (2, 2, 2, 2), mode="replicate")
        x = F.conv2d(F.conv2d(x, g.view(1, 1, 1, -1), stride=(1, 2)), g.view(1, 1, -1, 1), stride=(2, 1))
        return x.view(B, C, H // 2, W // 2)

    def gradient_histograms(self, rgb: Tensor) -> Tensor:
        """HOG cells of 4 px: (B, 3, H, W) -> (B, bins, H/4, W/4), gradient of the strongest channel.

        At each pixel the channel with the largest gradient votes with its magnitude for its unsigned
        orientation, split linearly between the two nearest bins (Dalal & Triggs' colour-max HOG).
        """
        B, _, H, W = rgb.shape
        nb = self.config.hog_bins
        padded = F.pad(rgb, (1, 1, 1, 1), mode="replicate")
        gx = padded[..., 1:-1, 2:] - padded[..., 1:-1, :-2]                     # (B, 3, H, W)
        gy = padded[..., 2:, 1:-1] - padded[..., :-2, 1:-1]
        mag2 = gx.square() + gy.square()
        best_gx, best_gy, best = gx[:, :1], gy[:, :1], mag2[:, :1]             # (B, 1, H, W) each
        for c in (1, 2):  # elementwise, which is much faster than argmax + gather over the channel axis
            stronger = mag2[:, c:c + 1] > best
            best_gx = torch.where(stronger, gx[:, c:c + 1], best_gx)
            best_gy = torch.where(stronger, gy[:, c:c + 1], best_gy)
            best = torch.maximum(best, mag2[:, c:c + 1])
        magnitude = best.sqrt()
        position = torch.atan2(best_gy, best_gx).remainder(math.pi) * (nb / math.pi) - 0.5  # centres 0, 1, ..
        lower = position.floor()
        upper_share = position - lower                                        # vote split between 2 bins
        lower = lower.long().remainder(nb)                                    # -1 wraps round to nb - 1
        upper = (lower + 1).remainder(nb)
        # add each pixel's two votes into its 4 x 4 cell's histogram: (B, H/4 * W/4 * nb), cell-major
        rows = torch.arange(H, device=rgb.device) // 4
        cols = torch.arange(W, device=rgb.device) // 4
        cell = (rows[:, None] * (W // 4) + cols[None, :]) * nb                # (H, W): first bin of its cell
        hist = rgb.new_zeros(B, H // 4 * (W // 4) * nb)
        hist.scatter_add_(1, (cell + lower).view(B, -1), (magnitude * (1 - upper_share)).view(B, -1))
        hist.scatter_add_(1, (cell + upper).view(B, -1), (magnitude * upper_share).view(B, -1))
        return hist.view(B, H // 4, W // 4, nb).permute(0, 3, 1, 2) / 16      # mean vote per pixel

    def check_images(self, images: Tensor) -> Tensor:
        img = super().check_images(images)  # this backbone has no parameters, so check the device here
        if img.device != self.gabor.device:
            raise ValueError(f"images are on {img.device} but {self.name} is on {self.gabor.device}; "
                             "move one of them, e.g. backbone.to(images.device)")
        return img.to(self.gabor.dtype)

    def attention(self, images: Tensor) -> Tensor:
        raise NotImplementedError(
            f"{self.name!r} is a hand-crafted texture descriptor, not a transformer: it has no attention "
            "maps. Use features(images) for its patch features, or a ViT backbone (e.g. 'dino_vits8') for "
            "attention.")


def gabor_kernels(wavelengths: tuple[float, ...], n_orientations: int, sigma_ratio: float) -> Tensor:
    """Even/odd (cosine/sine) Gabor pairs, each of unit norm: -> (2 * len(wavelengths) * O, 1, k, k).

    Order: [wavelength, orientation, phase]. The even filter's mean is removed, so flat regions give zero.
    """
    radius = math.ceil(2.5 * sigma_ratio * max(wavelengths))
    r = torch.arange(-radius, radius + 1, dtype=torch.float64)
    yy, xx = torch.meshgrid(r, r, indexing="ij")
    kernels = []
    for wavelength in wavelengths:
        sigma = sigma_ratio * wavelength
        envelope = torch.exp(-(xx.square() + yy.square()) / (2 * sigma**2))
        for o in range(n_orientations):
            theta = math.pi * o / n_orientations
            phase = 2 * math.pi * (xx * math.cos(theta) + yy * math.sin(theta)) / wavelength
            even, odd = envelope * torch.cos(phase), envelope * torch.sin(phase)
            even = even - envelope * (even.sum() / envelope.sum())  # zero DC: no response to flat colour
            kernels += [even / even.norm(), odd / odd.norm()]
    return torch.stack(kernels).unsqueeze(1).float()


def contrast_stats(log_e: Tensor, hist: Tensor, n_scales: int) -> Tensor:
    """How oriented each wavelength's energy is, and how unevenly the gradient energy fills the patch's four
    cells: (B, S*O, h, w) log energies, (B, bins, 2h, 2w) HOG cells -> (B, S + 2, h, w)."""
    B, _, h, w = log_e.shape
    per_scale = log_e.view(B, n_scales, -1, h, w)                               # (B, S, O, h, w)
    orientedness = per_scale.amax(2) - per_scale.exp().mean(2).log()           # log(max / mean energy)
    cells = F.pixel_unshuffle(hist.sum(1, keepdim=True), 2)                     # (B, 4, h, w)
    mean = cells.mean(1, keepdim=True).clamp_min(1e-6)
    spread = cells.std(1, keepdim=True) / mean                                  # 0: evenly textured
    peak = torch.log(cells.amax(1, keepdim=True) / mean + 1e-6)                 # one busy cell: an edge
    return torch.cat([orientedness, spread, peak], dim=1)


def _neighbourhood_mean(x: Tensor, size: int) -> Tensor:
    """Mean over size x size patches around each patch (edges replicated): (B, C, h, w) -> same."""
    r = size // 2
    return F.avg_pool2d(F.pad(x, (r, r, r, r), mode="replicate"), size, stride=1)


def _hellinger(hist: Tensor) -> Tensor:
    """Square root of the L1-normalised histogram (contrast drops out): (B, C, h, w) -> same."""
    return (hist / hist.sum(1, keepdim=True).clamp_min(1e-8)).sqrt()


def _unit(x: Tensor) -> Tensor:
    """Centre each patch over the group's channels and scale to unit norm: (B, C, h, w) -> same."""
    x = x - x.mean(1, keepdim=True)
    return x / x.norm(dim=1, keepdim=True).clamp_min(1e-6)
