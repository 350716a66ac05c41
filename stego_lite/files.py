"""Writing files and folders so that a reader never sees half of one, and locks that die with their holder.

Writers build a file or folder under a temporary name beside its destination and rename it into place
when it is complete; a JSON manifest written last (by `write_json_atomic`) marks a folder as finished.
Locks are OS-level (`flock`): the kernel releases them when their holder exits, however it exits, so a
killed process never leaves a lock that blocks the next run. A process that has to wait says for whom.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any


def write_atomic(path: str | os.PathLike, write: Callable[[Path], object]) -> None:
    """Create `path` by `write(tmp)` on a temporary file beside it, then a rename: readers see the whole
    file or none, and a failed write leaves nothing behind. Every writer of caches and outputs uses it.

    The file gets the permissions of a plain `open()` (0666 less the umask), not mkstemp's 0600.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def remove_stale_temporaries(path: Path) -> None:
    """Delete the temporary files of `write_atomic(path, ...)` that killed writers left behind.

    Call it holding the lock that every writer of `path` takes, so that no live writer's file goes.
    """
    for tmp in Path(path).parent.glob(f".{Path(path).name}.*.tmp"):
        tmp.unlink(missing_ok=True)


def _umask() -> int:
    mask = os.umask(0)   # the only portable way to read it is to set it
    os.umask(mask)
    return mask


def write_json_atomic(path: Path, obj: Any) -> None:
    """Write JSON to `path` through a temporary file and a rename, so readers see all of it or nothing."""
    write_atomic(path, lambda tmp: tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n"))


def read_json(path: Path) -> dict[str, Any] | None:
    """A manifest's content, or None if it is missing or unreadable (then its split is rebuilt)."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


@contextlib.contextmanager
def file_lock(lock_path: Path, *, what: str = "") -> Iterator[None]:
    """Hold an exclusive OS lock on `lock_path` (created if missing; POSIX flock, a no-op without fcntl).

    The holder's pid is written into the file. If another process holds the lock, say so on stderr,
    naming it, and wait: the lock is released when that process finishes or dies.
    """
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:   # Windows: writers are not expected to race there
        yield
        return
    with open(lock_path, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            print(f"waiting for {what or lock_path.parent}: another process (pid {holder}) is writing it "
                  f"(lock {lock_path}); this continues when it finishes", file=sys.stderr, flush=True)
            fcntl.flock(handle, fcntl.LOCK_EX)
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextlib.contextmanager
def folder_lock(folder: Path) -> Iterator[None]:
    """Hold an exclusive lock on `folder/.lock` (see `file_lock`)."""
    with file_lock(folder / ".lock", what=str(folder)):
        yield


@contextlib.contextmanager
def staging_dir(parent: Path, prefix: str) -> Iterator[Path]:
    """A temporary folder inside `parent` (same file system, so renames out of it are atomic).

    It is removed on exit, whatever is left in it: move the finished parts out before leaving. Call it
    under the folder's lock: the temporary folders of the same prefix that killed writers left behind are
    removed first.
    """
    parent.mkdir(parents=True, exist_ok=True)
    for stale in parent.glob(f".tmp-{prefix}-*"):
        shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{prefix}-", dir=parent))
    os.chmod(tmp, 0o777 & ~_umask())   # mkdtemp's 0700 would stay on the folders moved out of it
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def replace_tree(src: Path, dst: Path) -> None:
    """Move folder `src` to `dst`, replacing what was there (dst's old content is deleted first)."""
    if dst.exists():
        shutil.rmtree(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    os.replace(src, dst)


def save_torch_atomic(obj: Any, path: str | os.PathLike) -> None:
    """torch.save to a temporary file beside `path`, then rename: readers see the whole file or none."""
    import torch

    write_atomic(path, lambda tmp: torch.save(obj, tmp))
