"""Faults injected as a user meets them: kills, damaged files, name clashes, command-line mistakes, modes.

Each test fails without its fix: a killed generator used to leave workers holding the folder lock (the
rerun waited forever), segment overwrote one image's masks with another's, garbled caches and
checkpoints were read as data or gave tracebacks, masks came at the model's resolution, and ordinary
mistakes printed tracebacks.
"""
from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
import torch
from PIL import Image

import stego_lite
from stego_lite import features, files, knn
from stego_lite.__main__ import main
from test_knn import Images, PoolBackbone
from test_train import serve_as_synthstuff

ROOT = Path(__file__).resolve().parents[1]


def stego_lite_command(*args: str, cache: Path, **kwargs) -> subprocess.Popen:
    env = {**os.environ, "STEGO_LITE_CACHE": str(cache), "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-m", "stego_lite", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kwargs)


def garble(path: Path, at_fraction: float = 0.7) -> None:
    """Flip bytes in the middle of a file, keeping its size (structure intact, content wrong)."""
    raw = bytearray(path.read_bytes())
    at = int(len(raw) * at_fraction)
    raw[at:at + 16] = bytes(255 - b for b in raw[at:at + 16])
    path.write_bytes(bytes(raw))


# 1. A kill during generation: no orphaned workers, no lock left, no temporary folder left


def test_killed_generation_leaves_no_lock_and_the_rerun_finishes(tmp_path):
    root = tmp_path / "data"
    args = ("synthstuff", "--root", str(root), "--n-train", "600", "--n-val", "4", "--image-size", "64",
            "--workers", "2")
    first = stego_lite_command(*args, cache=tmp_path / "cache")
    deadline = time.time() + 120
    staged = []
    while time.time() < deadline and not any(staged):
        staged = [list(d.rglob("*.png")) for d in root.glob("*/.tmp-train-*")]
        time.sleep(0.1)
    assert any(staged), "the generator was caught while writing images"
    workers = psutil.Process(first.pid).children(recursive=True)
    first.send_signal(signal.SIGKILL)
    first.wait(10)
    gone, alive = psutil.wait_procs(workers, timeout=10)
    assert not alive, f"workers outlived their parent: {alive}"
    start = time.time()
    again = stego_lite_command(*args, cache=tmp_path / "cache")
    out, err = again.communicate(timeout=60)
    assert again.returncode == 0, err
    assert time.time() - start < 60 and "train: 600 images" in out
    assert not list(root.glob("*/.tmp-*")), "the killed run's temporary folder was removed"


def test_a_waiting_process_says_who_holds_the_lock(tmp_path):
    folder = tmp_path / "locked"
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from pathlib import Path; from stego_lite.files import folder_lock\n"
        f"with folder_lock(Path({str(folder)!r})):\n    print('held', flush=True); time.sleep(2)")],
        stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert holder.stdout.readline().strip() == "held"
    waiter = subprocess.run([sys.executable, "-c", (
        "from pathlib import Path; from stego_lite.files import folder_lock\n"
        f"with folder_lock(Path({str(folder)!r})):\n    print('got it')")],
        capture_output=True, text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(ROOT)})
    holder.wait(10)
    assert waiter.stdout.strip() == "got it"
    assert f"pid {holder.pid}" in waiter.stderr and "waiting for" in waiter.stderr


# 2. segment: outputs unique per input, only regular image files


def test_names_that_differ_only_in_the_extension_are_refused(tmp_path, capsys):
    from test_segment_cli import rgb

    images = tmp_path / "images"
    images.mkdir()
    Image.fromarray(rgb(0)).save(images / "photo.png")
    Image.fromarray(rgb(1)).save(images / "photo.jpg")
    (images / "folder.png").mkdir()   # not a regular file: not an image
    assert [p.name for p in stego_lite.inference.list_images(images)] == ["photo.jpg", "photo.png"]
    code = main(["segment", "--checkpoint", "texture_bank-free.pt", "--images", str(images), "--out",
                 str(tmp_path / "out"), "--device", "cpu", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and "photo.jpg and photo.png would write the same output files" in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "out").exists()
    with pytest.raises(ValueError, match="photo.jpg and photo.png"):
        stego_lite.segment([images / "photo.jpg", images / "photo.png"], None)
    result = stego_lite.inference.Segmentation("x", *[np.zeros((2, 2), np.uint8)] * 5)
    with pytest.raises(ValueError, match="overwrite"):
        stego_lite.inference.write_segmentations([result, result], tmp_path / "out2")


# 3. Damaged caches: recomputed, never used


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("STEGO_LITE_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_a_garbled_feature_cache_is_recomputed(cache):
    backbone, ds = PoolBackbone(), Images(n=64)
    want = features.cached_features(backbone, ds).feats.clone()
    path = features.cache_path(features.feature_key(backbone, ds))
    garble(path)
    calls = backbone.calls
    again = features.cached_features(backbone, ds)
    assert backbone.calls > calls, "the garbled file was not used"
    assert torch.equal(again.feats, want)


def test_a_garbled_knn_cache_is_recomputed(cache):
    backbone, ds = PoolBackbone(), Images(n=64)
    want = knn.nearest_neighbors(backbone, ds, k=5).clone()
    path = features.cache_path(features.feature_key(backbone, ds), "knn", "-k5")
    garble(path, 0.8)
    assert torch.equal(knn.nearest_neighbors(backbone, ds, k=5), want)


# 5. A damaged checkpoint: one line naming the file and the fix


def train_args(run_dir: Path, *extra: str) -> list[str]:
    return ["train", "--preset", "synthstuff", "--steps", "2", "--batch-size", "4", "--dim", "3",
            "--device", "cpu", "--no-progress", "--run-dir", str(run_dir), *extra]


@pytest.fixture
def tiny_training(cache, monkeypatch):
    import stego_lite.backbone

    serve_as_synthstuff(monkeypatch, Images(n=40))
    monkeypatch.setattr(stego_lite.backbone, "load_backbone", lambda name, weights: PoolBackbone())


@pytest.mark.parametrize("damage", ["garbled", "truncated"])
def test_a_damaged_checkpoint_names_the_file_and_the_fix(tiny_training, tmp_path, capsys, damage):
    run_dir = tmp_path / "run"
    assert main(train_args(run_dir)) == 0
    checkpoint = run_dir / "checkpoint.pt"
    if damage == "garbled":
        garble(checkpoint, 0.3)
    else:
        checkpoint.write_bytes(checkpoint.read_bytes()[:1000])
    capsys.readouterr()
    assert main(train_args(run_dir, "--steps", "4")) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(checkpoint) in err and "delete it" in err, err
    checkpoint.unlink()
    assert main(train_args(run_dir)) == 0   # the fix it names works


# 4. Masks at the input image's size


def test_masks_come_at_the_input_size(tmp_path, capsys):
    from test_model_file import trained_like

    model = trained_like(stego_lite.backbone.load_backbone("texture_bank"))
    model.res = 96
    images = tmp_path / "images"
    images.mkdir()
    photo = np.random.default_rng(0).integers(0, 256, (120, 150, 3), dtype=np.uint8)
    Image.fromarray(photo).save(images / "photo.png")
    path = stego_lite.evaluate.save_model(model, tmp_path / "model.pt")
    assert main(["segment", "--checkpoint", str(path), "--images", str(images), "--out", str(tmp_path / "out"),
                 "--device", "cpu", "--no-progress"]) == 0
    for kind in ("cluster", "linear"):
        assert np.asarray(Image.open(tmp_path / "out" / f"photo_{kind}.png")).shape == (120, 150)
        assert np.asarray(Image.open(tmp_path / "out" / f"photo_{kind}_overlay.png")).shape == (120, 150, 3)
    small = stego_lite.segment(photo, model, keep_model_res=True)[0]
    assert small.cluster.shape == (96, 120)   # shorter side 96, trimmed to the 8-px grid
    full = stego_lite.segment(photo, model)[0]
    rows = ((np.arange(120) + 0.5) * 96 / 120).astype(int)   # the nearest pixel centre
    cols = ((np.arange(150) + 0.5) * 120 / 150).astype(int)
    assert np.array_equal(full.cluster, small.cluster[rows][:, cols])
    as_tensor = torch.from_numpy(photo).permute(2, 0, 1).float() / 255   # as torchvision's ToTensor
    assert np.array_equal(stego_lite.segment(as_tensor, model)[0].cluster, full.cluster)


# 6. Ordinary command-line mistakes: one line, exit status 2


@pytest.mark.parametrize("args, message", [
    (["--batch-size", "1"], "--batch-size must be at least 2"),
    (["--steps", "0"], "--steps must be at least 1, got 0"),
    (["--steps", "-3"], "--steps must be at least 1, got -3"),
    (["--device", "cuda"], "no CUDA GPU is available"),
    (["--device", "tpu9"], "not a device name"),
])
def test_training_mistakes_are_one_line(tiny_training, tmp_path, capsys, args, message):
    if "cuda" in args and torch.cuda.is_available():
        pytest.skip("a GPU is available here")
    assert main(train_args(tmp_path / "run", *args)) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err
    assert not (tmp_path / "run").exists(), "refused before anything was written"


def test_a_run_dir_of_other_settings_is_one_line(tiny_training, tmp_path, capsys):
    assert main(train_args(tmp_path / "run")) == 0
    capsys.readouterr()
    assert main(train_args(tmp_path / "run", "--dim", "5")) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "holds a run with other settings (dim)" in err, err


@pytest.mark.parametrize("args, message", [
    (["--image-size", "16"], "--image-size must be at least 32, got 16"),
    (["--n-train", "0"], "--n-train must be at least 1, got 0"),
])
def test_synthstuff_mistakes_are_one_line(tmp_path, capsys, args, message):
    assert main(["synthstuff", "--root", str(tmp_path / "data"), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err and not (tmp_path / "data").exists()


def test_an_unwritable_out_folder_is_exit_2(tmp_path, capsys):
    from test_segment_cli import rgb

    images = tmp_path / "images"
    images.mkdir()
    Image.fromarray(rgb(0)).save(images / "a.png")
    (tmp_path / "a_file").write_text("not a folder")
    code = main(["segment", "--checkpoint", "x.pt", "--images", str(images), "--out",
                 str(tmp_path / "a_file" / "masks"), "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "cannot write there" in err, err


def test_debug_shows_the_traceback(tiny_training, tmp_path):
    with pytest.raises(Exception, match="--steps must be at least 1"):
        main(train_args(tmp_path / "run", "--steps", "0", "--debug"))


# 7. Files get the process umask


def test_files_and_folders_follow_the_umask(tmp_path, cache):
    old = os.umask(0o022)
    try:
        files.write_atomic(tmp_path / "x.txt", lambda tmp: tmp.write_text("x"))
        features.cached_features(PoolBackbone(), Images(n=4))
        stego_lite.data.generate_synthstuff(tmp_path / "data", "val", n_images=2, image_size=32)
    finally:
        os.umask(old)
    written = [tmp_path / "x.txt", *cache.rglob("*.pt"), *(tmp_path / "data").rglob("*.png")]
    assert written and all(stat.S_IMODE(p.stat().st_mode) == 0o644 for p in written), \
        {str(p): oct(stat.S_IMODE(p.stat().st_mode)) for p in written}
    folders = [p for p in (tmp_path / "data").rglob("*") if p.is_dir()]
    assert folders and all(stat.S_IMODE(p.stat().st_mode) == 0o755 for p in folders)


def test_a_garbled_model_file_is_refused(tmp_path):
    from test_model_file import trained_like

    path = stego_lite.evaluate.save_model(trained_like(stego_lite.backbone.load_backbone("texture_bank")),
                                          tmp_path / "model.pt")
    stego_lite.evaluate.load_model(path)
    raw = bytearray(path.read_bytes())
    weights = torch.load(path, weights_only=True)["head"]["state"]["linear.weight"]
    needle = weights.flatten()[:4].numpy().tobytes()   # the head's first weights
    at = raw.find(needle)
    assert at > 0
    raw[at:at + 4] = bytes(255 - b for b in raw[at:at + 4])
    path.write_bytes(bytes(raw))
    with pytest.raises(stego_lite.model.ModelFileError, match="damaged"):
        stego_lite.evaluate.load_model(path)
