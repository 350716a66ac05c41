"""The correlation loss against a direct NumPy evaluation of its formula; sampling, partners, presets."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from stego_lite import loss as L


def direct_loss(fa, fb, ua, ub, shift, pointwise, zero_clamp):
    """The formula of reference §3.3 written out in NumPy (float64), one image at a time."""
    def unit(x):  # (C, h, w) -> (h*w, C) rows of unit length
        rows = x.reshape(x.shape[0], -1).T
        return rows / np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-10)

    Fs, Ss = [], []
    for n in range(fa.shape[0]):
        Fs.append(unit(fa[n]) @ unit(fb[n]).T)  # (hw, ij)
        Ss.append(unit(ua[n]) @ unit(ub[n]).T)
    Fm, Sm = np.stack(Fs), np.stack(Ss)  # (B, hw, ij)
    if pointwise:
        centred = Fm - Fm.mean(axis=2, keepdims=True)
        Fm = centred - centred.mean() + Fm.mean()
    low = 0.0 if zero_clamp else -9999.0
    return float(np.mean(-np.maximum(Sm, low) * (Fm - shift))), Sm


def maps(seed, B=2, C=8, D=5, h=4, w=3, I=3, J=4, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(shape, generator=g, dtype=dtype)
                 for shape in [(B, C, h, w), (B, C, I, J), (B, D, h, w), (B, D, I, J)])


@pytest.mark.parametrize("pointwise", [True, False])
@pytest.mark.parametrize("zero_clamp", [True, False])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_correlation_loss_matches_direct_formula(pointwise, zero_clamp, dtype):
    fa, fb, ua, ub = maps(1, dtype=dtype)
    got, S = L.correlation_loss(fa, fb, ua, ub, 0.3, pointwise=pointwise, zero_clamp=zero_clamp)
    want, S_want = direct_loss(*(t.double().numpy() for t in (fa, fb, ua, ub)), 0.3, pointwise, zero_clamp)
    assert got.shape == ()
    assert abs(got.item() - want) <= 1e-6
    B, _, h, w = ua.shape
    assert S.shape == (B, h, w, ub.shape[2], ub.shape[3])
    np.testing.assert_allclose(S.reshape(B, h * w, -1).double().numpy(), S_want, atol=1e-6)


def test_switches_change_the_loss():
    fa, fb, ua, ub = maps(2)
    values = {(p, z): L.correlation_loss(fa, fb, ua, ub, 0.2, pointwise=p, zero_clamp=z)[0].item()
              for p in (True, False) for z in (True, False)}
    assert len({round(v, 12) for v in values.values()}) == 4


def test_gradients_flow_only_through_the_codes():
    fa, fb, ua, ub = maps(3)
    for t in (fa, fb, ua, ub):
        t.requires_grad_(True)
    loss, _ = L.correlation_loss(fa, fb, ua, ub, 0.1, zero_clamp=False)
    loss.backward()
    assert fa.grad is None and fb.grad is None
    assert ua.grad.abs().sum() > 0 and ub.grad.abs().sum() > 0
    # and the code gradient is the true derivative of the formula
    fa, fb = fa.detach(), fb.detach()
    assert torch.autograd.gradcheck(lambda u, v: L.correlation_loss(fa, fb, u, v, 0.1, zero_clamp=False)[0],
                                    (ua.detach().requires_grad_(), ub.detach().requires_grad_()))


def test_zero_clamp_cuts_gradient_where_codes_disagree():
    fa, fb, ua, ub = maps(4, h=1, w=1, I=1, J=1)
    ub = -ua.clone()  # cosine -1 everywhere: clamped to 0, no gradient
    ua.requires_grad_(True)
    L.correlation_loss(fa, fb, ua, ub, 0.0)[0].backward()
    assert torch.count_nonzero(ua.grad) == 0


def test_correlation_is_cosine_and_checks_shapes():
    a, b = torch.randn(2, 6, 3, 3), torch.randn(2, 6, 2, 4)
    corr = L.correlation(a, b)
    want = torch.nn.functional.cosine_similarity(a[1, :, 2, 0], b[1, :, 1, 3], dim=0)
    assert corr.shape == (2, 3, 3, 2, 4)
    assert torch.allclose(corr[1, 2, 0, 1, 3], want, atol=1e-6)
    with pytest.raises(ValueError, match="same B and C"):
        L.correlation(a, torch.randn(2, 5, 2, 2))


def test_sampling_at_integer_grid_coordinates_returns_grid_values():
    t = torch.randn(2, 3, 5, 7)
    h, w = 5, 7
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    coords = torch.stack([2 * xs / (w - 1) - 1, 2 * ys / (h - 1) - 1], dim=-1)  # (h, w, 2), (x, y)
    coords = coords.expand(2, h, w, 2)  # a non-square S x S' set works too
    assert torch.allclose(L.sample_points(t, coords), t, atol=1e-6)
    # a point halfway between two patch centres is their mean (bilinear)
    mid = torch.tensor([[[[2 * 0.5 / (w - 1) - 1, -1.0]]]]).expand(2, 1, 1, 2)
    assert torch.allclose(L.sample_points(t, mid)[:, :, 0, 0], (t[:, :, 0, 0] + t[:, :, 0, 1]) / 2, atol=1e-6)
    # outside points take the border value
    far = torch.full((2, 1, 1, 2), 3.0)
    assert torch.allclose(L.sample_points(t, far)[:, :, 0, 0], t[:, :, -1, -1])


def test_random_coords_are_in_range_and_seeded():
    c1 = L.random_coords(4, 11, generator=torch.Generator().manual_seed(0))
    c2 = L.random_coords(4, 11, generator=torch.Generator().manual_seed(0))
    assert c1.shape == (4, 11, 11, 2) and torch.equal(c1, c2)
    assert c1.min() >= -1 and c1.max() <= 1


def test_partner_indices_never_pair_an_image_with_itself():
    g = torch.Generator().manual_seed(0)
    for B in (2, 3, 8, 32):
        for _ in range(50):
            perm = L.partner_indices(B, generator=g)
            assert perm.shape == (B,) and perm.min() >= 0 and perm.max() < B
            assert not torch.any(perm == torch.arange(B))
    with pytest.raises(ValueError, match="at least 2"):
        L.partner_indices(1)


def test_stego_loss_combines_the_three_terms():
    g = torch.Generator().manual_seed(0)
    feats, feats_knn = torch.randn(4, 6, 5, 5, generator=g), torch.randn(4, 6, 5, 5, generator=g)
    code, code_knn = torch.randn(4, 3, 5, 5, generator=g), torch.randn(4, 3, 5, 5, generator=g)
    cfg = L.LossConfig(self_weight=0.3, knn_weight=0.7, random_weight=0.2, self_shift=0.1, knn_shift=0.2,
                       random_shift=0.4, n_points=4, n_random=3)
    out = L.stego_loss(feats, code, feats_knn, code_knn, cfg, generator=torch.Generator().manual_seed(5))
    assert out.self_corr.shape == out.knn_corr.shape == (4, 4, 4, 4, 4)
    assert out.random_corr.shape == (12, 4, 4, 4, 4) and out.partners.shape == (3, 4)
    # recompute every term from the returned draws
    c1, c2 = out.coords
    s = L.sample_points
    f1, u1 = s(feats, c1), s(code, c1)
    self_loss, _ = L.correlation_loss(f1, f1, u1, u1, 0.1)
    knn_loss, _ = L.correlation_loss(f1, s(feats_knn, c2), u1, s(code_knn, c2), 0.2)
    random_loss = np.mean([L.correlation_loss(f1, s(feats[p], c2), u1, s(code[p], c2), 0.4)[0].item()
                           for p in out.partners])
    assert out.self_loss.item() == pytest.approx(self_loss.item(), abs=1e-7)
    assert out.knn_loss.item() == pytest.approx(knn_loss.item(), abs=1e-7)
    assert out.random_loss.item() == pytest.approx(random_loss, abs=1e-7)
    assert out.total.item() == pytest.approx(0.3 * self_loss.item() + 0.7 * knn_loss.item()
                                             + 0.2 * random_loss, abs=1e-6)
    again = L.stego_loss(feats, code, feats_knn, code_knn, cfg, generator=torch.Generator().manual_seed(5))
    assert again.total.item() == out.total.item()


def test_sample_labels_reads_the_patch_centre():
    label = torch.arange(16 * 24).reshape(1, 16, 24)  # patches of 4 px on a 4 x 6 grid
    coords = torch.tensor([[[[-1.0, -1.0], [1.0, 1.0], [2 * 2 / 5 - 1, 2 * 1 / 3 - 1]]]])  # (1, 1, 3, 2)
    got = L.sample_labels(label, coords, (4, 6))
    # patch (row, col) covers pixels [4 row, 4 row + 4); its centre (4 row + 2, 4 col + 2)
    assert got.tolist() == [[[label[0, 2, 2].item(), label[0, 14, 22].item(), label[0, 6, 10].item()]]]


def test_same_label_marks_unknown_pairs():
    a = torch.tensor([[[0, 1, -1]]])
    b = torch.tensor([[[1, 1, 0]]])
    out = L.same_label(a, b)
    assert out.shape == (1, 1, 3, 1, 3)
    assert out[0, 0, :, 0, :].tolist() == [[0, 0, 1], [1, 1, 0], [-1, -1, -1]]


def test_presets_are_complete_and_errors_name_choices():
    for name, preset in L.PRESETS.items():
        assert preset.dim > 0 and preset.batch_size >= 2 and preset.steps > 0, name
        assert preset.source, f"{name}: say where the numbers come from"
    assert L.get_preset("cityscapes").loss.pointwise is False
    with pytest.raises(ValueError, match="cocostuff27"):
        L.get_preset("coco")


def test_unit_channels_is_normalize_with_finite_gradient_at_zero():
    x = torch.randn(2, 5, 3, 3, dtype=torch.float64)
    x[0, :, 1, 1] = 0.0
    assert torch.allclose(L.unit_channels(x), torch.nn.functional.normalize(x, dim=1, eps=1e-10))
    x.requires_grad_(True)
    L.unit_channels(x).sum().backward()
    assert torch.isfinite(x.grad).all()
