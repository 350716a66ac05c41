"""Tests for stego_lite.pretrain: the EMA update, the centre update, DINO's loss on a toy batch against a hand
computation, the collapse diagnostics on known distributions, the weight-normalised head, multi-crop, one
training step's bookkeeping and the on-disk cache of a run. CPU only, tiny models.
"""
from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch
from torch import nn

from stego_lite import pretrain
from stego_lite.backbone import vit_small
from stego_lite.pretrain import (
    DINO,
    DinoConfig,
    DINOHead,
    collapse_diagnostics,
    dino_history,
    dino_loss,
    ema_update,
    multi_crop,
    train_dino,
    update_center,
)

TINY = DinoConfig(embed_dim=16, depth=1, num_heads=2, hidden_dim=32, bottleneck_dim=8, out_dim=24,
                  n_global=2, global_size=16, n_local=2, local_size=8, batch_size=4)


def test_ema_update_is_m_teacher_plus_one_minus_m_student():
    torch.manual_seed(0)
    student, teacher = nn.Linear(3, 2), nn.Linear(3, 2)
    before = [p.detach().clone() for p in teacher.parameters()]
    ema_update(teacher, student, 0.9)
    for t, t0, s in zip(teacher.parameters(), before, student.parameters()):
        assert torch.allclose(t, 0.9 * t0 + 0.1 * s)
    ema_update(teacher, student, 1.0)  # m = 1: the teacher stays where it is
    for t, t0, s in zip(teacher.parameters(), before, student.parameters()):
        assert torch.allclose(t, 0.9 * t0 + 0.1 * s)


def test_center_update_is_a_running_mean_over_crops_and_images():
    center = torch.tensor([1.0, -1.0, 0.0])
    teacher = torch.tensor([[[0.0, 2.0, 4.0], [2.0, 2.0, 0.0]],
                            [[4.0, 0.0, 2.0], [2.0, 0.0, 2.0]]])           # (G=2, B=2, K=3)
    # the mean over the four rows is (2, 1, 2)
    assert torch.allclose(update_center(center, teacher, 0.9), torch.tensor([0.9 + 0.2, -0.9 + 0.1, 0.2]))


def _softmax(xs: list[float]) -> list[float]:
    exps = [math.exp(x) for x in xs]
    return [e / sum(exps) for e in exps]


def test_dino_loss_matches_a_hand_computation():
    """G = 2 teacher crops, V = 3 student crops (the first two are the same crops), B = 1, K = 2."""
    teacher = torch.tensor([[[0.5, -0.2]], [[0.1, 0.3]]])                   # (2, 1, 2)
    student = torch.tensor([[[0.2, 0.0]], [[-0.4, 0.6]], [[0.9, 0.1]]])     # (3, 1, 2)
    center = torch.tensor([0.1, 0.0])
    t_temp, s_temp = 0.04, 0.1
    total, pairs = 0.0, 0
    for g in range(2):
        p = _softmax([(teacher[g, 0, k].item() - center[k].item()) / t_temp for k in range(2)])
        for v in range(3):
            if v == g:
                continue
            q = _softmax([student[v, 0, k].item() / s_temp for k in range(2)])
            total += -sum(p[k] * math.log(q[k]) for k in range(2))
            pairs += 1
    assert pairs == 4
    expected = total / pairs
    assert dino_loss(student, teacher, center, s_temp, t_temp).item() == pytest.approx(expected, rel=1e-5)


def test_dino_loss_averages_over_images():
    torch.manual_seed(1)
    student, teacher, center = torch.randn(4, 3, 5), torch.randn(2, 3, 5), torch.randn(5)
    per_image = [dino_loss(student[:, b:b + 1], teacher[:, b:b + 1], center, 0.1, 0.04) for b in range(3)]
    assert dino_loss(student, teacher, center, 0.1, 0.04).item() == pytest.approx(
        sum(x.item() for x in per_image) / 3, rel=1e-6)


def test_collapse_diagnostics_on_known_distributions():
    K, N = 8, 4
    uniform = collapse_diagnostics(torch.full((N, K), 1 / K))
    assert uniform["teacher_entropy"] == pytest.approx(math.log(K))
    assert uniform["mean_entropy"] == pytest.approx(math.log(K))
    assert uniform["entropy_gap"] == pytest.approx(0, abs=1e-9)
    same = collapse_diagnostics(torch.eye(K)[[3, 3, 3, 3]])                 # one-hot, one prototype for all
    assert (same["teacher_entropy"], same["mean_entropy"], same["prototypes_used"]) == (0, 0, 1)
    distinct = collapse_diagnostics(torch.eye(K)[[0, 1, 2, 5]])             # confident and diverse
    assert distinct["teacher_entropy"] == pytest.approx(0, abs=1e-9)
    assert distinct["entropy_gap"] == pytest.approx(math.log(N))
    assert distinct["prototypes_used"] == 4


def test_head_last_layer_is_weight_normalised():
    torch.manual_seed(0)
    head = DINOHead(16, 10, 32, 8)
    x = torch.randn(5, 16)
    out = head(x)
    assert out.shape == (5, 10) and out.abs().max() <= 1 + 1e-6             # cosines
    with torch.no_grad():
        head.prototypes.mul_(torch.linspace(0.1, 10, 10)[:, None])          # rescale every prototype
    assert torch.allclose(head(x), out, atol=1e-6)                          # g = 1: the norm drops out


def test_multi_crop_shapes_and_reproducibility():
    img = torch.randn(3, 3, 32, 32)
    crops = multi_crop(img, TINY, torch.Generator().manual_seed(0))
    assert [tuple(c.shape) for c in crops] == [(3, 3, 16, 16)] * 2 + [(3, 3, 8, 8)] * 2
    again = multi_crop(img, TINY, torch.Generator().manual_seed(0))
    assert all(torch.equal(a, b) for a, b in zip(crops, again))
    assert not torch.equal(crops[0], crops[1])                              # two different views


@pytest.mark.parametrize("centering", [True, False])
def test_one_step_grads_only_the_student_and_updates_the_centre(centering):
    torch.manual_seed(0)
    model = DINO(replace(TINY, centering=centering))
    crops = multi_crop(torch.randn(4, 3, 32, 32), model.config, torch.Generator().manual_seed(0))
    with torch.no_grad():
        teacher_scores = model.scores(model.teacher, crops[:2])             # (G, B, K)
    loss, targets = model(crops)
    loss.backward()
    assert targets.shape == (2 * 4, TINY.out_dim)
    assert torch.allclose(targets.sum(-1), torch.ones(8))
    assert all(p.grad is None for p in model.teacher.parameters())
    assert all(p.grad is not None for p in model.student.parameters())
    expected = update_center(torch.zeros(TINY.out_dim), teacher_scores, 0.9) if centering else torch.zeros(24)
    assert torch.allclose(model.center, expected, atol=1e-6)


def test_train_dino_logs_every_step_and_moves_the_teacher():
    images = torch.randn(8, 3, 32, 32)
    threads = torch.get_num_threads()
    model, history = train_dino(images, TINY, steps=3, seed=0, threads=1)
    assert torch.get_num_threads() == threads                               # restored afterwards
    assert [h["step"] for h in history] == [0, 1, 2]
    assert set(history[0]) >= {"loss", "teacher_entropy", "mean_entropy", "entropy_gap", "prototypes_used",
                               "log_k"}
    assert history[0]["log_k"] == pytest.approx(math.log(24))
    assert all(0 < h["loss"] < 2 * math.log(24) for h in history)
    torch.manual_seed(0)
    fresh = DINO(TINY)                                                       # the initial weights of the run
    moved = [not torch.equal(a, b) for a, b in zip(model.teacher.parameters(), fresh.teacher.parameters())]
    assert any(moved)
    _, again = train_dino(images, TINY, steps=3, seed=0, threads=1)
    without_time = [[{k: v for k, v in h.items() if k != "seconds"} for h in run] for run in (history, again)]
    assert without_time[0] == without_time[1]                               # a seeded run repeats exactly


def test_train_dino_rejects_bad_images():
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        train_dino(torch.randn(3, 32, 32), TINY, steps=1)


def test_dino_history_is_computed_once_then_read_from_the_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("STEGO_LITE_CACHE", str(tmp_path))
    images = torch.randn(6, 3, 32, 32)
    first = dino_history(images, TINY, steps=2, seed=0)
    files = list((tmp_path / "dino_runs").glob("history-*.pt"))
    assert len(files) == 1 and torch.load(files[0], weights_only=True)["value"] == first

    def no_training(*args, **kwargs):
        raise AssertionError("the cached run should have been read, not recomputed")

    monkeypatch.setattr(pretrain, "train_dino", no_training)
    assert dino_history(images, TINY, steps=2, seed=0) == first
    with pytest.raises(AssertionError, match="recomputed"):                 # another config: another key
        dino_history(images, replace(TINY, teacher_temp=0.1), steps=2, seed=0)


def test_train_dino_reads_a_dataset_of_dicts():
    items = [{"image": torch.randn(3, 32, 32), "index": i} for i in range(6)]
    _, history = train_dino(items, TINY, steps=2, seed=0, threads=1)
    assert len(history) == 2 and math.isfinite(history[-1]["loss"])


def test_a_vits8_sized_teacher_has_dino_vits8s_layout():
    """The documented route from pretraining to STEGO: the teacher's backbone state dict has exactly the
    keys and shapes of dino_vits8, which load_backbone(..., weights=file) loads strictly."""
    config = replace(DinoConfig(), embed_dim=384, depth=12, num_heads=6, global_size=224, out_dim=16)
    with torch.device("meta"):  # shapes only, no memory
        teacher = DINO(config).teacher["backbone"]
        reference = vit_small("dino_vits8", patch_size=8)
    layout = {k: tuple(v.shape) for k, v in teacher.state_dict().items()}
    assert layout == {k: tuple(v.shape) for k, v in reference.state_dict().items()}
