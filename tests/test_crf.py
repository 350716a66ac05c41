from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("pydensecrf.densecrf", reason="pydensecrf2 is in requirements.txt; install it")

from stego_lite.crf import CRFParams, crf_pool, dense_crf, dense_crf_batch  # noqa: E402


def two_regions(size: int = 40, seed: int = 0):
    """An image split by a vertical colour edge at column 17, and a blurred, noisy guess of that split."""
    rng = np.random.default_rng(seed)
    image = np.zeros((size, size, 3), dtype=np.uint8)
    image[:, :17] = (200, 40, 40)
    image[:, 17:] = (40, 40, 200)
    truth = np.zeros((size, size), dtype=np.int64)
    truth[:, 17:] = 1
    # probability of class 1 ramps smoothly across the middle: the edge is uncertain for ~16 px
    cols = np.arange(size)
    p1 = 1 / (1 + np.exp(-(cols - size / 2) / 4.0))
    p1 = np.clip(np.broadcast_to(p1, (size, size)) + rng.normal(0, 0.05, (size, size)), 0.01, 0.99)
    probs = np.stack([1 - p1, p1]).astype(np.float32)
    return image, probs, truth


def test_crf_snaps_a_blurred_boundary_to_the_image_edge() -> None:
    image, probs, truth = two_regions()
    before = (probs.argmax(0) == truth).mean()
    refined = dense_crf(image, probs)
    after = (refined.argmax(0) == truth).mean()
    assert refined.shape == probs.shape and np.allclose(refined.sum(0), 1, atol=1e-4)
    assert before < 0.95 and after > 0.99
    # and it is more confident than the input near the edge
    assert np.abs(refined[1] - 0.5).mean() > np.abs(probs[1] - 0.5).mean()


def test_without_pairwise_terms_the_crf_keeps_the_argmax() -> None:
    image, probs, _ = two_regions()
    plain = dense_crf(image, probs, CRFParams(gaussian_compat=0, bilateral_compat=0))
    assert np.array_equal(plain.argmax(0), probs.argmax(0))


def test_batch_in_worker_processes_equals_one_by_one() -> None:
    pairs = [two_regions(seed=s) for s in range(3)]
    images = np.stack([p[0] for p in pairs])
    probs = np.stack([p[1] for p in pairs])
    serial = dense_crf_batch(images, probs)
    parallel = dense_crf_batch(images, probs, workers=2)
    assert np.allclose(serial, parallel)
    with crf_pool(2) as pool:   # one pool reused over two batches
        halves = [dense_crf_batch(images[i:i + 2], probs[i:i + 2], pool=pool) for i in (0, 2)]
    assert np.allclose(serial, np.concatenate(halves))
    assert np.allclose(serial[1], dense_crf(images[1], probs[1]))


def test_bad_inputs_are_named() -> None:
    image, probs, _ = two_regions()
    with pytest.raises(ValueError, match="uint8"):
        dense_crf(image.astype(np.float32), probs)
    with pytest.raises(ValueError, match="upsample the probabilities"):
        dense_crf(image, probs[:, :20])


def test_stego_hands_pydensecrf_a_truncated_bgr_image(monkeypatch) -> None:
    """As STEGO's crf.py: the 8-bit image of torchvision's to_pil_image (x * 255, truncated) in BGR order."""
    from types import SimpleNamespace

    import torch

    from stego_lite import crf, evaluate

    H, W, K = 4, 5, 3
    whole = np.random.default_rng(0).integers(0, 255, (H, W, 3))
    rgb = (whole + 0.6) / 255                   # x * 255 = n + 0.6: truncation gives n, rounding n + 1
    seen = []

    class RecordingCRF:
        def __init__(self, width, height, classes):
            assert (width, height, classes) == (W, H, K)

        def setUnaryEnergy(self, unary):
            pass

        def addPairwiseGaussian(self, **kwargs):
            pass

        def addPairwiseBilateral(self, *, rgbim, **kwargs):
            seen.append(np.array(rgbim))

        def inference(self, iterations):
            return np.full((K, H * W), 1 / K, dtype=np.float32)

    monkeypatch.setattr(crf, "densecrf_module", lambda: SimpleNamespace(DenseCRF2D=RecordingCRF))
    mean = torch.tensor([0.485, 0.456, 0.406])[:, None, None]
    std = torch.tensor([0.229, 0.224, 0.225])[:, None, None]
    img = ((torch.from_numpy(rgb).permute(2, 0, 1).float() - mean) / std)[None]
    evaluate.crf_refine(img, torch.full((1, K, H, W), float(np.log(1 / K))))
    assert len(seen) == 1 and seen[0].dtype == np.uint8 and seen[0].flags["C_CONTIGUOUS"]
    assert np.array_equal(seen[0], whole[:, :, ::-1].astype(np.uint8))


def test_dense_crf_equals_pydensecrf_on_the_bgr_image() -> None:
    import pydensecrf.densecrf as dcrf

    image, probs, _ = two_regions()
    image[:, :, 1] = np.arange(image.shape[1], dtype=np.uint8)[None] * 5   # three different channels
    K, H, W = probs.shape
    direct = dcrf.DenseCRF2D(W, H, K)
    direct.setUnaryEnergy(np.ascontiguousarray(-np.log(probs).reshape(K, -1)))
    direct.addPairwiseGaussian(sxy=1, compat=3)
    direct.addPairwiseBilateral(sxy=67, srgb=3, rgbim=np.ascontiguousarray(image[:, :, ::-1]), compat=4)
    expected = np.asarray(direct.inference(10)).reshape(K, H, W)
    assert np.allclose(dense_crf(image, probs), expected, atol=1e-6)
