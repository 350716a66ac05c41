"""The wheel check's disk handling: a venv is not started without room for it, and its size is counted once."""
from __future__ import annotations

import os
import shutil
import sys
from collections import namedtuple
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))

import wheel_check  # noqa: E402

Usage = namedtuple("Usage", "total used free")


def test_short_disk_stops_before_the_venv_with_figures_and_fix(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(wheel_check.shutil, "disk_usage", lambda path: Usage(10e9, 9e9, 1.2e9))
    called = []
    monkeypatch.setattr(wheel_check, "run", lambda *a, **k: called.append(a))
    with pytest.raises(SystemExit, match=r"fresh venv needs about 7\.5 GB free in .*only 1\.2 GB.*--out"):
        wheel_check.venv(tmp_path / "venv-fresh", "fresh")
    assert called == [] and not (tmp_path / "venv-fresh").exists()


def test_enough_room_goes_on(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(wheel_check.shutil, "disk_usage", lambda path: Usage(10e9, 1e9, 9e9))
    called = []
    monkeypatch.setattr(wheel_check, "run", lambda args, **k: called.append(args))
    python = wheel_check.venv(tmp_path / "venv-colab", "colab")
    assert python == tmp_path / "venv-colab" / "bin" / "python"
    assert called == [[sys.executable, "-m", "venv", str(tmp_path / "venv-colab")]]


def test_size_counts_hard_links_once_and_skips_symlinks(tmp_path: Path) -> None:
    (tmp_path / "a").write_bytes(b"x" * 3000)
    os.link(tmp_path / "a", tmp_path / "b")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "c").write_bytes(b"y" * 500)
    (tmp_path / "link").symlink_to(tmp_path / "sub" / "c")
    assert wheel_check.size_gb(tmp_path) == pytest.approx(3500 / 1e9)
    shutil.rmtree(tmp_path / "sub")
    assert wheel_check.size_gb(tmp_path) == pytest.approx(3000 / 1e9)
