"""Worker processes that never outlive their parent and never hold its locks.

Every pool of the library (SynthStuff rendering, five-crop, dense CRF) comes from `process_pool`:
- spawned, not forked: a worker starts a fresh interpreter, so it inherits neither the parent's locked
  file descriptors (a forked worker kept a folder lock alive after its parent was killed, and the next
  run waited forever) nor the state of torch's threads;
- each worker watches its parent and exits when the parent is gone, however the parent ended.
"""
from __future__ import annotations

import multiprocessing
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from typing import Any

PARENT_CHECK_S = 0.5   # how often a worker looks for its parent


def process_pool(workers: int, initializer: Callable[..., Any] | None = None,
                 initargs: tuple = ()) -> ProcessPoolExecutor:
    """A pool of `workers` spawned processes that exit with their parent (`initializer(*initargs)` first)."""
    return ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                               initializer=_start_worker, initargs=(os.getpid(), initializer, initargs))


def _start_worker(parent: int, initializer: Callable[..., Any] | None, initargs: tuple) -> None:
    threading.Thread(target=_exit_without_parent, args=(parent,), daemon=True).start()
    if initializer is not None:
        initializer(*initargs)


def _exit_without_parent(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(PARENT_CHECK_S)
    os._exit(1)   # the parent died: nobody will collect this worker's results
