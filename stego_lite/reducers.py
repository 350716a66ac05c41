"""Reducers: one interface for every token representation the mechanism chapters compare (reference §8).

    pca = PCA().fit(tokens(train_feats))               # (N, C) training tokens
    codes = transform_map(pca.with_dim(12), feats)     # (B, C, h, w) -> (B, 12, h, w)

Four reducers share `fit(tokens)` on training tokens (N, C) and `transform(tokens)` to (N, D): `Identity`
(the raw backbone features), `PCA` on standardised tokens, a Gaussian `RandomProjection` and `HeadReducer`
(a trained STEGO head with `dim=D`). Working on tokens, one row per patch (`tokens`, with the majority
label of each patch from `patch_labels`), lets every representation be fitted and scored by the same
code, whatever produced it.
"""
from __future__ import annotations

import copy
from typing import Protocol

import torch
from torch import Tensor, nn

from stego_lite.metrics import IGNORE_INDEX


# ---------------------------------------------------------------------------------------------------------
# Tokens: feature maps as rows, labels at patch resolution


def tokens(feats: Tensor) -> Tensor:
    """Feature maps as one row per patch: (N, C, h, w) -> (N * h * w, C) float32."""
    if feats.ndim != 4:
        raise ValueError(f"expected feature maps (N, C, h, w), got shape {tuple(feats.shape)}")
    return feats.float().permute(0, 2, 3, 1).reshape(-1, feats.shape[1])


def patch_labels(labels: Tensor, grid: tuple[int, int], n_classes: int) -> Tensor:
    """The majority label of each patch: (N, H, W) -> (N, h, w) int64; -1 where no pixel is labelled.

    H and W must be multiples of h and w (one patch = an (H/h) x (W/w) block of pixels).
    """
    N, H, W = labels.shape
    h, w = grid
    if H % h or W % w:
        raise ValueError(f"labels {H}x{W} do not split into a {h}x{w} grid of equal patches")
    patch = (torch.arange(H) // (H // h))[:, None] * w + (torch.arange(W) // (W // w))[None, :]   # (H, W)
    index = (torch.arange(N)[:, None, None] * (h * w) + patch) * (n_classes + 1) + labels.long() + 1
    counts = torch.bincount(index.flatten(), minlength=N * h * w * (n_classes + 1)).view(N, h, w, -1)
    majority = counts[..., 1:].argmax(-1)
    return torch.where(counts[..., 1:].sum(-1) > 0, majority, torch.full_like(majority, IGNORE_INDEX))


# ---------------------------------------------------------------------------------------------------------
# Reducers: fit on training tokens (N, C), transform to (N, D)


class Reducer(Protocol):
    name: str
    dim: int

    def fit(self, x: Tensor) -> Reducer: ...

    def transform(self, x: Tensor) -> Tensor: ...


def transform_map(reducer: Reducer, feats: Tensor) -> Tensor:
    """Apply a token reducer to feature maps: (B, C, h, w) -> (B, D, h, w)."""
    B, _, h, w = feats.shape
    return reducer.transform(tokens(feats)).reshape(B, h, w, -1).permute(0, 3, 1, 2)


class Standardizer:
    """Per-channel mean and population std of the fit tokens (scikit-learn's StandardScaler)."""

    def fit_scaler(self, x: Tensor) -> None:
        x = x.double()
        self.mean = x.mean(0)
        std = x.std(0, unbiased=False)
        self.scale = torch.where(std > 0, std, torch.ones_like(std))   # constant channels stay as they are

    def standardize(self, x: Tensor) -> Tensor:
        return ((x.double() - self.mean) / self.scale).float()


class Identity:
    """The raw backbone features (the 'raw DINO' baseline)."""

    name = "raw"

    def __init__(self) -> None:
        self.dim = 0

    def fit(self, x: Tensor) -> Identity:
        self.dim = x.shape[1]
        return self

    def transform(self, x: Tensor) -> Tensor:
        return x.float()


class PCA(Standardizer):
    """The first `dim` principal components of standardised tokens (Koenig et al.: StandardScaler + PCA).

    After `fit`, `explained_variance_ratio` holds the share of every component (all C of them), and
    `with_dim(d)` gives the same fit truncated to d components. Standardisation uses the fit statistics
    (Koenig et al. standardise each batch by its own statistics at run time; with large batches the two
    agree).
    """

    name = "PCA"

    def __init__(self, dim: int | None = None) -> None:
        self.dim = dim

    def fit(self, x: Tensor) -> PCA:
        if x.ndim != 2 or len(x) < 2:
            raise ValueError(f"PCA needs (N, C) tokens with N >= 2, got shape {tuple(x.shape)}")
        if self.dim is not None and not 1 <= self.dim <= x.shape[1]:
            raise ValueError(f"dim={self.dim} must be between 1 and the {x.shape[1]} feature channels")
        self.fit_scaler(x)
        z = (x.double() - self.mean) / self.scale
        z = z - z.mean(0)
        variance, vectors = torch.linalg.eigh(z.T @ z / (len(z) - 1))   # ascending
        self.explained_variance = variance.flip(0).clamp_min(0)
        self.explained_variance_ratio = (self.explained_variance / self.explained_variance.sum()).numpy()
        self.components = vectors.flip(1).T.contiguous()   # (C, C), rows by decreasing variance
        self.dim = self.dim or x.shape[1]
        return self

    def with_dim(self, dim: int) -> PCA:
        """This fit, keeping the first `dim` components."""
        if not 1 <= dim <= len(self.components):
            raise ValueError(f"dim={dim} must be between 1 and {len(self.components)}")
        out = copy.copy(self)
        out.dim = dim
        return out

    def transform(self, x: Tensor) -> Tensor:
        return (self.standardize(x).double() @ self.components[:self.dim].T).float()


class RandomProjection(Standardizer):
    """Gaussian random projection to `dim` dimensions, entries N(0, 1/dim) (scikit-learn's
    GaussianRandomProjection), of standardised tokens unless `standardize=False`."""

    name = "RP"

    def __init__(self, dim: int, *, seed: int = 0, standardize: bool = True) -> None:
        if dim < 1:
            raise ValueError(f"dim must be positive, got {dim}")
        self.dim, self.seed, self.standardize_inputs = dim, seed, standardize

    def fit(self, x: Tensor) -> RandomProjection:
        if self.standardize_inputs:
            self.fit_scaler(x)
        generator = torch.Generator().manual_seed(self.seed)
        self.matrix = (torch.randn(x.shape[1], self.dim, generator=generator, dtype=torch.float64)
                       / self.dim ** 0.5).float()
        return self

    def transform(self, x: Tensor) -> Tensor:
        return (self.standardize(x) if self.standardize_inputs else x.float()) @ self.matrix


class HeadReducer:
    """A trained STEGO head applied to each token (its convolutions are 1x1): (N, C) -> (N, D)."""

    name = "STEGO"

    def __init__(self, head: nn.Module) -> None:
        self.head = head.eval()
        self.dim = head.code_dim

    def fit(self, x: Tensor) -> HeadReducer:   # trained elsewhere (train_heads)
        return self

    @torch.no_grad()
    def transform(self, x: Tensor) -> Tensor:
        device = next(self.head.parameters()).device
        return self.head(x.float().to(device)[:, :, None, None])[:, :, 0, 0].cpu()
