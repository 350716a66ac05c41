"""The segmentation head: shapes, the two branches computed by hand, channel dropout, errors."""
from __future__ import annotations

import pytest
import torch

from stego_lite.head import SegmentationHead


def conv1x1(x, conv):
    """A 1x1 convolution written as a matrix product over channels: (B, C, h, w) -> (B, D, h, w)."""
    W = conv.weight[:, :, 0, 0]  # (D, C)
    return torch.einsum("dc,bchw->bdhw", W, x) + conv.bias[None, :, None, None]


@pytest.mark.parametrize("kind", ["linear", "nonlinear"])
def test_head_shape_and_formula(kind):
    torch.manual_seed(0)
    head = SegmentationHead(8, 5, kind=kind).eval()  # eval: no dropout
    f = torch.randn(2, 8, 4, 3)
    code = head(f)
    assert code.shape == (2, 5, 4, 3)
    want = conv1x1(f, head.linear)
    if kind == "nonlinear":
        first, _, second = head.nonlinear
        want = want + conv1x1(torch.relu(conv1x1(f, first)), second)
    else:
        assert head.nonlinear is None
    assert torch.allclose(code, want, atol=1e-5)


def test_parameter_counts():
    C, D = 8, 5
    linear = sum(p.numel() for p in SegmentationHead(C, D, kind="linear").parameters())
    nonlinear = sum(p.numel() for p in SegmentationHead(C, D).parameters())
    assert linear == C * D + D
    assert nonlinear == linear + (C * C + C) + (C * D + D)


def test_channel_dropout_in_train_mode_only():
    torch.manual_seed(0)
    head = SegmentationHead(64, 4)
    f = torch.rand(3, 64, 5, 5) + 0.5  # strictly positive: a dropped channel is exactly zero
    dropped = head.train().loss_features(f)
    zero = (dropped == 0).all(dim=(2, 3))           # (B, C): whole channels dropped
    kept = torch.isclose(dropped, f / 0.9).all(dim=(2, 3))
    assert torch.all(zero ^ kept), "every channel is either dropped or scaled by 1 / (1 - p)"
    assert 0 < zero.sum() < zero.numel()
    assert torch.equal(head.eval().loss_features(f), f)
    # the train-mode code differs between two calls (independent draws), the eval-mode code does not
    head.train()
    assert not torch.equal(head(f), head(f))
    head.eval()
    assert torch.equal(head(f), head(f))


def test_errors_name_the_bad_value():
    with pytest.raises(ValueError, match="'conv'"):
        SegmentationHead(8, 4, kind="conv")
    with pytest.raises(ValueError, match="dropout"):
        SegmentationHead(8, 4, dropout=1.0)
    with pytest.raises(ValueError, match=r"\(B, 8, h, w\).*\(2, 7, 4, 4\)"):
        SegmentationHead(8, 4)(torch.randn(2, 7, 4, 4))
