"""One progress bar for every phase that takes more than a couple of seconds (tqdm; widgets in notebooks)."""
from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import Any


def progress(iterable: Iterable | None = None, *, enabled: bool | None = True, desc: str = "", **kwargs: Any):
    """`tqdm.auto.tqdm(iterable, desc=desc, **kwargs)`, or a silent one when not `enabled`.

    `enabled=None` shows it only on a terminal: for phases a library call may hit anywhere (generating a
    dataset on first use), so that a shell user sees it moving and a notebook's outputs stay the same.
    Used as an iterable wrapper or, without `iterable`, as a bar to `update` by hand (pass `total`).
    """
    from tqdm.auto import tqdm

    if enabled is None:   # (tqdm's own disable=None is ignored by its notebook bar)
        enabled = sys.stderr.isatty()
    return tqdm(iterable, desc=desc, disable=not enabled, **kwargs)
