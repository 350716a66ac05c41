"""The label-free shifts of the "photos" preset: quantiles of STEGO's pointwise F on its training features.

Draws training batches exactly as `train.train` does (shuffled batches, KNN positives from ranks 1..7, 11 x 11
random points, 5 random partners) and prints, per term, quantiles of the feature correlation F that the
loss compares with its shift. The preset takes b_self and b_knn at the median and b_rand at the 90th
percentile (see the comment at the preset in stego_lite/profiles.py).

    python benchmarks/photo_shifts.py                 # the photos preset, 50 batches
    python benchmarks/photo_shifts.py --batches 200
"""
from __future__ import annotations

import argparse

import torch

from stego_lite import loss as L
from stego_lite.profiles import get_preset
from stego_lite.train import EpochOrder, next_batch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="photos")
    parser.add_argument("--batches", type=int, default=50)
    args = parser.parse_args()

    preset = get_preset(args.preset)
    source = preset.training_source(preset.load_backbone(), progress=True)
    config = preset.train_config()
    generator = torch.Generator().manual_seed(config.seed)
    order = EpochOrder(len(source), config.batch_size, generator)
    values: dict[str, list[torch.Tensor]] = {"self": [], "knn": [], "random": []}
    for _ in range(args.batches):
        batch = next_batch(source, order, config, torch.device("cpu"))
        B, S = batch.feats.shape[0], config.loss.n_points
        anchors = L.sample_points(batch.feats, L.random_coords(B, S, generator=generator))
        coords = L.random_coords(B, S, generator=generator)
        partners = {"self": [anchors], "knn": [L.sample_points(batch.feats_pos, coords)],
                    "random": [L.sample_points(batch.feats[L.partner_indices(B, generator=generator)], coords)
                               for _ in range(config.loss.n_random)]}
        for term, others in partners.items():
            values[term] += [L.feature_correlation(anchors, o, pointwise=config.loss.pointwise).flatten()
                             for o in others]
    quantiles = torch.tensor([0.1, 0.25, 0.5, 0.75, 0.9])
    print(f"{args.preset}: pointwise F over {args.batches} batches of {config.batch_size} "
          f"({len(source)} training images, {source.key})")
    print(f"{'term':8s}" + "".join(f"{f'q{int(q * 100)}':>8s}" for q in quantiles))
    for term, parts in values.items():
        f = torch.cat(parts)
        sample = f[torch.randperm(len(f), generator=generator)[:1_000_000]]   # quantile() caps its input size
        print(f"{term:8s}" + "".join(f"{v:8.3f}" for v in torch.quantile(sample, quantiles).tolist()))


if __name__ == "__main__":
    main()
