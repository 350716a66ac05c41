from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from stego_lite.backbone import Backbone
from stego_lite.data import normalize
from stego_lite.evaluate import StegoModel, evaluate
from stego_lite.head import SegmentationHead
from stego_lite.metrics import confusion_matrix
from stego_lite.probes import ClusterProbe, LinearProbe

RED, BLUE = (220, 30, 30), (30, 30, 220)


class MeanColour(Backbone):
    """A toy backbone: the mean normalised colour of each 4x4 patch."""

    def __init__(self) -> None:
        super().__init__("mean_colour", patch_size=4, embed_dim=3)

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(img, 4)


def scene(i: int, size: int = 16) -> dict:
    """Red left / blue right, with the boundary at a patch edge that moves with i."""
    cut = 4 * (1 + i % 3)
    rgb = np.zeros((size, size, 3), dtype=np.uint8)
    rgb[:, :cut], rgb[:, cut:] = RED, BLUE
    label = torch.zeros(size, size, dtype=torch.int64)
    label[:, cut:] = 1
    label[0, 0] = -1
    return {"image": normalize(rgb), "label": label, "index": i}


def colour_model() -> StegoModel:
    head = SegmentationHead(3, 3, kind="linear", dropout=0.0)
    with torch.no_grad():
        head.linear.weight.copy_(torch.eye(3)[:, :, None, None])
        head.linear.bias.zero_()
    red, blue = normalize(np.array([[RED]], np.uint8))[:, 0, 0], normalize(np.array([[BLUE]], np.uint8))[:, 0, 0]
    cluster, linear = ClusterProbe(3, 2), LinearProbe(3, 2)
    with torch.no_grad():
        cluster.clusters.copy_(torch.stack([blue, red]))  # cluster 0 is blue: matching must swap them
        linear.linear.weight.copy_(torch.stack([red, blue])[:, :, None, None])
        linear.linear.bias.zero_()
    return StegoModel(MeanColour(), head, cluster, linear, ("red", "blue"))


def test_metrics_equal_an_independent_computation() -> None:
    data = [scene(i) for i in range(5)]
    model = colour_model()
    result = evaluate(model, data, flip_tta=False, batch_size=2, progress=False)
    img = torch.stack([d["image"] for d in data])
    label = torch.stack([d["label"] for d in data])
    code = F.interpolate(F.avg_pool2d(img, 4), size=(16, 16), mode="bilinear", align_corners=False)
    cos = torch.einsum("bdhw,kd->bkhw", F.normalize(code, dim=1), F.normalize(model.cluster_probe.clusters, dim=1))
    expected = confusion_matrix(cos.argmax(1), label, 2)
    assert torch.equal(result["cluster_confusion"], expected)
    assert list(result["cluster"]["assignment"]) == [1, 0]
    assert result["cluster"]["accuracy"] > 90 and result["linear"]["accuracy"] > 90
    assert result["linear_confusion"].sum() == (label != -1).sum()


def test_flip_tta_averages_the_flipped_code() -> None:
    model = colour_model()
    img = scene(1)["image"][None]
    tta = model.code(img, flip_tta=True)
    by_hand = (F.avg_pool2d(img, 4) + F.avg_pool2d(img.flip(-1), 4).flip(-1)) / 2
    assert torch.allclose(tta, by_hand, atol=1e-6)


def test_crf_keeps_a_clean_segmentation_clean() -> None:
    pytest.importorskip("pydensecrf.densecrf")
    data = [scene(i) for i in range(3)]
    result = evaluate(colour_model(), data, crf=True, progress=False, batch_size=2)
    assert result["cluster"]["accuracy"] > 95
    pooled = evaluate(colour_model(), data, crf=True, crf_workers=2, progress=False, batch_size=2)
    assert torch.equal(pooled["cluster_confusion"], result["cluster_confusion"])
    assert torch.equal(pooled["linear_confusion"], result["linear_confusion"])


def test_wrong_resolution_names_the_transform() -> None:
    with pytest.raises(ValueError, match=r"SegTransform\(32\)"):
        evaluate(colour_model(), [scene(0)], res=32, progress=False)


def test_from_training_needs_both_probes() -> None:
    from stego_lite.train import TrainResult

    model = colour_model()
    result = TrainResult(model.head, {"cluster": model.cluster_probe, "linear": model.linear_probe}, [], None)
    bundled = StegoModel.from_training(model.backbone, result, ["red", "blue"])
    assert bundled.linear_probe is model.linear_probe and bundled.classes == ("red", "blue")
    with pytest.raises(ValueError, match=r"no \['linear'\] probe"):
        StegoModel.from_training(model.backbone, result._replace(probes={"cluster": model.cluster_probe}), ["a"])


def test_train_model_reuses_its_run_and_ignores_the_callers_rng(tmp_path, monkeypatch):
    """train_model: seeded probes, a run folder named by config+data+probes, read back on the second call."""
    from stego_lite import train as T
    from stego_lite.evaluate import stego_probes, train_model

    monkeypatch.setenv("STEGO_LITE_CACHE", str(tmp_path))
    g = torch.Generator().manual_seed(0)
    source = T.FeatureSource(torch.randn(12, 3, 4, 4, generator=g),
                             torch.stack([torch.roll(torch.arange(12), -i) for i in range(12)]),
                             torch.randint(0, 3, (12, 16, 16), generator=g), key="toy")
    config = T.TrainConfig(dim=4, batch_size=4, steps=5, num_neighbors=3,
                           loss=T.LossConfig(n_points=3, n_random=2))
    classes = ("a", "b", "c")
    torch.manual_seed(123)
    model, first = train_model(config, MeanColour(), source, classes)
    torch.manual_seed(456)  # another global state: same probes, same folder, nothing retrained
    again, second = train_model(config, MeanColour(), source, classes)
    assert first.run_dir == second.run_dir and (first.run_dir / T.CHECKPOINT).is_file()
    assert second.history == first.history and len(first.history) == 5
    assert torch.equal(model.cluster_probe.clusters, again.cluster_probe.clusters)
    assert model.classes == classes and model.cluster_probe.clusters.shape == (3, 4)
    fresh = stego_probes(4, 3, seed=0)["cluster"].clusters
    assert not torch.equal(fresh, model.cluster_probe.clusters), "the probe trained"
    assert torch.equal(fresh, stego_probes(4, 3, seed=0)["cluster"].clusters)


def test_evaluate_run_is_computed_once_per_run_data_and_options(tmp_path, monkeypatch):
    """evaluate_run stores the scores in the run folder; other options or a longer run evaluate anew."""
    import stego_lite.evaluate as E
    from stego_lite.train import TrainResult

    data = [scene(i) for i in range(4)]
    model = colour_model()
    result = TrainResult(model.head, {}, [{"step": 1}], tmp_path)
    calls = []
    real = E.evaluate
    monkeypatch.setattr(E, "evaluate", lambda *a, **k: calls.append(k) or real(*a, **k))
    first = E.evaluate_run(model, result, data, flip_tta=False, progress=False)
    again = E.evaluate_run(model, result, data, flip_tta=False, batch_size=1, progress=False)
    assert len(calls) == 1, "batch size and progress do not change the scores: read back"
    assert torch.equal(again["cluster_confusion"], first["cluster_confusion"])
    assert np.array_equal(again["cluster"]["assignment"], first["cluster"]["assignment"])
    assert again["linear"]["miou"] == first["linear"]["miou"]
    np.testing.assert_array_equal(again["cluster"]["per_class_iou"], first["cluster"]["per_class_iou"])
    E.evaluate_run(model, result, data, flip_tta=True, progress=False)
    E.evaluate_run(model, result._replace(history=[{"step": 1}, {"step": 2}]), data, flip_tta=False,
                   progress=False)
    assert len(calls) == 3 and len(list(tmp_path.glob("eval-*.pt"))) == 3
    for path in tmp_path.glob("eval-*.pt"):
        path.write_bytes(b"{ damaged")
    E.evaluate_run(model, result, data, flip_tta=False, progress=False)
    assert len(calls) == 4, "a damaged file is recomputed"
