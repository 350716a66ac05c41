"""DINO's self-distillation objective, compact: a student, an EMA teacher, multi-crop, a projection head
with a weight-normalised last layer, centring and sharpening, and the diagnostics that show whether it
collapses.

    config = DinoConfig()                                  # a tiny ViT; DINO's own values in the comments
    model, history = train_dino(images, config, steps=150) # images (N, 3, H, W), ImageNet-normalised
    history[-1]   # {'step', 'loss', 'teacher_entropy', 'mean_entropy', 'entropy_gap', 'prototypes_used', ...}

The objective (Caron et al., ICCV 2021): both networks map a crop to K scores; the teacher's, centred and
sharpened, become a target distribution p_t = softmax((t - c) / tau_t) that the student, seeing *other*
crops of the same image, must predict: loss = mean over pairs of -sum_k p_t log softmax(s / tau_s). The
teacher is not trained; it follows the student as an exponential moving average. Two trivial solutions
are open, and two opposing forces keep it from them: centring (subtract c, a running mean of the teacher's
scores) stops one prototype from winning every image but pushes towards the uniform distribution;
sharpening (tau_t < tau_s) pushes away from uniform towards one-hot. The diagnostics watch the balance:
the entropy of p_t per image (low = confident) and of its batch mean (high = many prototypes in use). Their
gap is large when the teacher is confident *and* diverse; it goes to 0 in both collapses (uniform: both
entropies reach log K; one-hot: both reach 0).

Runs on any device (`device` argument); on a CPU it is only useful to watch the mechanics and the collapse.
On a GPU, train on your own data (a Dataset of {"image": ...} items works too) with a ViT-S/8-sized config,
`DinoConfig(embed_dim=384, depth=12, num_heads=6, global_size=224, local_size=96, ...)`: its teacher's
backbone then has exactly `dino_vits8`'s layout, so

    torch.save(model.teacher["backbone"].state_dict(), "teacher.pth")
    backbone = load_backbone("dino_vits8", weights="teacher.pth")   # STEGO's chapters run on it
"""
from __future__ import annotations

import copy
import math
import time
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import Dataset

from stego_lite.backbone import VisionTransformer
from stego_lite.env import cache_dir


@dataclass(frozen=True)
class DinoConfig:
    """A tiny DINO that runs on a CPU (0.2-0.3 s a step on one core); DINO's settings (main_dino.py defaults)
    in the comments. Its README trains ViT-S/16 for 100 ImageNet epochs on 8 GPUs in 1.75 days."""

    # student/teacher backbone: a ViT with random initialisation
    embed_dim: int = 96             # ViT-S: 384
    depth: int = 4                  # ViT-S: 12
    num_heads: int = 3              # ViT-S: 6
    patch_size: int = 8             # DINO: 16 or 8
    # projection head: MLP -> L2-normalised bottleneck -> K prototypes (the weight-normalised last layer)
    hidden_dim: int = 512           # DINO: 2048
    bottleneck_dim: int = 64        # DINO: 256
    out_dim: int = 1024             # K, DINO: 65536
    # multi-crop: the teacher sees the global crops, the student all of them
    n_global: int = 2               # DINO: 2
    global_size: int = 48           # px; DINO: 224
    global_scale: tuple[float, float] = (0.4, 1.0)   # crop area / image area; DINO: (0.4, 1)
    n_local: int = 4                # DINO: 8
    local_size: int = 24            # px; DINO: 96
    local_scale: tuple[float, float] = (0.05, 0.4)   # DINO: (0.05, 0.4)
    # the objective
    student_temp: float = 0.1       # DINO: 0.1
    teacher_temp: float = 0.04      # DINO: 0.04 (up to 0.07); = student_temp switches sharpening off
    centering: bool = True          # False: the centre stays 0 (the "no centring" ablation)
    center_momentum: float = 0.9    # DINO: 0.9
    teacher_momentum: float = 0.996  # EMA; DINO: 0.996, raised to 1 on a cosine schedule
    # optimisation
    batch_size: int = 16            # DINO: 1024 (64 per GPU on 16 GPUs)
    lr: float = 5e-4                # DINO: 5e-4 * batch / 256 after 10 warm-up epochs
    weight_decay: float = 0.04      # DINO: 0.04 -> 0.4, cosine
    clip_grad: float = 3.0          # DINO: 3.0


class DINOHead(nn.Module):
    """Projection head: (N, C) -> (N, K) cosine scores between an L2-normalised code and K unit prototypes.

    The prototypes are the rows of the last layer's weight, each divided by its norm: DINO's
    `weight_norm(Linear(bottleneck, K))` with its gain frozen at 1, written out.
    """

    def __init__(self, in_dim: int, out_dim: int, hidden_dim: int, bottleneck_dim: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.GELU(), nn.Linear(hidden_dim, hidden_dim),
                                 nn.GELU(), nn.Linear(hidden_dim, bottleneck_dim))
        self.prototypes = nn.Parameter(torch.empty(out_dim, bottleneck_dim))
        for layer in self.mlp:
            if isinstance(layer, nn.Linear):
                nn.init.trunc_normal_(layer.weight, std=0.02)
                nn.init.zeros_(layer.bias)
        nn.init.trunc_normal_(self.prototypes, std=0.02)

    def forward(self, x: Tensor) -> Tensor:
        code = F.normalize(self.mlp(x), dim=-1)                       # (N, bottleneck), unit norm
        return code @ F.normalize(self.prototypes, dim=-1).T          # (N, K), in [-1, 1]


def cls_embedding(vit: VisionTransformer, img: Tensor) -> Tensor:
    """The CLS token after the final norm, the image's global embedding: (B, 3, H, W) -> (B, C)."""
    x = vit.tokens(img)
    for block in vit.blocks:
        x = block(x)
    return vit.norm(x)[:, 0]


def dino_loss(student: Tensor, teacher: Tensor, center: Tensor, student_temp: float,
              teacher_temp: float) -> Tensor:
    """Cross-entropy of the centred, sharpened teacher and the student over all pairs of different crops.

    student (V, B, K) scores of V crops, the first G of them the teacher's global crops; teacher (G, B, K);
    center (K,). Pairs (teacher crop g, student crop v) with v != g; the mean over pairs and images.
    """
    targets = F.softmax((teacher - center) / teacher_temp, dim=-1)   # (G, B, K), no gradient flows here
    log_probs = F.log_softmax(student / student_temp, dim=-1)        # (V, B, K)
    cross = -torch.einsum("gbk,vbk->gvb", targets, log_probs)       # (G, V, B)
    G, V = cross.shape[:2]
    other = ~torch.eye(G, V, dtype=torch.bool, device=cross.device)  # a crop never predicts itself
    return cross[other].mean()


def update_center(center: Tensor, teacher: Tensor, momentum: float) -> Tensor:
    """Running mean of the teacher's scores, c <- m c + (1 - m) mean over crops and images:
    (K,), (G, B, K) -> (K,)."""
    return momentum * center + (1 - momentum) * teacher.mean(dim=(0, 1))


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, momentum: float) -> None:
    """Teacher <- m teacher + (1 - m) student, parameter by parameter (in place)."""
    for t, s in zip(teacher.parameters(), student.parameters(), strict=True):
        t.mul_(momentum).add_(s.detach(), alpha=1 - momentum)


def collapse_diagnostics(targets: Tensor) -> dict[str, float]:
    """How the teacher's target distributions look: (N, K) rows summing to 1 -> named numbers (nats).

    teacher_entropy: mean entropy of one target (0 = one-hot, log K = uniform);
    mean_entropy: entropy of the batch-mean target (log K = every prototype used equally, 0 = one for all);
    entropy_gap: their difference, the mutual information between image and prototype: 0 in both collapses;
    prototypes_used: how many prototypes are the argmax of at least one target.
    """
    p = targets.double()
    teacher_entropy = -(p * p.clamp_min(1e-30).log()).sum(-1).mean()
    mean = p.mean(0)
    mean_entropy = -(mean * mean.clamp_min(1e-30).log()).sum()
    return {"teacher_entropy": teacher_entropy.item(), "mean_entropy": mean_entropy.item(),
            "entropy_gap": (mean_entropy - teacher_entropy).item(),
            "prototypes_used": int(p.argmax(-1).unique().numel())}


def multi_crop(img: Tensor, config: DinoConfig, generator: torch.Generator) -> list[Tensor]:
    """Random resized crops, flips and colour changes: (B, 3, H, W) -> n_global (B, 3, g, g) crops, then
    n_local (B, 3, l, l) crops. Colour: a random gain and shift per image and channel (SynthStuff's classes
    do not depend on colour, so the student must not either)."""
    crops = []
    for n, size, scale in ((config.n_global, config.global_size, config.global_scale),
                           (config.n_local, config.local_size, config.local_scale)):
        for _ in range(n):
            crops.append(_random_resized_crop(img, size, scale, generator))
    return crops


def _random_resized_crop(img: Tensor, size: int, scale: tuple[float, float],
                         generator: torch.Generator) -> Tensor:
    """One crop per image, area fraction in `scale`, aspect ratio in [3/4, 4/3], resized bilinearly."""
    B = img.shape[0]
    rand = torch.rand(B, 5, generator=generator).to(img.device)
    area = scale[0] + (scale[1] - scale[0]) * rand[:, 0]
    aspect = torch.exp(math.log(3 / 4) + math.log(16 / 9) * rand[:, 1])
    half_w = (area * aspect).sqrt().clamp(max=1)                         # in units of the image half-width
    half_h = (area / aspect).sqrt().clamp(max=1)
    cx = (1 - half_w) * (2 * rand[:, 2] - 1)                             # crop centre in [-1, 1]
    cy = (1 - half_h) * (2 * rand[:, 3] - 1)
    flip = torch.where(rand[:, 4] < 0.5, -1.0, 1.0).to(img.device)
    theta = torch.zeros(B, 2, 3, device=img.device)
    theta[:, 0, 0], theta[:, 0, 2] = half_w * flip, cx
    theta[:, 1, 1], theta[:, 1, 2] = half_h, cy
    grid = F.affine_grid(theta, [B, 3, size, size], align_corners=False)
    crop = F.grid_sample(img, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    gain = 0.6 + 0.8 * torch.rand(B, 3, 1, 1, generator=generator).to(img.device)
    shift = 0.5 * torch.randn(B, 3, 1, 1, generator=generator).to(img.device)
    return crop * gain + shift


class DINO(nn.Module):
    """Student and EMA teacher (ViT + head each) and the centre: crops -> (loss, teacher targets)."""

    def __init__(self, config: DinoConfig) -> None:
        super().__init__()
        self.config = config
        vit = VisionTransformer("dino_student", patch_size=config.patch_size, embed_dim=config.embed_dim,
                                depth=config.depth, num_heads=config.num_heads,
                                img_size=config.global_size)
        head = DINOHead(config.embed_dim, config.out_dim, config.hidden_dim, config.bottleneck_dim)
        self.student = nn.ModuleDict({"backbone": vit, "head": head})
        self.teacher = copy.deepcopy(self.student).requires_grad_(False)  # starts as the student's copy
        self.register_buffer("center", torch.zeros(config.out_dim))

    def scores(self, net: nn.ModuleDict, crops: list[Tensor]) -> Tensor:
        """(V crops of (B, 3, S_v, S_v)) -> (V, B, K); crops of the same size share one forward pass."""
        out, start = [], 0
        while start < len(crops):
            stop = start
            while stop < len(crops) and crops[stop].shape == crops[start].shape:
                stop += 1
            batch = torch.cat(crops[start:stop])                        # (n * B, 3, S, S)
            out.append(net["head"](cls_embedding(net["backbone"], batch)))
            start = stop
        return torch.cat(out).view(len(crops), crops[0].shape[0], -1)

    def forward(self, crops: list[Tensor]) -> tuple[Tensor, Tensor]:
        cfg = self.config
        with torch.no_grad():
            teacher = self.scores(self.teacher, crops[:cfg.n_global])    # (G, B, K)
        student = self.scores(self.student, crops)                        # (V, B, K)
        loss = dino_loss(student, teacher, self.center, cfg.student_temp, cfg.teacher_temp)
        targets = F.softmax((teacher - self.center) / cfg.teacher_temp, dim=-1)
        if cfg.centering:
            self.center.copy_(update_center(self.center, teacher, cfg.center_momentum))
        return loss, targets.flatten(0, 1)


def train_dino(images: Tensor | Dataset, config: DinoConfig, *, steps: int, seed: int = 0,
               device: str | torch.device = "cpu", threads: int | None = None,
               ) -> tuple[DINO, list[dict[str, float]]]:
    """Self-distil a ViT on `images` for `steps` steps; -> the model and one dict of diagnostics per step
    (see `collapse_diagnostics`; also loss, log_k and seconds). `images`: a (N, 3, H, W) tensor, or a
    Dataset whose items are such images or dicts holding one under "image" (all of one size).

    threads: CPU threads while it runs (None keeps torch's setting; restored afterwards). A tiny ViT gains
    little from several, and on a CPU shared with other jobs they wait for each other: 1 is the safe choice.
    """
    if isinstance(images, Tensor) and (images.ndim != 4 or images.shape[1] != 3):
        raise ValueError(f"images must be (N, 3, H, W), got {tuple(images.shape)}")
    previous = torch.get_num_threads()
    torch.set_num_threads(threads or previous)
    try:
        return _train(images, config, steps, seed, torch.device(device))
    finally:
        torch.set_num_threads(previous)


def _train(images: Tensor | Dataset, config: DinoConfig, steps: int, seed: int,
           device: torch.device) -> tuple[DINO, list[dict[str, float]]]:
    torch.manual_seed(seed)
    model = DINO(config).to(device)
    params = [p for p in model.student.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    generator = torch.Generator().manual_seed(seed)
    history, start = [], time.perf_counter()
    for step in range(steps):
        pick = torch.randint(len(images), (config.batch_size,), generator=generator)
        crops = multi_crop(_batch(images, pick).to(device), config, generator)
        loss, targets = model(crops)
        opt.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(params, config.clip_grad)
        opt.step()
        ema_update(model.teacher, model.student, config.teacher_momentum)
        history.append({"step": step, "loss": loss.item(), **collapse_diagnostics(targets.detach()),
                        "log_k": math.log(config.out_dim), "seconds": time.perf_counter() - start})
    return model, history


def _batch(images: Tensor | Dataset, pick: Tensor) -> Tensor:
    """The images at the indices `pick`: -> (B, 3, H, W)."""
    if isinstance(images, Tensor):
        return images[pick]
    items = [images[int(i)] for i in pick]
    return torch.stack([item["image"] if isinstance(item, dict) else item for item in items])


def dino_history(images: Tensor, config: DinoConfig, *, steps: int, seed: int = 0,
                 device: str | torch.device = "cpu", threads: int | None = None) -> list[dict[str, float]]:
    """`train_dino`'s per-step diagnostics, cached on disk under the cache folder: computed on the first call,
    read back afterwards. The key covers the images, the config, steps and seed (not device or threads)."""
    from stego_lite import cache

    spec = {"images": cache.checksum(images), "config": asdict(config), "steps": steps, "seed": seed}
    path = cache.keyed_path(cache_dir() / "dino_runs", "history", spec)
    return cache.load_or_compute(path, spec, lambda: train_dino(images, config, steps=steps, seed=seed,
                                                                 device=device, threads=threads)[1], version=1)
