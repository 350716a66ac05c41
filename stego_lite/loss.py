"""STEGO's contrastive correlation loss (reference §3): codes learn to reproduce feature correspondences.

For two sampled feature maps a, b and their codes u, v (all per image, `S x S` random points each):

    F[n,h,w,i,j] = cos(a[n,:,h,w], b[n,:,i,j])        feature correlation, no gradient
    S[n,h,w,i,j] = cos(u[n,:,h,w], v[n,:,i,j])        code correlation
    loss = mean( -clamp(S, min=0) * (F - shift) )

With `pointwise`, every anchor point's row of F is centred over its partner points, and the batch mean
of the uncentred F is added back (STEGO's code does this; it acts as a shift of b by -mean(F)).

`stego_loss` samples 11 x 11 random points per image and combines three such terms: an image with itself
("self"), with one of its nearest neighbours ("knn"), and with 5 random other images of the batch
("random"), each with its weight and shift. The settings per dataset are presets (`stego_lite.profiles.PRESETS`).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

NO_CLAMP = -9999.0   # STEGO's lower clamp when zero_clamp is False (effectively no clamp)


def unit_channels(x: Tensor, eps: float = 1e-10) -> Tensor:
    """x / max(|x|, eps) over the channel axis, like F.normalize(x, dim=1, eps=eps): (B, C, ...) -> same.

    Written as x * rsqrt(max(sum x^2, eps^2)): several times faster on a CPU than torch's vector norm
    over a non-last axis, with the same value and a finite gradient at zero.
    """
    return x * (x * x).sum(dim=1, keepdim=True).clamp_min(eps * eps).rsqrt()


def correlation(a: Tensor, b: Tensor) -> Tensor:
    """Cosine similarity of all position pairs: (B, C, H, W), (B, C, I, J) -> (B, H, W, I, J)."""
    if a.ndim != 4 or b.ndim != 4 or a.shape[:2] != b.shape[:2]:
        raise ValueError(f"expected two maps (B, C, H, W) and (B, C, I, J) with the same B and C, "
                         f"got {tuple(a.shape)} and {tuple(b.shape)}")
    B, _, H, W = a.shape
    I, J = b.shape[-2:]
    a, b = unit_channels(a), unit_channels(b)
    corr = a.flatten(2).transpose(1, 2) @ b.flatten(2)  # (B, H*W, C) @ (B, C, I*J) -> (B, H*W, I*J)
    return corr.view(B, H, W, I, J)  # = einsum("nchw,ncij->nhwij", a, b)


def feature_correlation(feats_a: Tensor, feats_b: Tensor, *, pointwise: bool = True) -> Tensor:
    """The loss's target F, without gradient: (B, C, H, W), (B, C, I, J) -> (B, H, W, I, J).

    With `pointwise`, each anchor's row F[n, h, w] is centred over the partner points (i, j), and the mean
    of the uncentred F over the whole batch is added back, as STEGO's code does.
    """
    with torch.no_grad():
        feat_corr = correlation(feats_a, feats_b)  # (B, H, W, I, J)
        if pointwise:
            global_mean = feat_corr.mean()
            feat_corr = feat_corr - feat_corr.mean(dim=(3, 4), keepdim=True)  # centre each anchor's row
            feat_corr = feat_corr - feat_corr.mean() + global_mean
    return feat_corr


def correlation_loss(feats_a: Tensor, feats_b: Tensor, code_a: Tensor, code_b: Tensor, shift: float, *,
                     pointwise: bool = True, zero_clamp: bool = True) -> tuple[Tensor, Tensor]:
    """One correlation term on sampled maps: feats (B, C, h, w) x2, codes (B, D, h, w) x2 -> (loss, S).

    loss is a scalar, the mean of -clamp(S, 0) * (F - shift) over all (B, h, w, h, w) pairs; S is the code
    correlation (B, h, w, h, w). The feature correlation F carries no gradient: only the codes learn.
    """
    feat_corr = feature_correlation(feats_a, feats_b, pointwise=pointwise)  # (B, h, w, h, w)
    return _code_loss(feat_corr, code_a, code_b, shift, zero_clamp=zero_clamp)


def _code_loss(feat_corr: Tensor, code_a: Tensor, code_b: Tensor, shift: float, *,
               zero_clamp: bool) -> tuple[Tensor, Tensor]:
    """`correlation_loss` for an already computed F (B, h, w, h, w): -> (loss, S)."""
    code_corr = correlation(code_a, code_b)  # (B, h, w, h, w)
    return pair_term(code_corr, feat_corr, shift, zero_clamp=zero_clamp).mean(), code_corr


def pair_term(code_corr: Tensor, feat_corr: Tensor | float, shift: float, *, zero_clamp: bool = True) -> Tensor:
    """The loss of each pair, -(F - shift) * clamp(S, min=0), elementwise (S clamped at -9999 instead
    without `zero_clamp`): pairs whose features agree more than `shift` pull their codes together."""
    low = 0.0 if zero_clamp else NO_CLAMP
    return -(code_corr.clamp(min=low) * (feat_corr - shift))


def random_coords(batch: int, n_points: int, *, generator: torch.Generator | None = None,
                  device: torch.device | str | None = None) -> Tensor:
    """Uniform random points in grid_sample's [-1, 1] coordinates (x, y): -> (B, S, S, 2).

    Drawn on the CPU (from `generator`, else torch's global generator) and moved to `device`, so a seed
    gives the same points on every device.
    """
    return (torch.rand(batch, n_points, n_points, 2, generator=generator) * 2 - 1).to(device)


def sample_points(t: Tensor, coords: Tensor) -> Tensor:
    """Bilinear samples at continuous points: (B, C, h, w), (B, S, S, 2) -> (B, C, S, S).

    `coords[..., 0]` is x (along w) and `coords[..., 1]` is y (along h), in [-1, 1] with align_corners=True:
    -1 and +1 are the centres of the first and last patch; outside points take the border value.
    (STEGO swaps the two S axes of `coords` before sampling; for i.i.d. random points that only reorders
    points, and the loss, a mean over all point pairs with per-row centring, is the same.)
    """
    if coords.ndim != 4 or coords.shape[-1] != 2 or coords.shape[0] != t.shape[0]:
        raise ValueError(f"coords must have shape (B, S, S, 2) with B = {t.shape[0]}, "
                         f"got {tuple(coords.shape)}")
    return F.grid_sample(t, coords.to(t.dtype), mode="bilinear", padding_mode="border", align_corners=True)


def partner_indices(batch: int, *, generator: torch.Generator | None = None,
                    device: torch.device | str | None = None) -> Tensor:
    """Random partner of each image, never itself: -> (B,) int64 (STEGO's `super_perm`).

    A random permutation whose fixed points are moved to the next image (i -> i + 1 mod B). Two images can
    therefore share a partner (reference §9.17). Needs B >= 2.
    """
    if batch < 2:
        raise ValueError(f"random partners need a batch of at least 2 images, got {batch}")
    perm = torch.randperm(batch, generator=generator).to(device)
    own = torch.arange(batch, device=device)
    return torch.where(perm == own, (own + 1) % batch, perm)


@dataclass(frozen=True)
class LossConfig:
    """Weights (lambda) and shifts (b) of the three terms, and the sampling (reference §3.4-3.5)."""

    self_weight: float = 0.67     # lambda_self  (STEGO's pos_intra_weight)
    knn_weight: float = 0.25      # lambda_knn   (pos_inter_weight)
    random_weight: float = 0.63   # lambda_rand  (neg_inter_weight)
    self_shift: float = 0.18      # b_self       (pos_intra_shift)
    knn_shift: float = 0.12       # b_knn        (pos_inter_shift)
    random_shift: float = 0.46    # b_rand       (neg_inter_shift)
    pointwise: bool = True        # centre F per anchor point (F^SC)
    zero_clamp: bool = True       # clamp S at 0 (else at -9999)
    n_points: int = 11            # S: an S x S set of random points per image (feature_samples)
    n_random: int = 5             # random partner draws per step (neg_samples)


class LossTerms(NamedTuple):
    """Result of `stego_loss`: the weighted total, each unweighted term, the S tensors and the draws."""

    total: Tensor          # scalar, with gradient
    self_loss: Tensor      # scalar
    knn_loss: Tensor       # scalar
    random_loss: Tensor    # scalar, mean over the n_random draws
    self_corr: Tensor      # S (B, S, S, S, S)
    knn_corr: Tensor       # S (B, S, S, S, S)
    random_corr: Tensor    # S (n_random * B, S, S, S, S), draw-major
    coords: Tensor         # (2, B, S, S, 2): anchor points, then partner points (knn and random)
    partners: Tensor       # (n_random, B) int64: the random partner of each image, per draw


def stego_loss(feats: Tensor, code: Tensor, feats_knn: Tensor, code_knn: Tensor, config: LossConfig, *,
               generator: torch.Generator | None = None) -> LossTerms:
    """STEGO's loss: self, KNN and random-image terms on S x S random points per image.

    feats (B, C, h, w) are the (channel-dropped) features, code (B, D, h, w) the head's output; `*_knn` the
    same for each image's nearest-neighbour partner. Random partners are other images of the batch.
    """
    return stego_losses(feats, [code], feats_knn, [code_knn], config, generator=generator)[0]


def stego_losses(feats: Tensor, codes: Sequence[Tensor], feats_knn: Tensor, codes_knn: Sequence[Tensor],
                 config: LossConfig, *, generator: torch.Generator | None = None) -> list[LossTerms]:
    """`stego_loss` of several codes of one batch (e.g. heads of different D) from one draw of points and
    partners: the sampled features and their correlation F are computed once and shared by every code.

    Element i equals `stego_loss(feats, codes[i], feats_knn, codes_knn[i], config, generator=g)` for a
    generator in the same state: the draws (anchor points, partner points, random partners) are the same.
    """
    if not codes or len(codes) != len(codes_knn):
        raise ValueError(f"need one code and one KNN code per head, got {len(codes)} and {len(codes_knn)}")
    for code, code_knn in zip(codes, codes_knn):
        if not feats.shape[0] == code.shape[0] == feats_knn.shape[0] or code.shape != code_knn.shape:
            raise ValueError(f"batch shapes disagree: feats {tuple(feats.shape)}, code {tuple(code.shape)}, "
                             f"feats_knn {tuple(feats_knn.shape)}, code_knn {tuple(code_knn.shape)}")
    B, device = feats.shape[0], feats.device
    coords = random_coords(B, config.n_points, generator=generator, device=device)
    coords_partner = random_coords(B, config.n_points, generator=generator, device=device)
    partners = [partner_indices(B, generator=generator, device=device) for _ in range(config.n_random)]
    feats1 = sample_points(feats, coords)  # (B, C, S, S)
    partner_feats = [sample_points(feats_knn, coords_partner)]
    partner_feats += [sample_points(feats[perm], coords_partner) for perm in partners]
    # F of the self term, the KNN term and each random draw: no gradient, the same for every code
    self_f, knn_f, *random_fs = [feature_correlation(feats1, other, pointwise=config.pointwise)
                                 for other in [feats1, *partner_feats]]
    clamp = {"zero_clamp": config.zero_clamp}
    out = []
    for code, code_knn in zip(codes, codes_knn):
        code1 = sample_points(code, coords)  # (B, D, S, S)
        self_loss, self_corr = _code_loss(self_f, code1, code1, config.self_shift, **clamp)
        knn_loss, knn_corr = _code_loss(knn_f, code1, sample_points(code_knn, coords_partner),
                                        config.knn_shift, **clamp)
        random = [_code_loss(f, code1, sample_points(code[perm], coords_partner), config.random_shift, **clamp)
                  for perm, f in zip(partners, random_fs)]
        random_loss = torch.stack([loss for loss, _ in random]).mean()  # = mean over the concatenated draws
        total = (config.self_weight * self_loss + config.knn_weight * knn_loss
                 + config.random_weight * random_loss)
        out.append(LossTerms(total, self_loss, knn_loss, random_loss, self_corr, knn_corr,
                             torch.cat([corr for _, corr in random]), torch.stack([coords, coords_partner]),
                             torch.stack(partners)))
    return out


# ---------------------------------------------------------------------------------------------------------
# Diagnostics: do the sampled pairs share a ground-truth label? (the maintainers' tuning advice, §3.4)


def sample_labels(label: Tensor, coords: Tensor, grid: tuple[int, int]) -> Tensor:
    """Label under each sampled point, nearest pixel: (B, H, W), (B, S, S, 2) -> (B, S, S) int64.

    `coords` address an (h, w) = `grid` feature map (align_corners=True: -1 and +1 are the centres of the
    first and last patch); patch centres are mapped to pixels of the (H, W) label map.
    """
    B, H, W = label.shape
    h, w = grid
    x = (coords[..., 0].float() + 1) / 2 * (w - 1)  # (B, S, S) in feature-grid units
    y = (coords[..., 1].float() + 1) / 2 * (h - 1)
    col = ((x + 0.5) * W / w).floor().long().clamp(0, W - 1)  # (B, S, S) pixel columns
    row = ((y + 0.5) * H / h).floor().long().clamp(0, H - 1)
    batch = torch.arange(B, device=label.device).view(B, 1, 1)
    return label[batch, row.to(label.device), col.to(label.device)]


def same_label(label_a: Tensor, label_b: Tensor) -> Tensor:
    """Label agreement of every point pair: (B, S, S) x2 -> (B, S, S, S, S) int8.

    1 = same label, 0 = different labels, -1 = unknown (either point is an ignored pixel).
    """
    a, b = label_a[:, :, :, None, None], label_b[:, None, None, :, :]  # broadcast to (B, S, S, S, S)
    out = (a == b).to(torch.int8)
    return out.masked_fill((a < 0) | (b < 0), -1)


def __getattr__(name: str):
    # Presets (backbone, data, sizes and loss per dataset) moved to stego_lite.profiles; kept importable here.
    if name in ("Preset", "PRESETS", "get_preset"):
        from stego_lite import profiles

        return getattr(profiles, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
