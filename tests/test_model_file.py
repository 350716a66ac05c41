"""Model files (evaluate.save_model / load_model) and released checkpoints as StegoModels (from_released).

The backbones are small: `texture_bank` (built in, no weights: stored by name), and the 2-block ViT of
test_released registered as "dino_vits8" (random weights: embedded; or a local weights file: by path).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

import stego_lite.backbone as bb
from stego_lite.data import POTSDAM3_CLASSES
from stego_lite.data.classes import POTSDAM3_PALETTE
from stego_lite.evaluate import ModelFileError, StegoModel, load_model, save_model
from stego_lite.head import SegmentationHead
from stego_lite.probes import ClusterProbe, LinearProbe
from stego_lite.released import load_released
from test_evaluate import colour_model
from test_released import CFG, C, D, K, lightning_state, save_checkpoint, tiny_vit

CLASSES = ("sky", "grass", "road")
IMG = torch.randn(2, 3, 32, 40, generator=torch.Generator().manual_seed(3))


@pytest.fixture(autouse=True)
def tiny_vit_as_dino_vits8(monkeypatch):
    """"dino_vits8" builds the 2-block, 16-channel ViT of test_released (the real one is 87 MB)."""
    monkeypatch.setitem(bb._REGISTRY, "dino_vits8", tiny_vit)


def trained_like(backbone: bb.Backbone, *, n_clusters: int = 4, seed: int = 0) -> StegoModel:
    """A model with random (seeded) head and probes on `backbone`, every parameter nonzero."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        head = SegmentationHead(backbone.embed_dim, D)
        cluster, linear = ClusterProbe(D, n_clusters), LinearProbe(D, len(CLASSES))
        with torch.no_grad():
            for p in [*head.parameters(), *linear.parameters()]:
                p.add_(torch.randn_like(p) * 0.1)
    palette = np.array([[0, 0, 255], [0, 200, 0], [90, 90, 90]], np.uint8)
    return StegoModel(backbone, head, cluster, linear, CLASSES, palette=palette, res=48).eval()


def assert_same_predictions(a: StegoModel, b: StegoModel) -> None:
    for flip in (False, True):
        for x, y in zip(a.log_probs(IMG, flip_tta=flip), b.log_probs(IMG, flip_tta=flip)):
            assert torch.equal(x, y)


def test_round_trip_texture_bank_is_stored_by_name(tmp_path):
    model = trained_like(bb.load_backbone("texture_bank"))
    path = save_model(model, tmp_path / "model.pt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt"]  # written atomically: no leftovers
    record = torch.load(path, weights_only=True)
    assert record["backbone"]["name"] == "texture_bank" and record["backbone"]["weights"] == "official"
    assert "backbone_state" not in record
    loaded = load_model(path)
    assert loaded.classes == CLASSES and loaded.res == 48
    assert np.array_equal(loaded.palette, model.palette)
    assert loaded.head.kind == "nonlinear" and loaded.cluster_probe.clusters.shape == (4, D)
    assert not loaded.head.training and loaded.backbone.name == "texture_bank"
    assert_same_predictions(model, loaded)


def test_round_trip_random_vit_embeds_its_weights(tmp_path):
    with torch.random.fork_rng():
        torch.manual_seed(1)
        vit = tiny_vit().eval()
    model = trained_like(vit)
    path = save_model(model, tmp_path / "model.pt")
    record = torch.load(path, weights_only=True)
    assert record["backbone"]["weights"] == "embedded"
    assert torch.equal(record["backbone_state"]["pos_embed"], vit.pos_embed)
    before = torch.get_rng_state()
    loaded = load_model(path)
    assert torch.equal(torch.get_rng_state(), before)  # rebuilding the ViT did not draw from the caller's RNG
    assert loaded.backbone.weights.startswith(f"{path} (embedded")
    assert_same_predictions(model, loaded)


def test_a_local_weights_file_is_stored_by_path(tmp_path):
    with torch.random.fork_rng():
        torch.manual_seed(2)
        torch.save(tiny_vit().state_dict(), tmp_path / "vit.pth")
    model = trained_like(bb.load_backbone("dino_vits8", weights=tmp_path / "vit.pth"))
    path = save_model(model, tmp_path / "model.pt")
    record = torch.load(path, weights_only=True)
    assert record["backbone"]["weights"] == str((tmp_path / "vit.pth").resolve())
    assert "backbone_state" not in record
    assert_same_predictions(model, load_model(path))
    (tmp_path / "vit.pth").unlink()
    with pytest.raises(FileNotFoundError, match="vit.pth"):
        load_model(path)


def test_saving_refuses_what_a_file_could_not_rebuild(tmp_path):
    with pytest.raises(ValueError, match="'mean_colour' is not registered"):
        save_model(colour_model(), tmp_path / "m.pt")
    model = trained_like(tiny_vit().eval())  # random weights: only by embedding them
    with pytest.raises(ValueError, match="embed_backbone=True"):
        save_model(model, tmp_path / "m.pt", embed_backbone=False)
    bad = trained_like(bb.load_backbone("texture_bank"))
    bad.palette = np.zeros((2, 3), np.uint8)
    with pytest.raises(ValueError, match=r"palette must be \(n_classes, 3\) = \(3, 3\)"):
        save_model(bad, tmp_path / "m.pt")
    assert not list(tmp_path.iterdir())


def test_wrong_shapes_are_listed(tmp_path):
    path = save_model(trained_like(bb.load_backbone("texture_bank")), tmp_path / "model.pt")
    record = torch.load(path, weights_only=True)
    del record["checksum"]   # edited by hand: no checksum to verify
    record["head"]["state"]["linear.weight"] = torch.zeros(D + 1, 254, 1, 1)
    record["classes"] = [*CLASSES, "sea"]        # one more class than the linear probe predicts
    del record["cluster_probe"]["state"]["clusters"]
    torch.save(record, tmp_path / "bad.pt")
    with pytest.raises(ValueError) as caught:
        load_model(tmp_path / "bad.pt")
    message = str(caught.value)
    assert str(tmp_path / "bad.pt") in message
    assert f"head.linear.weight: file ({D + 1}, 254, 1, 1), model ({D}, 254, 1, 1)" in message
    assert f"linear_probe.linear.weight: file (3, {D}, 1, 1), model (4, {D}, 1, 1)" in message
    assert "cluster_probe.clusters: missing" in message
    assert "palette: file (3, 3), model (4, 3)" in message


def test_files_of_another_kind_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="save_model"):
        load_model(tmp_path / "nothing.pt")
    (tmp_path / "notes.txt").write_text("not a model")
    with pytest.raises(ModelFileError, match=r"notes.txt is not a stego_lite model file: torch.load"):
        load_model(tmp_path / "notes.txt")
    torch.save({"config": {}, "head": {}, "probes": {}, "optimizers": []}, tmp_path / "checkpoint.pt")
    with pytest.raises(ModelFileError, match="training run's checkpoint"):
        load_model(tmp_path / "checkpoint.pt")
    ckpt = save_checkpoint(tmp_path / "stego.ckpt", lightning_state(released_parts()))
    with pytest.raises(ModelFileError, match="load_released"):   # pickled OmegaConf: refused by weights_only
        load_model(ckpt)
    path = save_model(trained_like(bb.load_backbone("texture_bank")), tmp_path / "model.pt")
    record = torch.load(path, weights_only=True)
    torch.save({**record, "version": 2}, tmp_path / "future.pt")
    with pytest.raises(ValueError, match="format version 2; this stego_lite reads version 1"):
        load_model(tmp_path / "future.pt")


# ---------------------------------------------------------------------------------------------------------
# Released checkpoints (test_released's STEGO-layout file)


def released_parts() -> dict:
    with torch.random.fork_rng():
        torch.manual_seed(0)
        parts = {"vit": tiny_vit(), "head": SegmentationHead(C, D), "cluster": ClusterProbe(D, K),
                 "linear": LinearProbe(D, K)}
    return {name: module.eval() for name, module in parts.items()}


def test_from_released_names_classes_and_round_trips(tmp_path):
    parts = released_parts()
    stego = load_released(save_checkpoint(tmp_path / "potsdam.ckpt", lightning_state(parts)))
    model = StegoModel.from_released(stego)
    assert model.classes == POTSDAM3_CLASSES and np.array_equal(model.palette, POTSDAM3_PALETTE)
    assert model.res == 320 and model.backbone is stego.backbone
    code = parts["head"](parts["vit"].features(IMG))
    with torch.no_grad():
        assert torch.equal(model.code(IMG), code)
    path = save_model(model, tmp_path / "model.pt")
    assert torch.load(path, weights_only=True)["backbone"]["weights"] == "embedded"  # the .ckpt's own copy
    assert_same_predictions(model, load_model(path))


def test_from_released_without_known_classes_numbers_them(tmp_path):
    cfg = {**CFG, "dataset_name": "directory"}
    stego = load_released(save_checkpoint(tmp_path / "dir.ckpt", lightning_state(released_parts()), cfg))
    model = StegoModel.from_released(stego)
    assert model.classes == ("class 0", "class 1", "class 2") and model.palette is None


def test_segment_uses_the_model_size():
    """res="model": the model's own `res` (here 16 px for a 32-px image), else 320."""
    import stego_lite

    model = trained_like(bb.load_backbone("texture_bank"))
    rgb = np.random.default_rng(0).integers(0, 255, (32, 48, 3), dtype=np.uint8)
    model.res = 16
    assert stego_lite.segment(rgb, model, keep_model_res=True)[0].cluster.shape == (16, 24)
    model.res = None
    assert stego_lite.segment(rgb, model, flip_tta=False, keep_model_res=True)[0].cluster.shape == (320, 480)


def test_the_backbone_runs_outside_the_heads_autocast(monkeypatch):
    """`code` puts only the head under env.autocast and leaves the backbone to its own (texture_bank opts out
    of bfloat16 on CUDA), as training does: its batches hold features computed before the head runs."""
    import contextlib

    import stego_lite.env as env

    inside = []

    @contextlib.contextmanager
    def recording_autocast(device, enabled=True):
        inside.append(True)
        try:
            yield
        finally:
            inside.pop()

    model = trained_like(bb.load_backbone("texture_bank"))
    seen = []
    real = model.backbone.features
    monkeypatch.setattr(model.backbone, "features", lambda img: (seen.append(bool(inside)), real(img))[1])
    monkeypatch.setattr(env, "autocast", recording_autocast)
    plain = model.code(IMG, flip_tta=True)
    assert seen == [False, False]        # both the image and its flip, outside the head's autocast
    expected = model.head(real(IMG))
    expected = (expected + model.head(real(IMG.flip(-1))).flip(-1)) / 2
    assert torch.allclose(plain, expected, atol=1e-6)

