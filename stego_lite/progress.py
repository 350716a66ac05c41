"""One progress bar for every phase that takes more than a couple of seconds (tqdm; widgets in notebooks)."""
from __future__ import annotations

from collections.abc import Iterable
from typing import Any


def progress(iterable: Iterable | None = None, *, enabled: bool = True, desc: str = "", **kwargs: Any):
    """`tqdm.auto.tqdm(iterable, desc=desc, **kwargs)`, or a silent one when not `enabled`.

    Used as an iterable wrapper or, without `iterable`, as a bar to `update` by hand (pass `total`).
    """
    from tqdm.auto import tqdm

    return tqdm(iterable, desc=desc, disable=not enabled, **kwargs)
