"""`python -m stego_lite segment` (and `train --probes`, which writes the model file it reads).

Run in-process through `main(argv)`; the models are tiny (texture_bank + a 6-d head, the 2-block ViT
of test_released) and the images 32-48 px, so each test takes about a second.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import stego_lite
import stego_lite.backbone as bb
from stego_lite.__main__ import main
from stego_lite.evaluate import StegoModel, load_model, save_model
from stego_lite.released import RELEASED, load_released
from test_knn import Images, PoolBackbone
from test_model_file import released_parts, trained_like
from test_released import lightning_state, save_checkpoint, tiny_vit
from test_train import serve_as_synthstuff

KINDS = ("cluster", "cluster_overlay", "linear", "linear_overlay")


@pytest.fixture(autouse=True)
def tiny_vit_as_dino_vits8(monkeypatch):
    monkeypatch.setitem(bb._REGISTRY, "dino_vits8", tiny_vit)


def rgb(seed: int, h: int = 32, w: int = 48) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


@pytest.fixture
def photos(tmp_path) -> Path:
    """Two readable images (PNG, grayscale JPEG), one broken file, and a text file that is not listed."""
    folder = tmp_path / "photos"
    folder.mkdir()
    Image.fromarray(rgb(0)).save(folder / "a.png")
    Image.fromarray(rgb(1)).convert("L").save(folder / "b.jpg")
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n then nothing")
    (folder / "notes.txt").write_text("ignored: not an image suffix")
    return folder


@pytest.fixture
def model_file(tmp_path) -> tuple[StegoModel, Path]:
    model = trained_like(bb.load_backbone("texture_bank"))
    return model, save_model(model, tmp_path / "model.pt")


def run(capsys, *args: str) -> tuple[int, str, str]:
    code = main(["segment", *args, "--device", "cpu", "--no-progress"])
    out, err = capsys.readouterr()
    return code, out, err


def test_folder_with_a_broken_file(photos, model_file, tmp_path, capsys):
    model, path = model_file
    out = tmp_path / "out"
    code, stdout, stderr = run(capsys, "--checkpoint", str(path), "--images", str(photos), "--out", str(out))
    assert code == 1
    assert "could not segment broken.png" in stderr and "a.png" not in stderr
    assert "2 of 3 images segmented; 8 PNG files" in stdout
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{s}_{k}.png" for s in "ab" for k in KINDS)
    expected = stego_lite.segment(photos / "a.png", model)[0]  # seen at res=48 (48 x 72), written at 32 x 48
    cluster = np.asarray(Image.open(out / "a_cluster.png"))
    assert cluster.shape == (32, 48) and np.array_equal(cluster, expected.cluster)
    assert np.array_equal(np.asarray(Image.open(out / "a_linear.png")), expected.linear)
    assert np.array_equal(np.asarray(Image.open(out / "a_linear_overlay.png")), expected.linear_overlay)


def test_options_reach_the_segmentation(photos, model_file, tmp_path, capsys):
    model, path = model_file
    (photos / "broken.png").unlink()
    out = tmp_path / "out"
    args = ["--checkpoint", str(path), "--images", str(photos), "--out", str(out)]
    code, _, stderr = run(capsys, *args, "--res", "24", "--no-flip", "--assignment", "3,0,2", "--model-res")
    assert code == 0 and stderr == ""
    expected = stego_lite.segment(photos / "b.jpg", model, res=24, flip_tta=False,
                                  assignment=np.array([3, 0, 2]), keep_model_res=True)[0]
    cluster = np.asarray(Image.open(out / "b_cluster.png"))
    assert cluster.shape == (24, 32)  # --model-res: 24 x 36, trimmed to the 8-px patch grid
    assert np.array_equal(cluster, np.where(expected.cluster < 0, 255, expected.cluster))
    assert set(np.unique(cluster)) <= {0, 1, 2, 255}  # class ids, 255 where the cluster matches no class


def test_a_released_checkpoint_file(photos, tmp_path, capsys):
    ckpt = save_checkpoint(tmp_path / "potsdam_test.ckpt", lightning_state(released_parts()))
    out = tmp_path / "out"
    code, stdout, _ = run(capsys, "--checkpoint", str(ckpt), "--images", str(photos), "--out", str(out),
                          "--res", "32")
    assert code == 1 and "2 of 3 images segmented" in stdout
    model = StegoModel.from_released(load_released(ckpt))
    expected = stego_lite.segment(photos / "a.png", model, res=32)[0]
    assert np.array_equal(np.asarray(Image.open(out / "a_linear.png")), expected.linear)
    assert np.array_equal(np.asarray(Image.open(out / "a_cluster.png")), expected.cluster)


@pytest.mark.parametrize("problem", ["no folder", "empty folder", "same folder", "unknown name",
                                     "neither kind", "assignment text", "assignment length"])
def test_nothing_is_done_on_bad_arguments(problem, photos, model_file, tmp_path, capsys):
    _, path = model_file
    empty = tmp_path / "empty"
    empty.mkdir()
    (tmp_path / "notes.txt").write_text("hello")
    args = {"checkpoint": str(path), "images": str(photos), "out": str(tmp_path / "out")}
    expected = {
        "no folder": ({"images": str(tmp_path / "missing")}, "missing: no such folder"),
        "empty folder": ({"images": str(empty)}, "no images in"),
        "same folder": ({"out": str(photos)}, "--out is the --images folder"),
        "unknown name": ({"checkpoint": "cocostuf27"}, "'cocostuf27' is neither a released STEGO model"),
        "neither kind": ({"checkpoint": str(tmp_path / "notes.txt")},
                         "neither a stego_lite model file nor a STEGO checkpoint"),
        "assignment text": ({"assignment": "a,b"}, "comma-separated integers"),
        "assignment length": ({"assignment": "0,1"}, "each of the 3 classes its own cluster id"),
    }[problem]
    args |= expected[0]
    code, _, stderr = run(capsys, *[x for k, v in args.items() for x in (f"--{k}", v)])
    assert code == 2 and expected[1] in stderr
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


def test_help_lists_the_released_names_and_exit_status_without_importing_torch():
    code = ("import sys; from stego_lite.__main__ import _parser\n"
            "try:\n    _parser().parse_args(['segment', '--help'])\nexcept SystemExit:\n    pass\n"
            "print('torch imported' if 'torch' in sys.modules else 'no torch')")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip().endswith("no torch")
    assert "exit status: 0" in result.stdout and "1 some images could not be read" in result.stdout
    for name in RELEASED:
        assert name in result.stdout


class LabelledImages(Images):
    classes = ("a", "b", "c", "d")   # Images' labels are -1..3
    palette = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255], [9, 9, 9]], np.uint8)


def test_train_with_probes_writes_a_model_that_segment_reads(photos, tmp_path, monkeypatch, capsys):
    """train --probes on a stand-in backbone and data, then segment with <run>/model.pt."""
    monkeypatch.setenv("STEGO_LITE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setitem(bb._REGISTRY, "pool", PoolBackbone)
    real_load = bb.load_backbone
    monkeypatch.setattr(bb, "load_backbone",
                        lambda name, weights="official", **kw: real_load("pool", weights, **kw))
    serve_as_synthstuff(monkeypatch, LabelledImages(n=40))
    run_dir = tmp_path / "run"
    assert main(["train", "--preset", "synthstuff", "--steps", "3", "--batch-size", "4", "--dim", "3",
                 "--device", "cpu", "--no-progress", "--run-dir", str(run_dir), "--probes"]) == 0
    assert f"--checkpoint {run_dir / 'model.pt'}" in capsys.readouterr().out
    model = load_model(run_dir / "model.pt")
    saved = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    assert sorted(saved["probes"]) == ["cluster", "linear"] and saved["step"] == 3
    assert torch.equal(model.head.linear.weight, saved["head"]["linear.weight"])
    assert torch.equal(model.cluster_probe.clusters, saved["probes"]["cluster"]["clusters"])
    assert model.classes == LabelledImages.classes and model.res == 96
    assert np.array_equal(model.palette, LabelledImages.palette)
    (photos / "broken.png").unlink()
    code, _, _ = run(capsys, "--checkpoint", str(run_dir / "model.pt"), "--images", str(photos),
                     "--out", str(tmp_path / "out"))
    assert code == 0 and len(list((tmp_path / "out").iterdir())) == 8


def test_a_released_name_reads_the_cached_download(photos, tmp_path, monkeypatch, capsys):
    """--checkpoint potsdam: the file already in torch.hub's cache is used, nothing is downloaded."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setitem(RELEASED, "potsdam", "http://127.0.0.1:9/saved_models/potsdam_test.ckpt")  # no server
    from stego_lite.env import weights_dir

    weights_dir().mkdir(parents=True)
    save_checkpoint(weights_dir() / "potsdam_test.ckpt", lightning_state(released_parts()))
    code, stdout, _ = run(capsys, "--checkpoint", "potsdam", "--images", str(photos), "--out",
                          str(tmp_path / "out"), "--res", "32")
    assert code == 1 and "2 of 3 images segmented; 8 PNG files" in stdout
