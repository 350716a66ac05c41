"""How hard is SynthStuff? Two checks on the val split of the offline profile, printed as figures.

(a) Colour must not give the classes away: k-means on per-pixel RGB (K = number of classes) with
    Hungarian matching must stay within 15 points of chance (the pixel share of the most frequent class).
(b) The classes, things included, must be learnable from local appearance: a linear probe on a fixed,
    colour-blind texture descriptor (log-Gabor energies, pooled) must reach >= 80 % pixel accuracy with
    every class's IoU >= 30 %. The probe trains on pixels of the train split and is scored on val.

    python benchmarks/synthstuff_difficulty.py            # generates into a temporary folder, timed
    python benchmarks/synthstuff_difficulty.py --root DIR # reuse / fill a persistent folder

Exit status 1 if a bound fails. Takes one to three minutes on 2 CPU cores.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment

from stego_lite.data import SYNTHSTUFF_OFFLINE, SynthStuff, SynthStuffConfig

WAVELENGTHS = (3.0, 4.2, 6.0, 8.5, 12.0)   # px, one octave apart in pairs
N_ORIENT = 6
POOL_SIGMAS = (2.0, 5.0, 9.0)              # px, Gaussian pooling of the energies


def load_split(ds: SynthStuff, n: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Raw images and labels through the dataset's own loader: -> (N, S, S, 3) uint8, (N, S, S) int64."""
    n = len(ds) if n is None else min(n, len(ds))
    pairs = [ds.load(i) for i in range(n)]
    return np.stack([np.asarray(img) for img, _ in pairs]), np.stack([lab for _, lab in pairs])


def confusion(pred: np.ndarray, label: np.ndarray, k: int) -> np.ndarray:
    """(k, k) counts, rows = true class, columns = prediction."""
    return np.bincount(label * k + pred, minlength=k * k).reshape(k, k)


def scores(cm: np.ndarray) -> tuple[float, np.ndarray]:
    """Pixel accuracy and per-class IoU of a confusion matrix."""
    tp = np.diag(cm)
    return tp.sum() / cm.sum(), tp / np.maximum(cm.sum(0) + cm.sum(1) - tp, 1)


def kmeans_rgb(images: np.ndarray, labels: np.ndarray, k: int, seed: int) -> np.ndarray:
    """k-means on per-pixel RGB, clusters matched to classes by the Hungarian method: -> confusion matrix."""
    from sklearn.cluster import KMeans

    x = images.reshape(-1, 3).astype(np.float32) / 255
    y = labels.reshape(-1)
    fit_on = np.random.default_rng(seed).choice(len(x), min(len(x), 200_000), replace=False)
    clusters = KMeans(k, n_init=3, random_state=seed).fit(x[fit_on]).predict(x)
    cm = confusion(clusters, y, k)                    # rows: class, columns: cluster
    rows, cols = linear_sum_assignment(-cm)
    to_class = np.empty(k, dtype=np.int64)
    to_class[cols] = rows
    return confusion(to_class[clusters], y, k)


def log_gabor_bank(size: int) -> torch.Tensor:
    """One-sided log-Gabor filters in the Fourier domain (complex responses): -> (F, size, size)."""
    fy = np.fft.fftfreq(size)[:, None]
    fx = np.fft.fftfreq(size)[None, :]
    radius, angle = np.hypot(fx, fy), np.arctan2(fy, fx)
    filters = []
    for wavelength in WAVELENGTHS:
        radial = np.exp(-np.log(np.maximum(radius, 1e-9) * wavelength) ** 2 / (2 * 0.55 ** 2))
        radial[0, 0] = 0
        for o in range(N_ORIENT):
            delta = np.angle(np.exp(1j * (angle - o * np.pi / N_ORIENT)))
            filters.append(radial * np.exp(-delta ** 2 / (2 * (np.pi / N_ORIENT / 1.2) ** 2)))
    return torch.tensor(np.stack(filters), dtype=torch.float32)


def _blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur with reflected borders: (B, C, H, W) -> same."""
    r = int(3 * sigma)
    g = torch.exp(-torch.arange(-r, r + 1, dtype=torch.float32) ** 2 / (2 * sigma ** 2))
    g = (g / g.sum()).to(x.dtype)
    B, C, H, W = x.shape
    x = F.pad(x.reshape(B * C, 1, H, W), (r, r, r, r), mode="reflect")
    x = F.conv2d(F.conv2d(x, g.view(1, 1, 1, -1)), g.view(1, 1, -1, 1))
    return x.reshape(B, C, H, W)


def texture_descriptor(images: np.ndarray, chunk: int = 16) -> torch.Tensor:
    """Colour-blind local texture features: (N, S, S, 3) uint8 -> (N, D, S, S) float32.

    Per filter, the response energy summed over R, G, B (any pair of colours looks alike), pooled by a
    Gaussian, log-compressed and centred over filters (so overall contrast cancels); each pooling scale
    also gets the energies sorted over orientations, a rotation-invariant copy.
    """
    pad = 16
    out = []
    for start in range(0, len(images), chunk):
        x = torch.from_numpy(images[start:start + chunk]).permute(0, 3, 1, 2).float() / 255   # (B, 3, S, S)
        x = F.pad(x - x.mean((2, 3), keepdim=True), (pad,) * 4, mode="reflect")
        bank = log_gabor_bank(x.shape[-1])                                                   # (F, P, P)
        spectrum = torch.fft.fft2(x)                                                         # (B, 3, P, P)
        response = torch.fft.ifft2(spectrum[:, :, None] * bank)                              # (B, 3, F, P, P)
        energy = (response.real ** 2 + response.imag ** 2).sum(1)[..., pad:-pad, pad:-pad]   # (B, F, S, S)
        feats = []
        for sigma in POOL_SIGMAS:
            log_e = torch.log(_blur(energy, sigma) + 1e-6)
            log_e = log_e - log_e.mean(1, keepdim=True)
            B, Fn, H, W = log_e.shape
            ranked = log_e.view(B, Fn // N_ORIENT, N_ORIENT, H, W).sort(2).values.view(B, Fn, H, W)
            feats += [log_e, ranked]
        out.append(torch.cat(feats, 1))
    return torch.cat(out)


def linear_probe(images_tr: np.ndarray, labels_tr: np.ndarray, images_va: np.ndarray, labels_va: np.ndarray,
                 k: int, seed: int, n_pixels: int = 150_000) -> np.ndarray:
    """Softmax regression on descriptor pixels of the train split, scored on every val pixel: -> confusion."""
    feats = texture_descriptor(images_tr)
    D = feats.shape[1]
    x = feats.permute(0, 2, 3, 1).reshape(-1, D)
    y = torch.from_numpy(labels_tr.reshape(-1))
    pick = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))[:n_pixels]
    x, y = x[pick], y[pick]
    mean, std = x.mean(0), x.std(0) + 1e-6
    x = (x - mean) / std
    torch.manual_seed(seed)
    probe = torch.nn.Linear(D, k)
    opt = torch.optim.LBFGS(probe.parameters(), lr=1, max_iter=150, history_size=20,
                            line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(probe(x), y) + 1e-4 * probe.weight.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    feats = texture_descriptor(images_va)
    with torch.no_grad():
        pred = probe((feats.permute(0, 2, 3, 1).reshape(-1, D) - mean) / std).argmax(1).numpy()
    return confusion(pred, labels_va.reshape(-1), k)


def _table(classes: tuple[str, ...], iou: np.ndarray) -> str:
    return "  ".join(f"{name} {100 * v:.1f}" for name, v in zip(classes, iou))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, help="SynthStuff folder (default: a fresh temporary one)")
    parser.add_argument("--probe-images", type=int, default=300, help="train images for the probe")
    parser.add_argument("--workers", type=int, help="generation processes (default: CPU count, max 4)")
    args = parser.parse_args()
    config: SynthStuffConfig = SYNTHSTUFF_OFFLINE
    root = args.root or Path(tempfile.mkdtemp(prefix="synthstuff-bench-"))
    try:
        sets = {}
        for split in ("train", "val"):
            start = time.perf_counter()
            sets[split] = config.dataset(split, root=root) if args.workers is None else SynthStuff(
                split, n_images=config.n_images(split), image_size=config.image_size, seed=config.seed,
                root=root, workers=args.workers)
            print(f"generation  {split}: {config.n_images(split)} images of {config.image_size} px in "
                  f"{time.perf_counter() - start:.1f} s  ({sets[split].folder})")
        classes = sets["val"].classes
        k = len(classes)
        images_va, labels_va = load_split(sets["val"])
        images_tr, labels_tr = load_split(sets["train"], args.probe_images)
        share = np.bincount(labels_va.reshape(-1), minlength=k) / labels_va.size
        chance = share.max()
        print(f"val pixel shares: {_table(classes, share)}")
        print(f"chance (most frequent class, {classes[share.argmax()]}): {100 * chance:.1f} %")

        start = time.perf_counter()
        acc_a, iou_a = scores(kmeans_rgb(images_va, labels_va, k, config.seed))
        seconds = time.perf_counter() - start
        print(f"\n(a) k-means on RGB + Hungarian: pixel accuracy {100 * acc_a:.1f} % "
              f"(bound <= chance + 15 = {100 * chance + 15:.1f} %), mIoU {100 * iou_a.mean():.1f}  "
              f"[{seconds:.0f} s]")
        print(f"    IoU: {_table(classes, iou_a)}")

        start = time.perf_counter()
        acc_b, iou_b = scores(linear_probe(images_tr, labels_tr, images_va, labels_va, k, config.seed))
        seconds = time.perf_counter() - start
        print(f"\n(b) linear probe on log-Gabor texture energies ({len(images_tr)} train images): "
              f"pixel accuracy {100 * acc_b:.1f} % (bound >= 80), mIoU {100 * iou_b.mean():.1f}, "
              f"min IoU {100 * iou_b.min():.1f} (bound >= 30)  [{seconds:.0f} s]")
        print(f"    IoU: {_table(classes, iou_b)}")
    finally:
        if args.root is None:
            shutil.rmtree(root, ignore_errors=True)

    ok_a = acc_a <= chance + 0.15
    ok_b = acc_b >= 0.80 and iou_b.min() >= 0.30
    print(f"\n(a) colour does not give the classes away: {'PASS' if ok_a else 'FAIL'}")
    print(f"(b) classes learnable from local texture:   {'PASS' if ok_b else 'FAIL'}")
    return 0 if ok_a and ok_b else 1


if __name__ == "__main__":
    sys.exit(main())
