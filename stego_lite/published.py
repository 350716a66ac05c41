"""Published numbers, for labelled comparison only: never our results.

Every table says where its values come from (see ../shared/reference/stego-reference.md §7-8, which
lists the sources). Values "read off the figure" are by eye, to about +-0.5.
"""
from __future__ import annotations

import pandas as pd

# STEGO (Hamilton et al. 2022) with CRF; cluster = unsupervised probe with Hungarian matching.
STEGO_RESULTS = pd.DataFrame(
    [
        ("COCO-Stuff-27", "ViT-B/8", 56.9, 28.2, 76.1, 41.0,
         "Papers with Code listing of the STEGO paper; evaluating cocostuff27_vit_base_5.ckpt gives "
         "56.93 / 28.19 / 76.13 / 41.07 (STEGO issue #3)"),
        ("Cityscapes-27", "ViT-B/8", 73.2, 21.0, None, None, "Papers with Code listing of the STEGO paper"),
        ("Potsdam-3", "ViT-S/8", 77.0, 62.6, 85.9, 74.8,
         "accuracy: Papers with Code; mIoU and linear: evaluating potsdam_test.ckpt (STEGO issue #39)"),
    ],
    columns=["dataset", "backbone", "cluster accuracy", "cluster mIoU", "linear accuracy", "linear mIoU",
             "source"],
)

# Koenig et al. 2023, Fig. 4 / Table 2: released checkpoints vs probes on raw DINO features, mIoU.
KOENIG_CHECKPOINTS = pd.DataFrame(
    [
        ("COCO-Stuff-27", 28.2, 26.8, 13.3, 12.7, 41.0, 39.5, 44.5, 39.6),
        ("Cityscapes-27", 21.0, 19.7, 15.3, 14.5, 28.0, 27.2, 35.0, 34.3),
        ("Potsdam-3", 62.5, 58.5, 54.3, 46.6, 74.8, 69.9, 72.5, 66.5),
    ],
    columns=["dataset", "STEGO cluster +CRF", "STEGO cluster", "DINO cluster +CRF", "DINO cluster",
             "STEGO linear +CRF", "STEGO linear", "DINO linear +CRF", "DINO linear"],
)
KOENIG_SOURCE = ("Koenig, Schambach, Otterbach 2023, Fig. 4 (without CRF) and Table 2 (with CRF), "
                 "values read off the figure (about +-0.5)")

# Koenig et al. 2023, Fig. 4, COCO-Stuff-27 (DINO ViT-B/8): validation mIoU of the cluster and linear
# probes on D-dimensional reductions of the DINO features, by the STEGO head trained with dim=D, PCA and
# Gaussian random projection; without CRF, best validation step (reference §8). D = 768 is the full
# ViT-B width.
KOENIG_DIMENSIONS_COCO = pd.DataFrame(
    [
        (3, 13.0, 5.1, 2.3, 11.0, 6.0, 2.0),
        (6, 19.7, 8.5, 3.3, 20.5, 10.0, 3.0),
        (12, 23.4, 9.6, 4.5, 31.0, 14.5, 5.0),
        (24, 25.4, 12.6, 5.8, 36.0, 20.5, 9.0),
        (48, 26.8, 12.0, 6.5, 40.0, 26.0, 15.0),
        (96, 26.2, 12.6, 8.8, 39.5, 31.0, 21.5),
        (192, 27.2, 12.2, 10.6, 39.7, 35.0, 29.0),
        (384, 25.7, 10.9, 12.5, 36.7, 37.5, 34.0),
        (768, 24.0, 14.3, 12.6, 33.8, 40.5, 39.5),
    ],
    columns=["D", "STEGO cluster", "PCA cluster", "RP cluster", "STEGO linear", "PCA linear", "RP linear"],
)
KOENIG_DIMENSIONS_SOURCE = ("Koenig, Schambach, Otterbach 2023, Fig. 4 (COCO-Stuff-27, DINO ViT-B/8, mIoU "
                            "without CRF, best validation step), values read off the figure (about +-0.5)")
