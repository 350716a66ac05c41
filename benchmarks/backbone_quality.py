"""How much do frozen features know about SynthStuff's classes? k-means and a linear probe, per backbone.

For raw RGB (patch mean and patch pixels), a randomly initialised `dino_vits8` and `texture_bank`, on the
val split of the offline profile (200 images of 96 px, 12 x 12 patches of 8 px):

* k-means, K = number of classes, on L2-normalised patch features (cosine geometry, like STEGO's cluster
  probe), clusters matched to classes by the Hungarian method: pixel-free, patch-level accuracy and mIoU;
* a linear probe: softmax regression (a torch linear layer on standardised features, L-BFGS) trained on
  the patches of the first `--probe-images` train images, scored on the val patches.

Labels are per patch: the majority label of its 8 x 8 pixels (patches without labelled pixels are ignored).
Also prints how long `texture_bank` takes for the whole offline split (2000 + 200 images).

    python benchmarks/backbone_quality.py
    python benchmarks/backbone_quality.py --probe-images 1000 --seed 1

Exit status 1 if the acceptance bounds of the offline backbone fail: texture_bank's k-means mIoU at least
10 points above the random ViT's and above raw RGB's, and its linear-probe mIoU clearly (>= 10 points)
above its k-means mIoU. Takes two to four minutes on 2 CPU cores (the random ViT is most of it).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch import Tensor

from stego_lite.backbone import load_backbone
from stego_lite.profiles import get_profile

BATCH = 50


def stack(dataset, n: int | None = None) -> tuple[Tensor, Tensor]:
    """The first n items of a dataset: -> images (N, 3, H, W), labels (N, H, W)."""
    n = len(dataset) if n is None else min(n, len(dataset))
    items = [dataset[i] for i in range(n)]
    return torch.stack([it["image"] for it in items]), torch.stack([it["label"] for it in items])


def patch_labels(label: Tensor, patch_size: int, n_classes: int) -> Tensor:
    """Majority label of each patch, -1 where no pixel is labelled: (N, H, W) -> (N, H/p, W/p)."""
    valid = label >= 0
    one_hot = F.one_hot(label.clamp_min(0), n_classes).permute(0, 3, 1, 2).float() * valid[:, None]
    counts = F.avg_pool2d(one_hot, patch_size)                          # (N, K, h, w)
    return counts.argmax(1).masked_fill(counts.sum(1) == 0, -1)


def extract(fn: Callable[[Tensor], Tensor], images: Tensor) -> tuple[Tensor, float]:
    """Features in batches, and the seconds it took: (N, 3, H, W) -> (N, C, h, w)."""
    start = time.perf_counter()
    with torch.no_grad():
        feats = torch.cat([fn(batch) for batch in images.split(BATCH)])
    return feats, time.perf_counter() - start


def confusion(pred: np.ndarray, label: np.ndarray, k: int) -> np.ndarray:
    """(k, k) counts over labelled positions, rows = true class, columns = prediction."""
    keep = label >= 0
    return np.bincount(label[keep] * k + pred[keep], minlength=k * k).reshape(k, k)


def scores(cm: np.ndarray) -> tuple[float, float, np.ndarray]:
    """Accuracy, mIoU and per-class IoU of a confusion matrix."""
    tp = np.diag(cm)
    iou = tp / np.maximum(cm.sum(0) + cm.sum(1) - tp, 1)
    return tp.sum() / cm.sum(), iou.mean(), iou


def as_rows(feats: Tensor) -> Tensor:
    """(N, C, h, w) -> (N*h*w, C), row-major over patches like the labels."""
    return feats.permute(0, 2, 3, 1).reshape(-1, feats.shape[1])


def kmeans_hungarian(feats: Tensor, label: Tensor, k: int, seed: int) -> np.ndarray:
    """k-means on unit-norm patch features, clusters matched to classes one-to-one: -> confusion matrix."""
    from sklearn.cluster import KMeans

    x = F.normalize(as_rows(feats).double(), dim=1).numpy()
    y = label.reshape(-1).numpy()
    clusters = KMeans(k, n_init=3, random_state=seed).fit_predict(x)
    cm = confusion(clusters, y, k)                                      # rows: class, columns: cluster
    rows, cols = linear_sum_assignment(cm, maximize=True)
    to_class = np.empty(k, dtype=np.int64)
    to_class[cols] = rows
    return confusion(to_class[clusters], y, k)


def linear_probe(train_feats: Tensor, train_label: Tensor, val_feats: Tensor, val_label: Tensor, k: int,
                 seed: int) -> np.ndarray:
    """Softmax regression on standardised train patches (L-BFGS, small L2), scored on val: -> confusion."""
    x, y = as_rows(train_feats).float(), train_label.reshape(-1)
    x, y = x[y >= 0], y[y >= 0]
    mean, std = x.mean(0), x.std(0) + 1e-6
    x = (x - mean) / std
    torch.manual_seed(seed)
    probe = torch.nn.Linear(x.shape[1], k)
    opt = torch.optim.LBFGS(probe.parameters(), lr=1, max_iter=200, history_size=20,
                            line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(probe(x), y) + 1e-4 * probe.weight.square().sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        pred = probe((as_rows(val_feats).float() - mean) / std).argmax(1).numpy()
    return confusion(pred, val_label.reshape(-1).numpy(), k)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--probe-images", type=int, default=500, help="train images for the linear probe")
    parser.add_argument("--seed", type=int, default=0, help="seeds k-means, the probe and the random ViT")
    args = parser.parse_args()

    profile = get_profile("offline")
    train_set, val_set = profile.train_set(), profile.val_set()
    classes = val_set.classes
    k, p = len(classes), 8
    train_img, train_lab = stack(train_set, args.probe_images)
    val_img, val_lab = stack(val_set)
    train_y, val_y = patch_labels(train_lab, p, k), patch_labels(val_lab, p, k)

    torch.manual_seed(args.seed)
    vit = load_backbone("dino_vits8", weights=None)  # random init, DINO's scheme, seeded above
    bank = load_backbone("texture_bank")
    candidates: dict[str, Callable[[Tensor], Tensor]] = {
        "RGB mean per patch": lambda img: F.avg_pool2d(img, p),
        "RGB pixels per patch": lambda img: F.pixel_unshuffle(img, p),
        "dino_vits8, random weights": vit.features,
        "texture_bank": bank.features,
    }
    print(f"SynthStuff val: {len(val_set)} images of {val_img.shape[-1]} px -> {val_y[0].numel()} patches "
          f"each; labels = majority label per {p}x{p} patch; linear probe = torch softmax regression "
          f"(L-BFGS) trained on {len(train_img)} train images; k-means K = {k}, n_init 3, seed {args.seed}")
    header = (f"{'features':<28}{'dim':>5}{'k-means acc':>13}{'k-means mIoU':>14}{'probe acc':>11}"
              f"{'probe mIoU':>12}{'feat s/100 img':>16}")
    print(header + "\n" + "-" * len(header), flush=True)
    results: dict[str, tuple[float, float]] = {}
    for name, fn in candidates.items():
        val_feats, seconds = extract(fn, val_img)
        train_feats, _ = extract(fn, train_img)
        km_acc, km_miou, km_iou = scores(kmeans_hungarian(val_feats, val_y, k, args.seed))
        lp_acc, lp_miou, lp_iou = scores(linear_probe(train_feats, train_y, val_feats, val_y, k, args.seed))
        results[name] = (km_miou, lp_miou)
        print(f"{name:<28}{val_feats.shape[1]:>5}{100 * km_acc:>12.1f}%{100 * km_miou:>14.1f}"
              f"{100 * lp_acc:>10.1f}%{100 * lp_miou:>12.1f}{100 * seconds / len(val_img):>16.2f}",
              flush=True)
        if name == "texture_bank":
            print("\ntexture_bank per-class IoU (k-means | probe): " + ", ".join(
                f"{c} {100 * a:.0f}|{100 * b:.0f}" for c, a, b in zip(classes, km_iou, lp_iou)))

    all_img = torch.cat([stack(train_set)[0], val_img])
    cpu_start = time.process_time()
    _, seconds = extract(bank.features, all_img)
    cpu = time.process_time() - cpu_start
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"
    print(f"texture_bank features for the whole offline split ({len(all_img)} images of "
          f"{val_img.shape[-1]} px, batches of {BATCH}, {torch.get_num_threads()} threads): {seconds:.1f} s "
          f"wall, {cpu:.1f} s CPU (load average {load}: other jobs slow a shared CPU)")

    tb_km, tb_lp = results["texture_bank"]
    checks = {
        "k-means mIoU >= random ViT's + 10": tb_km >= results["dino_vits8, random weights"][0] + 0.10,
        "k-means mIoU > raw RGB's (mean and pixels)": tb_km > max(results["RGB mean per patch"][0],
                                                                  results["RGB pixels per patch"][0]),
        "linear-probe mIoU >= k-means mIoU + 10": tb_lp >= tb_km + 0.10,
    }
    print()
    for what, ok in checks.items():
        print(f"texture_bank {what}: {'PASS' if ok else 'FAIL'}")
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
