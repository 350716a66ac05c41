"""Build the HTML book from the executed notebooks: clean, offline assets, warnings as errors.

    python tools/build_book.py [--executed _build/executed]

Steps: stage the book sources (_config.yml, _toc.yml, book/) and the *executed* notebook copies in
_build/book_src; fetch the JavaScript the pages need into its _vendor/ folder (MathJax, require.js,
the ipywidgets html-manager, plotly.js); run jupyter-book with execution off and -W on a clean tree.
If an asset cannot be fetched, the staged config points at the CDN for it instead, and the build
says so loudly: such a book needs the network to show math, widgets or figures.
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fetch_book_assets import CDN, fetch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
BUILD = ROOT / "_build"


def toc_notebooks(toc: dict) -> list[str]:
    """Every `file:` entry of _toc.yml under notebooks/."""
    found: list[str] = []

    def walk(node):
        if isinstance(node, dict):
            for key, value in node.items():
                if key in ("file", "root") and str(value).startswith("notebooks/"):
                    found.append(str(value))
                walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(toc)
    return found


def hide_injected_parameters(src: Path, dst: Path) -> None:
    """Copy an executed notebook, hiding papermill's injected-parameters cell from readers."""
    nb = json.loads(src.read_text())
    for cell in nb["cells"]:
        tags = cell.get("metadata", {}).get("tags", [])
        if "injected-parameters" in tags and "remove-cell" not in tags:
            tags.append("remove-cell")
    dst.write_text(json.dumps(nb, indent=1))


def stage(src: Path, executed: Path) -> None:
    """Copy the book sources and the executed notebooks into src (a fresh folder)."""
    shutil.rmtree(src, ignore_errors=True)
    src.mkdir(parents=True)
    for name in ["_config.yml", "_toc.yml"]:
        shutil.copy2(ROOT / name, src / name)
    shutil.copytree(ROOT / "book", src / "book")
    (src / "notebooks").mkdir()
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    missing = []
    for entry in toc_notebooks(toc):
        stem = Path(entry).stem
        copy = executed / "notebooks" / f"{stem}.ipynb"
        if not copy.exists():
            missing.append(str(copy))
            continue
        hide_injected_parameters(copy, src / "notebooks" / copy.name)
    if missing:
        raise SystemExit("executed notebooks missing (run tools/execute_notebooks.py first):\n  "
                         + "\n  ".join(missing))


def use_cdn_for_missing(config_path: Path, status: dict[str, str]) -> list[str]:
    """Point the staged config at the CDN for every asset that is not local; returns their names."""
    missing = [name for name, state in status.items() if state != "local"]
    if not missing:
        return missing
    config = yaml.safe_load(config_path.read_text())
    sphinx = config["sphinx"]["config"]
    if "mathjax" in missing:
        sphinx["mathjax_path"] = CDN["mathjax"]
    if "requirejs" in missing or "@jupyter-widgets/html-manager" in missing:
        sphinx.pop("nb_ipywidgets_js", None)  # myst-nb's default: both from CDNs
    if "plotly.js" in missing:
        from stego_lite.viz import plotlyjs_cdn_url

        sphinx["html_js_files"] = [[plotlyjs_cdn_url(), {"priority": 400}]]
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    return missing


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--executed", type=Path, default=BUILD / "executed")
    args = parser.parse_args()
    src = BUILD / "book_src"
    stage(src, args.executed)
    status = fetch(src / "_vendor", ROOT / ".cache" / "book-assets")
    for name, state in status.items():
        print(f"  book asset {name:32s} {state}")
    (src / "_vendor" / "status.json").write_text(json.dumps(status, indent=1))
    missing = use_cdn_for_missing(src / "_config.yml", status)
    if missing:
        print("!" * 78 + f"\n  WARNING: {', '.join(missing)} could not be fetched; the book loads them from "
              "the CDN\n  and needs the network to show them.\n" + "!" * 78)
    shutil.rmtree(BUILD / "html", ignore_errors=True)
    shutil.rmtree(BUILD / ".doctrees", ignore_errors=True)
    cmd = [str(Path(sys.executable).parent / "jupyter-book"), "build", str(src), "--path-output", str(ROOT),
           "--all", "-W", "--keep-going"]
    print("  " + " ".join(cmd), flush=True)
    result = subprocess.run(cmd)
    if result.returncode != 0:
        print("book build failed (warnings count as errors)", file=sys.stderr)
        return result.returncode
    index = BUILD / "html" / "index.html"
    size = sum(f.stat().st_size for f in (BUILD / "html").rglob("*") if f.is_file())
    print(f"\nThe book is at {index} ({size / 2**20:.1f} MiB).\n"
          f"Serve it with:  python -m http.server -d {(BUILD / 'html').relative_to(ROOT)} 8000"
          "  and open http://127.0.0.1:8000/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
