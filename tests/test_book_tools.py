"""The book build's own logic: which notebooks it stages, and the CDN fallback for missing assets."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))

import build_book  # noqa: E402
from fetch_book_assets import CDN  # noqa: E402


def test_toc_notebooks_finds_nested_entries() -> None:
    toc = {"root": "book/intro", "parts": [{"chapters": [{"file": "notebooks/a"}, {"file": "book/x",
           "sections": [{"file": "notebooks/b"}]}]}]}
    assert build_book.toc_notebooks(toc) == ["notebooks/a", "notebooks/b"]


def test_stage_names_missing_executed_notebooks(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="00_how_to_run.ipynb"):
        build_book.stage(tmp_path / "src", tmp_path / "nothing-executed")


def test_cdn_fallback_rewrites_only_missing_assets(tmp_path: Path) -> None:
    config = tmp_path / "_config.yml"
    config.write_text((ROOT / "_config.yml").read_text())
    status = {"plotly.js": "local", "mathjax": "missing (npm failed)", "requirejs": "local",
              "@jupyter-widgets/html-manager": "local"}
    assert build_book.use_cdn_for_missing(config, status) == ["mathjax"]
    sphinx = yaml.safe_load(config.read_text())["sphinx"]["config"]
    assert sphinx["mathjax_path"] == CDN["mathjax"]
    assert "nb_ipywidgets_js" in sphinx and sphinx["html_js_files"][1][0] == "plotly.min.js"


def test_all_local_leaves_config_untouched(tmp_path: Path) -> None:
    config = tmp_path / "_config.yml"
    text = (ROOT / "_config.yml").read_text()
    config.write_text(text)
    assert build_book.use_cdn_for_missing(config, dict.fromkeys(CDN, "local")) == []
    assert config.read_text() == text


def test_fetch_reports_what_it_could_not_fetch(tmp_path: Path, monkeypatch) -> None:
    import fetch_book_assets

    monkeypatch.setattr(fetch_book_assets.shutil, "which", lambda name: None)  # as if npm were absent
    status = fetch_book_assets.fetch(tmp_path / "vendor", tmp_path / "empty-cache")
    assert status["plotly.js"] == "local" and (tmp_path / "vendor" / "plotly.min.js").stat().st_size > 10**6
    for name in fetch_book_assets.NPM_PACKAGES:
        assert status[name].startswith("missing (npm is not installed")


def test_extract_takes_globs_and_rejects_absent_parts(tmp_path: Path) -> None:
    import io
    import tarfile

    from fetch_book_assets import extract

    tarball = tmp_path / "pkg.tgz"
    with tarfile.open(tarball, "w:gz") as tar:
        for name in ["package/dist/a.js", "package/dist/f1.woff2", "package/dist/f1.ttf"]:
            info = tarfile.TarInfo(name)
            info.size = 3
            tar.addfile(info, io.BytesIO(b"abc"))
    extract(tarball, "dist", ["a.js", "*.woff2"], tmp_path / "out")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.js", "f1.woff2"]
    with pytest.raises(RuntimeError, match="pkg.tgz has no dist/missing.js"):
        extract(tarball, "dist", ["missing.js"], tmp_path / "out2")


def test_smoke_execution_passes_the_scale_and_the_chapters_own_sizes(tmp_path: Path, monkeypatch) -> None:
    import execute_notebooks

    calls = []
    monkeypatch.setattr(execute_notebooks.pm, "execute_notebook",
                        lambda src, dst, parameters, **kwargs: calls.append((Path(src).stem, parameters)))
    execute_notebooks.execute(["00_how_to_run", "01_dino_features"], "paper", tmp_path, 10, scale="smoke")
    assert calls == [("00_how_to_run", {"profile": "paper", "scale": "smoke"}),
                     ("01_dino_features", {"profile": "paper", "scale": "smoke",
                                           **execute_notebooks.SMOKE_PARAMETERS})]
    execute_notebooks.execute(["00_how_to_run"], "offline", tmp_path, 10)
    assert calls[-1] == ("00_how_to_run", {"profile": "offline"})
