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
