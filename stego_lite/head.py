"""STEGO's segmentation head: frozen features (B, C, h, w) -> code (B, D, h, w), per patch (reference §2).

    code = Conv1x1_{C->D}(drop(f)) + Conv1x1_{C->D}(ReLU(Conv1x1_{C->C}(drop(f))))     kind="nonlinear"
    code = Conv1x1_{C->D}(drop(f))                                                     kind="linear"

`drop` is channel dropout (`nn.Dropout2d`, p = 0.1): whole feature channels are zeroed and the rest scaled
by 1 / (1 - p), independently for each branch, and only in train mode. STEGO also drops channels of the
features that the loss correlates (its correlation target), with a third independent draw:
`head.loss_features(feats)` is that draw.
"""
from __future__ import annotations

from torch import Tensor, nn

HEAD_KINDS = ("linear", "nonlinear")


class SegmentationHead(nn.Module):
    """Linear + (1x1 conv - ReLU - 1x1 conv) head: (B, C, h, w) -> (B, D, h, w); no norm, no final activation.

    All convolutions have biases and PyTorch's default initialisation, as in STEGO.
    """

    def __init__(self, in_dim: int, code_dim: int, *, kind: str = "nonlinear", dropout: float = 0.1) -> None:
        super().__init__()
        if kind not in HEAD_KINDS:
            raise ValueError(f"unknown head kind {kind!r}; choose one of {HEAD_KINDS}")
        if in_dim < 1 or code_dim < 1:
            raise ValueError(f"in_dim and code_dim must be positive, got {in_dim} and {code_dim}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout is a probability in [0, 1), got {dropout}")
        self.in_dim, self.code_dim, self.kind = in_dim, code_dim, kind
        self.dropout = nn.Dropout2d(dropout)
        self.linear = nn.Conv2d(in_dim, code_dim, kernel_size=1)
        self.nonlinear = nn.Sequential(
            nn.Conv2d(in_dim, in_dim, kernel_size=1),
            nn.ReLU(),
            nn.Conv2d(in_dim, code_dim, kernel_size=1),
        ) if kind == "nonlinear" else None

    def forward(self, feats: Tensor) -> Tensor:
        """Code of every patch: (B, C, h, w) -> (B, D, h, w)."""
        if feats.ndim != 4 or feats.shape[1] != self.in_dim:
            raise ValueError(f"expected features of shape (B, {self.in_dim}, h, w), got {tuple(feats.shape)}")
        code = self.linear(self.dropout(feats))
        if self.nonlinear is not None:
            code = code + self.nonlinear(self.dropout(feats))
        return code

    def loss_features(self, feats: Tensor) -> Tensor:
        """The features the loss correlates: channel-dropped in train mode, as they are in eval mode."""
        return self.dropout(feats)

    def extra_repr(self) -> str:
        return f"kind={self.kind!r}, in_dim={self.in_dim}, code_dim={self.code_dim}"
