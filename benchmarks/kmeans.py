"""stego_lite's k-means fit vs scikit-learn's KMeans on 1 and 2 CPU threads: time and inertia.

    python benchmarks/kmeans.py [--n 100000] [--dim 90] [--k 27] [--threads 1 2]

Data: N features drawn around K random centres (unit noise), the shape of STEGO's codes on COCO-Stuff
(D = 90, K = 27): "separated" centres (4 x randn, k-means settles in a few iterations) and "overlapping"
ones (1 x randn, dozens of iterations). Every method: k-means++ init, n_init=3, max_iter=100, tol=1e-4,
seed 0, float32. Ours runs euclidean (comparable with scikit-learn) and cosine (the cluster probe's
metric). Then "same start": ours (n_init=1, seed s) and scikit-learn started from our k-means++ centroids
of seed s run the same Lloyd iterations to the same inertia, which compares the speed per iteration
(ours includes its k-means++). Threads: torch.set_num_threads for ours, threadpoolctl for scikit-learn.
"""
from __future__ import annotations

import argparse
import os
import time

import torch
from sklearn.cluster import KMeans
from threadpoolctl import threadpool_limits

from stego_lite.kmeans import kmeans, kmeans_plus_plus


def blobs(n: int, dim: int, k: int, spread: float) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    centres = spread * torch.randn(k, dim, generator=g)
    return centres[torch.randint(k, (n,), generator=g)] + torch.randn(n, dim, generator=g)


def timed(run) -> tuple[float, object]:
    start = time.perf_counter()
    result = run()
    return time.perf_counter() - start, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=90)
    parser.add_argument("--k", type=int, default=27)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()
    print(f"{args.n} x {args.dim} features, K = {args.k}, n_init=3; {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.1f}")
    print(f"{'data':12s} {'threads':>7s} {'method':26s} {'seconds':>8s} {'inertia':>14s} {'iterations':>10s}")
    for data, spread in (("separated", 4.0), ("overlapping", 1.0)):
        x = blobs(args.n, args.dim, args.k, spread)
        for threads in args.threads:
            torch.set_num_threads(threads)
            runs = {
                "stego_lite euclidean": lambda: kmeans(x, args.k, n_init=3, max_iter=100, tol=1e-4, seed=0),
                "stego_lite cosine": lambda: kmeans(x, args.k, metric="cosine", n_init=3, max_iter=100,
                                                    tol=1e-4, seed=0),
                "sklearn KMeans": lambda: KMeans(args.k, n_init=3, max_iter=100, tol=1e-4,
                                                 random_state=0).fit(x.numpy()),
            }
            for name, run in runs.items():
                with threadpool_limits(threads):
                    seconds, result = timed(run)
                inertia = result.inertia if hasattr(result, "inertia") else result.inertia_
                iters = result.n_iter if hasattr(result, "n_iter") else result.n_iter_
                print(f"{data:12s} {threads:7d} {name:26s} {seconds:8.2f} {inertia:14.1f} {iters:10d}",
                      flush=True)
            for seed in (0, 1):
                start = kmeans_plus_plus(x, args.k, "euclidean", torch.Generator().manual_seed(seed))
                sklearn = KMeans(args.k, init=start.numpy(), n_init=1, max_iter=100, tol=1e-4)
                with threadpool_limits(threads):
                    ours_s, ours = timed(lambda: kmeans(x, args.k, n_init=1, seed=seed))
                    theirs_s, theirs = timed(lambda: sklearn.fit(x.numpy()))
                for name, sec, inertia, iters in (
                        ("stego_lite, same start", ours_s, ours.inertia, ours.n_iter),
                        ("sklearn, same start", theirs_s, theirs.inertia_, theirs.n_iter_)):
                    print(f"{data:12s} {threads:7d} {name + f' {seed}':26s} {sec:8.2f} {inertia:14.1f} "
                          f"{iters:10d}", flush=True)


if __name__ == "__main__":
    main()
