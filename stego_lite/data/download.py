"""Optional download of STEGO's prepared dataset zips (reference §4.1), done so that nothing half-done stays.

The zip is streamed to a temporary file next to the destination, its size is checked against the
server's Content-Length, its CRCs are verified, it is extracted into a temporary folder, and only
then is the dataset folder renamed into place. Any failure removes the temporary files.
"""
from __future__ import annotations

import http.client
import urllib.request
import zipfile
from pathlib import Path, PurePosixPath

from ..env import OFFLINE_ENV, data_dir, offline
from ..files import folder_lock, staging_dir
from ..progress import progress as progress_bar
from .base import STEGO_ZIP_URL

PREPARED_ZIPS = {name: STEGO_ZIP_URL.format(name=name)
                 for name in ("cocostuff", "cityscapes", "potsdam", "potsdamraw")}


class DownloadError(RuntimeError):
    """A download was cut short or its content is damaged; nothing was left under the data root."""


def _fetch(url: str, dest: Path, timeout: float, progress: bool) -> None:
    try:
        if offline():
            raise OSError(f"${OFFLINE_ENV} is set, so nothing is downloaded")
        response = urllib.request.urlopen(url, timeout=timeout)
    except OSError as err:
        raise DownloadError(f"cannot download {url}: {err}. Check the network, or download the file "
                            "yourself and unpack it under the data root.") from err
    with response, open(dest, "wb") as f:
        expected = response.headers.get("Content-Length")
        expected = int(expected) if expected is not None else None
        bar = progress_bar(enabled=progress, total=expected, unit="B", unit_scale=True, desc=Path(url).name)
        received = 0
        try:
            while chunk := response.read(1 << 20):
                f.write(chunk)
                received += len(chunk)
                bar.update(len(chunk))
        except (OSError, http.client.HTTPException) as err:   # connection reset, IncompleteRead
            raise DownloadError(f"download of {url} broke off after {received} bytes: {err}. "
                                "Run it again.") from err
        finally:
            bar.close()
    if expected is not None and received != expected:
        raise DownloadError(f"download of {url} gave {received} bytes, the server announced {expected}: "
                            "the transfer was cut short. Run it again.")


def _check_zip(path: Path, url: str) -> list[str]:
    """Verify every member's CRC and refuse members that would land outside the folder; -> member names."""
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
            names = archive.namelist()
    except zipfile.BadZipFile as err:
        raise DownloadError(f"{url} is not a valid zip file ({err}); it may be damaged or an error page. "
                            "Run the download again.") from err
    if bad is not None:
        raise DownloadError(f"member {bad!r} of {url} fails its CRC check: the file is damaged. "
                            "Run it again.")
    for name in names:
        parts = PurePosixPath(name).parts
        if name.startswith(("/", "\\")) or ".." in parts or (parts and ":" in parts[0]):
            raise DownloadError(f"{url} contains the unsafe path {name!r}; refusing to extract it")
    return names


def download_prepared(name: str, root: str | Path | None = None, *, url: str | None = None,
                      timeout: float = 60.0, progress: bool = False) -> Path:
    """Download and unpack STEGO's prepared `name`.zip into `<root>/<name>/`; return that folder.

    `name` is one of PREPARED_ZIPS (cocostuff, cityscapes, potsdam, potsdamraw); `url` overrides the
    address (e.g. a mirror). An existing `<root>/<name>/` is returned as is: delete it to download again.
    """
    if url is None:
        if name not in PREPARED_ZIPS:
            raise ValueError(f"unknown prepared dataset {name!r}; choose one of {sorted(PREPARED_ZIPS)}")
        url = PREPARED_ZIPS[name]
    root = Path(root).expanduser() if root is not None else data_dir()
    target = root / name
    with folder_lock(root):
        if target.exists():
            return target
        with staging_dir(root, f"download-{name}") as tmp:
            archive = tmp / f"{name}.zip"
            _fetch(url, archive, timeout, progress)
            names = _check_zip(archive, url)
            extracted = tmp / "extracted"
            with zipfile.ZipFile(archive) as z:
                z.extractall(extracted)
            archive.unlink()
            tops = {PurePosixPath(n).parts[0] for n in names if PurePosixPath(n).parts}
            # STEGO's zips hold one folder named like the dataset; a zip of loose files becomes that folder
            src = extracted / name if tops == {name} else extracted
            src.rename(target)   # same file system: atomic
    return target
