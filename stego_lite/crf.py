"""Dense-CRF post-processing with STEGO's parameters (reference §5.5), through the pydensecrf2 package.

A fully connected CRF (Krähenbühl & Koltun, 2011) sharpens a soft segmentation along image edges:
unaries are -log p of the probe's probabilities, and two pairwise kernels favour equal labels for
nearby pixels (Gaussian, sxy=1, compat=3) and for nearby pixels of similar colour (bilateral, sxy=67,
srgb=3, compat=4); 10 mean-field iterations.

    probs = dense_crf(image_uint8, probs)             # (H, W, 3) uint8, (K, H, W) -> (K, H, W)
    probs = dense_crf_batch(images, probs, workers=2)  # (B, H, W, 3), (B, K, H, W), in worker processes

The image is handed to pydensecrf as STEGO hands it: in BGR order (its crf.py reverses the channels of
the RGB image). The exact bilateral kernel would only see colour distances, which do not depend on the
order, but pydensecrf filters approximately, on a permutohedral lattice whose cells do: RGB and BGR
inputs give slightly different marginals (with rounding instead of truncation, 0.47 % of the argmax
pixels of chapter 3's offline validation set changed). Batches run in *spawned* worker processes that
import only numpy and pydensecrf: STEGO's forked pool could hang once torch had started its
OpenMP threads (STEGO issue #12). This module imports no torch at all, for the same reason.
"""
from __future__ import annotations

import contextlib
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class CRFParams:
    iterations: int = 10
    gaussian_sxy: float = 1.0
    gaussian_compat: float = 3.0
    bilateral_sxy: float = 67.0
    bilateral_srgb: float = 3.0
    bilateral_compat: float = 4.0


STEGO_CRF = CRFParams()


def densecrf_module():
    """pydensecrf's `densecrf` module; an ImportError saying how to install it when it is missing (callers
    check this up front, before a long run would fail at its first CRF)."""
    try:
        import pydensecrf.densecrf as dcrf
    except ImportError as err:
        raise ImportError("the CRF needs the pydensecrf2 package: pip install pydensecrf2==1.1 "
                          "(it compiles a small C++ extension)") from err
    return dcrf


def dense_crf(image: np.ndarray, probs: np.ndarray, params: CRFParams = STEGO_CRF) -> np.ndarray:
    """Refine class probabilities with a dense CRF: (H, W, 3) uint8 RGB image, (K, H, W) probs -> (K, H, W).

    `probs` must be probabilities over K classes at the image's resolution (e.g. softmax of the
    probe's logits upsampled to the image); the result is the CRF's marginals, float32. The image goes
    to pydensecrf in BGR order, as in STEGO.
    """
    dcrf = densecrf_module()
    image, probs = np.asarray(image), np.asarray(probs, dtype=np.float32)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be (H, W, 3) uint8, got {image.shape} {image.dtype}; "
                         "use stego_lite.data.denormalize and convert to uint8 first")
    K, H, W = probs.shape
    if image.shape[:2] != (H, W):
        raise ValueError(f"probs are {H}x{W} but the image is {image.shape[0]}x{image.shape[1]}; "
                         "upsample the probabilities to the image first")
    crf = dcrf.DenseCRF2D(W, H, K)
    unary = -np.log(np.clip(probs, 1e-8, 1.0)).reshape(K, -1)  # = pydensecrf's unary_from_softmax
    crf.setUnaryEnergy(np.ascontiguousarray(unary))
    crf.addPairwiseGaussian(sxy=params.gaussian_sxy, compat=params.gaussian_compat)
    bgr = np.ascontiguousarray(image[:, :, ::-1])   # STEGO's channel order (see the module docstring)
    crf.addPairwiseBilateral(sxy=params.bilateral_sxy, srgb=params.bilateral_srgb, rgbim=bgr,
                             compat=params.bilateral_compat)
    return np.asarray(crf.inference(params.iterations), dtype=np.float32).reshape(K, H, W)


def _one(args: tuple[np.ndarray, np.ndarray, CRFParams]) -> np.ndarray:
    return dense_crf(*args)


def crf_pool(workers: int) -> ProcessPoolExecutor | contextlib.nullcontext:
    """`workers` spawned CRF processes to reuse across batches (`with crf_pool(2) as pool:`); 0: none.

    Starting processes costs far more than refining one small image, so a whole evaluation shares
    one pool. Spawned, not forked (`workers.process_pool`): safe once torch has started its threads.
    """
    if workers <= 0:
        return contextlib.nullcontext(None)
    from stego_lite.workers import process_pool

    return process_pool(workers)


def dense_crf_batch(images: np.ndarray, probs: np.ndarray, *, workers: int = 0,
                    params: CRFParams = STEGO_CRF, pool: ProcessPoolExecutor | None = None) -> np.ndarray:
    """`dense_crf` over a batch: (B, H, W, 3) uint8, (B, K, H, W) -> (B, K, H, W).

    Runs in `pool` if given (see `crf_pool`), else in `workers` new spawned processes (safe with
    torch), else (workers=0) in this process.
    """
    jobs = [(np.asarray(img), np.asarray(p, dtype=np.float32), params) for img, p in zip(images, probs)]
    if pool is not None:
        return np.stack(list(pool.map(_one, jobs)))
    if workers <= 0 or len(jobs) <= 1:
        return np.stack([_one(job) for job in jobs])
    with crf_pool(workers) as new_pool:
        return np.stack(list(new_pool.map(_one, jobs)))
