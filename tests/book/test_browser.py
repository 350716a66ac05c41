"""The built book, opened in a real (headless) browser with no network: what a reader sees.

Needs `_build/html` (make book) and Chromium (tools/ensure_chromium.sh installs Debian's). Without
Chromium the tests skip with a notice, except under CI, where they fail.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from browser_check import check_site, find_chromium

ROOT = Path(__file__).resolve().parents[2]
SITE = ROOT / "_build" / "html"
CHAPTER = "notebooks/00_how_to_run.html"  # has math, a plotly figure and a widget


@pytest.fixture(scope="module")
def chromium() -> str:
    path = find_chromium()
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("no Chromium under CI: tools/ensure_chromium.sh should have installed it")
        pytest.skip("NOTICE: no Chromium here (apt-get install chromium); browser check skipped")
    return path


@pytest.fixture(scope="module")
def site() -> Path:
    if not (SITE / "index.html").exists():
        pytest.fail(f"{SITE}/index.html is missing: build the book first (make book)")
    return SITE


def test_every_page_renders_offline(site: Path, chromium: str) -> None:
    reports = check_site(site, ROOT / "_build" / "screenshots", chromium)
    assert len(reports) >= 4
    chapter = next(r for r in reports if r.page == CHAPTER)
    # The pipe is exercised end to end: the chapter really has math, a figure and a widget.
    assert chapter.state["math"] > 0 and chapter.state["figures"] > 0 and chapter.state["views"] > 0
    failures = [f"{r.page}: {p}" for r in reports for p in r.problems]
    assert not failures, "pages with problems:\n" + "\n".join(failures)
    shots = sorted((ROOT / "_build" / "screenshots").glob("*.png"))
    assert len(shots) == len(reports)


def test_a_missing_asset_is_reported_with_page_and_request(site: Path, chromium: str,
                                                            tmp_path: Path) -> None:
    broken = tmp_path / "html"
    shutil.copytree(site, broken)
    (broken / "_static" / "plotly.min.js").unlink()
    [report] = check_site(broken, None, chromium, only=[CHAPTER])
    assert report.page == CHAPTER
    assert any("plotly.min.js" in p and "404" in p for p in report.problems), report.problems
    assert any("plotly figures not drawn" in p for p in report.problems), report.problems
