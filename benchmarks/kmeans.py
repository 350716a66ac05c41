"""stego_lite's k-means fit vs scikit-learn's KMeans and MiniBatchKMeans: time and inertia.

    python benchmarks/kmeans.py [--n 200000] [--dim 90] [--k 27]

Data: N random-but-clustered features (K Gaussian blobs with random centres, unit noise), the shape of
STEGO codes on COCO-Stuff (D = 90, K = 27). Every method: k-means++ init, n_init=3, max_iter=100,
tol=1e-4, one seed.
"""
from __future__ import annotations

import argparse
import os
import time

import torch
from sklearn.cluster import KMeans, MiniBatchKMeans

from stego_lite.probes import kmeans


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200_000)
    parser.add_argument("--dim", type=int, default=90)
    parser.add_argument("--k", type=int, default=27)
    args = parser.parse_args()
    g = torch.Generator().manual_seed(0)
    centres = 4 * torch.randn(args.k, args.dim, generator=g)
    x = centres[torch.randint(args.k, (args.n,), generator=g)] + torch.randn(args.n, args.dim, generator=g)
    print(f"{args.n} x {args.dim} features, K = {args.k}; torch threads {torch.get_num_threads()}, "
          f"load average {os.getloadavg()[0]:.1f}")
    print(f"{'method':28s} {'seconds':>8s} {'inertia':>14s} {'iterations':>10s}")
    runs = {
        "stego_lite.probes.kmeans": lambda: kmeans(x, args.k, n_init=3, max_iter=100, tol=1e-4, seed=0),
        "sklearn KMeans": lambda: KMeans(args.k, n_init=3, max_iter=100, tol=1e-4, random_state=0).fit(x.numpy()),
        "sklearn MiniBatchKMeans": lambda: MiniBatchKMeans(args.k, n_init=3, max_iter=100, tol=1e-4,
                                                           batch_size=4096, random_state=0).fit(x.numpy()),
    }
    for name, run in runs.items():
        start = time.perf_counter()
        result = run()
        seconds = time.perf_counter() - start
        inertia = result.inertia if hasattr(result, "inertia") else result.inertia_
        iters = result.n_iter if hasattr(result, "n_iter") else result.n_iter_
        if not hasattr(result, "inertia"):  # MiniBatchKMeans' inertia_ is on the fitted data; recompute alike
            inertia = float(((x.numpy() - result.cluster_centers_[result.predict(x.numpy())]) ** 2).sum())
        print(f"{name:28s} {seconds:8.1f} {inertia:14.1f} {iters:10d}")


if __name__ == "__main__":
    main()
