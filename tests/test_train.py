"""The training loop: exact resume across processes, NaN guard, history, checkpoints, the offline run."""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from stego_lite import train as T
from stego_lite.loss import LossConfig

# Shared by this process and the fresh process of the resume test: a tiny labelled feature set and a probe.
SETUP = """
import torch
import torch.nn.functional as F
from torch import nn
from stego_lite import train as T

class TinyProbe(nn.Module):
    def __init__(self, dim, n_classes):
        super().__init__()
        self.conv = nn.Conv2d(dim, n_classes, 1)

    def loss(self, code, label):
        logits = F.interpolate(self.conv(code), size=label.shape[-2:], mode="nearest")
        return F.cross_entropy(logits, label, ignore_index=-1)

def make_source():
    g = torch.Generator().manual_seed(0)
    feats = torch.randn(12, 6, 4, 4, generator=g)
    labels = torch.randint(-1, 3, (12, 8, 8), generator=g)
    nns = torch.stack([torch.roll(torch.arange(12), -i) for i in range(12)])  # image i, then i+1, i+2, ...
    return T.FeatureSource(feats, nns, labels, key="tiny")

CONFIG = T.TrainConfig(dim=3, batch_size=4, steps=8, num_neighbors=3,
                       loss=T.LossConfig(n_points=3, n_random=2))
"""
namespace: dict = {}
exec(SETUP, namespace)
make_source, TinyProbe, CONFIG = namespace["make_source"], namespace["TinyProbe"], namespace["CONFIG"]


def probes():
    torch.manual_seed(1)
    return {"tiny": TinyProbe(3, 3)}


def state(run_dir: Path) -> dict:
    return torch.load(run_dir / T.CHECKPOINT, weights_only=True)


def test_resume_in_a_fresh_process_is_exact(tmp_path):
    straight = T.train(CONFIG, make_source(), probes=probes(), run_dir=tmp_path / "straight", progress=False)
    half = T.train(CONFIG, make_source(), probes=probes(), run_dir=tmp_path / "split", stop_at=4,
                   progress=False)
    assert len(half.history) == 4 and state(tmp_path / "split")["step"] == 4
    script = SETUP + textwrap.dedent(f"""
        torch.set_num_threads({torch.get_num_threads()})
        torch.manual_seed(12345)  # the global RNG state of the new process must not matter
        torch.manual_seed(1)
        T.train(CONFIG, make_source(), probes={{"tiny": TinyProbe(3, 3)}},
                run_dir={str(tmp_path / "split")!r}, progress=False)
    """)
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    resumed = state(tmp_path / "split")
    assert resumed["step"] == 8
    for name, value in straight.head.state_dict().items():
        assert torch.equal(resumed["head"][name], value), name
    for name, value in straight.probes["tiny"].state_dict().items():
        assert torch.equal(resumed["probes"]["tiny"][name], value), name
    losses = [(h["loss"], h["probe/tiny"]) for h in resumed["history"]]
    assert losses == [(h["loss"], h["probe/tiny"]) for h in straight.history]


def test_same_seed_same_run_and_caller_rng_untouched():
    torch.manual_seed(7)
    before = torch.rand(3)
    torch.manual_seed(7)
    a = T.train(CONFIG, make_source(), progress=False)
    after = torch.rand(3)
    assert torch.equal(before, after), "training leaves the caller's global RNG as it was"
    b = T.train(CONFIG, make_source(), progress=False)
    assert all(torch.equal(a.head.state_dict()[k], v) for k, v in b.head.state_dict().items())
    c = T.train(dataclasses.replace(CONFIG, seed=1), make_source(), progress=False)
    assert not torch.equal(a.head.linear.weight, c.head.linear.weight)


def test_history_checkpoints_and_finished_run(tmp_path):
    seen = []

    def val_fn(head, probes, step):
        seen.append((step, head.training))
        return {"answer": 42.0}

    result = T.train(CONFIG, make_source(), run_dir=tmp_path, checkpoint_every=3, val_fn=val_fn, val_every=4,
                     progress=False)
    assert [h["step"] for h in result.history] == list(range(1, 9))
    assert seen == [(4, False), (8, False)]
    assert result.history[3]["val/answer"] == 42.0 and "val/answer" not in result.history[2]
    expected = {"loss", "self", "knn", "random", "S_self", "S_knn", "S_random", "seconds"}
    assert expected <= set(result.history[0])
    assert json.loads((tmp_path / "history.json").read_text()) == result.history
    rows = (tmp_path / "history.csv").read_text().splitlines()
    assert len(rows) == 9 and rows[0].startswith("step,loss,")
    assert not list(tmp_path.glob("*.tmp"))

    class NoBatches(T.FeatureSource):
        def batch(self, *args):
            raise AssertionError("a finished run must not train again")

    src = make_source()
    again = T.train(CONFIG, NoBatches(src.feats, src.nns, src.labels, key=src.key), run_dir=tmp_path,
                    progress=False)
    assert again.history == result.history
    assert torch.equal(again.head.linear.weight, result.head.linear.weight)
    with pytest.raises(ValueError, match="another run"):
        T.train(dataclasses.replace(CONFIG, dim=4), make_source(), run_dir=tmp_path, progress=False)


def test_run_dir_for_depends_on_config_and_data():
    src = make_source()
    base = T.run_dir_for(CONFIG, src)
    assert T.run_dir_for(CONFIG, src) == base
    assert T.run_dir_for(dataclasses.replace(CONFIG, lr=1e-3), src) != base
    other = make_source()
    other.key = "other"
    assert T.run_dir_for(CONFIG, other) != base
    assert T.run_dir_for(CONFIG, src, probes()) != base


def test_nan_guard_names_the_step():
    src = make_source()
    src.feats[5, 0, 0, 0] = float("nan")
    with pytest.raises(FloatingPointError, match=r"non-finite loss at step \d+"):
        T.train(CONFIG, src, progress=False)


def test_config_from_preset_and_dict():
    config = T.TrainConfig.from_preset("cocostuff27", steps=10)
    assert (config.dim, config.batch_size, config.steps) == (90, 32, 10)
    assert config.loss.random_shift == 1.0
    assert T.TrainConfig.from_dict(dataclasses.asdict(config)) == config
    with pytest.raises(ValueError, match="batch_size"):
        T.train(T.TrainConfig(batch_size=13), make_source(), progress=False)


def test_training_lowers_the_loss_on_structured_features():
    # four kinds of images whose features point in four directions; neighbours are images of the same kind
    g = torch.Generator().manual_seed(0)
    kind = torch.arange(40) % 4
    direction = torch.randn(4, 16, generator=g)
    feats = direction[kind][:, :, None, None] + 0.5 * torch.randn(40, 16, 4, 4, generator=g)
    nns = torch.stack([torch.cat([torch.tensor([i]), torch.arange(10) * 4 + i % 4]) for i in range(40)])
    src = T.FeatureSource(feats, nns, torch.zeros(40, 8, 8, dtype=torch.long), key="four kinds")
    config = T.TrainConfig(dim=4, batch_size=8, steps=60, loss=LossConfig(n_points=5, n_random=2))
    before = T.initial_head(config, src.in_dim)
    untrained = T.train(dataclasses.replace(config, steps=0), src, progress=False).head
    assert all(torch.equal(v, untrained.state_dict()[k]) for k, v in before.state_dict().items())
    after = T.train(config, src, progress=False).head
    start, end = (T.diagnose(head, src, config, torch.arange(16)).terms for head in (before, after))
    assert end.total < start.total - 0.02, (start.total, end.total)
    assert end.random_corr.mean() < start.random_corr.mean() / 2, "codes of random pairs are pushed apart"


def test_image_source_matches_feature_source(tmp_path, monkeypatch):
    monkeypatch.setenv("STEGO_LITE_CACHE", str(tmp_path))
    from test_knn import Images, PoolBackbone

    backbone, ds = PoolBackbone(), Images(n=16)
    cached = T.FeatureSource.from_cache(backbone, ds, k=8)
    images = T.ImageSource(backbone, ds, cached.nns)
    config = T.TrainConfig(dim=3, batch_size=4, steps=3, loss=LossConfig(n_points=3, n_random=1))
    a = T.train(config, cached, progress=False).head
    b = T.train(config, images, progress=False).head
    assert torch.allclose(a.linear.weight, b.linear.weight, atol=1e-6)


@dataclasses.dataclass(frozen=True)
class FixedData:
    """A DataSpec that serves one given dataset for every split (for the command line's presets)."""

    served: object
    name: str = "fixed"
    train_res: int = 96
    eval_res: int = 96
    five_crop: bool = False
    root: str | None = None

    def split(self, split: str):
        return self.served


def serve_as_synthstuff(monkeypatch, dataset) -> None:
    """Make the `synthstuff` preset train on `dataset` (its backbone, loss and sizes stay)."""
    from stego_lite import profiles

    preset = dataclasses.replace(profiles.PRESETS["synthstuff"], data=FixedData(dataset))
    monkeypatch.setitem(profiles.PRESETS, "synthstuff", preset)


def test_command_line_trains_and_resumes(tmp_path, monkeypatch, capsys):
    from test_knn import Images, PoolBackbone

    import stego_lite.backbone
    from stego_lite.__main__ import main

    monkeypatch.setenv("STEGO_LITE_CACHE", str(tmp_path))
    serve_as_synthstuff(monkeypatch, Images(n=40))
    monkeypatch.setattr(stego_lite.backbone, "load_backbone", lambda name, weights: PoolBackbone())
    args = ["train", "--preset", "synthstuff", "--steps", "3", "--batch-size", "4", "--dim", "3",
            "--device", "cpu", "--no-progress", "--run-dir", str(tmp_path / "run")]
    assert main(args) == 0
    assert "synthstuff: 3 iterations" in capsys.readouterr().out
    saved = state(tmp_path / "run")
    assert saved["step"] == 3 and saved["config"]["dim"] == 3 and saved["config"]["batch_size"] == 4
    assert main([*args[:4], "5", *args[5:]]) == 0  # the same run, extended to 5 iterations
    assert state(tmp_path / "run")["step"] == 5 and len(state(tmp_path / "run")["history"]) == 5
    capsys.readouterr()
    assert main([*args, "--seed", "1"]) == 2
    assert "holds a run with other settings (seed)" in capsys.readouterr().err
    assert main(["train", "--preset", "coco"]) == 2
    assert "unknown preset 'coco'" in capsys.readouterr().err
    for command in ("extract", "evaluate"):   # the same one-line error and exit status for every command
        extra = ["--model", "unused.pt"] if command == "evaluate" else []
        assert main([command, "--preset", "coco", *extra]) == 2
        err = capsys.readouterr().err
        assert f"python -m stego_lite {command}: error: unknown preset 'coco'" in err, err


def test_offline_profile_head_lowers_the_loss(tmp_path, monkeypatch):
    """The offline profile end to end on 64 validation images: texture_bank features, KNN, the preset."""
    import stego_lite as sl
    from stego_lite import data

    monkeypatch.setenv("STEGO_LITE_CACHE", str(tmp_path))
    monkeypatch.setattr(data, "SYNTHSTUFF_OFFLINE", dataclasses.replace(data.SYNTHSTUFF_OFFLINE, n_val=64))
    p = sl.profiles.get_profile("offline")
    backbone = sl.backbone.load_backbone(p.backbone)
    source = T.FeatureSource.from_cache(backbone, p.val_set())
    config = T.TrainConfig.from_preset(p.loss_preset, steps=30, batch_size=8)
    result = T.train(config, source, progress=False)
    assert len(result.history) == 30
    batch = torch.arange(32)
    start = T.diagnose(T.initial_head(config, source.in_dim), source, config, batch).terms
    end = T.diagnose(result.head, source, config, batch).terms
    assert end.total < start.total - 0.05, (start.total, end.total)
    assert end.random_corr.mean() < start.random_corr.mean() - 0.2, "random pairs are pushed apart"
