"""The book's two profiles, in one place: which backbone, data and settings each chapter uses.

    p = get_profile(profile)                 # profile = "offline" | "paper", from the notebook parameters
    backbone = load_backbone(p.backbone)
    train_set, val_set = p.train_set(), p.val_set()

`offline` runs anywhere on a CPU without network: SynthStuff and the `texture_bank` descriptor standing
in for DINO. `paper` is STEGO's COCO-Stuff-27 setting: official DINO ViT-B/8 weights and the real data
(prepared in STEGO's layout under $STEGO_LITE_DATA; the five-crop training set is made with
`python -m stego_lite five-crop cocostuff27`).
"""
from __future__ import annotations

from dataclasses import dataclass

from torch.utils.data import Dataset


@dataclass(frozen=True)
class Profile:
    name: str
    backbone: str       # a name from stego_lite.backbone.list_backbones()
    dataset: str        # what the chapters train and evaluate on
    train_res: int      # training images are train_res x train_res crops (px)
    eval_res: int       # evaluation centre crops (px)
    loss_preset: str    # the loss/training preset of stego_lite.loss for this data
    needs: str          # what a reader needs to run it

    def train_set(self) -> Dataset:
        """The training split (generated or read from disk on first use)."""
        return self._dataset("train")

    def val_set(self) -> Dataset:
        """The evaluation split."""
        return self._dataset("val")

    def _dataset(self, split: str) -> Dataset:
        from stego_lite import data

        if self.dataset == "synthstuff":
            return data.SYNTHSTUFF_OFFLINE.dataset(split)
        if self.dataset == "cocostuff27":
            if split == "train":  # STEGO trains on five crops of each image (reference §4)
                return data.FiveCropDataset("cocostuff27", "train", transform=data.SegTransform(self.train_res))
            return data.CocoStuff27(split=split, transform=data.SegTransform(self.eval_res))
        raise ValueError(f"profile {self.name!r} names an unknown dataset {self.dataset!r}")


PROFILES: dict[str, Profile] = {
    "offline": Profile("offline", backbone="texture_bank", dataset="synthstuff", train_res=96, eval_res=96,
                       loss_preset="synthstuff", needs="a CPU; no network"),
    "paper": Profile("paper", backbone="dino_vitb8", dataset="cocostuff27", train_res=224, eval_res=320,
                     loss_preset="cocostuff27", needs="a GPU, internet (DINO weights) and COCO-Stuff"),
}


def get_profile(name: str) -> Profile:
    """The named profile; a clear error for anything else."""
    try:
        return PROFILES[name]
    except KeyError:
        raise ValueError(f"unknown profile {name!r}; choose one of {sorted(PROFILES)}") from None
