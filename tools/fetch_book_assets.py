"""Fetch the JavaScript the built book needs into a folder it serves, so it renders with no network.

MathJax, require.js and the ipywidgets html-manager come from the npm registry (`npm pack`, pinned
versions, cached under .cache/book-assets); plotly.js is copied from the installed plotly package.
Nothing here is committed: the folder is rebuilt on every book build.

Prints one line per asset and exits 0 when all are local. If a fetch fails it prints why, and the
caller (tools/build_book.py) falls back to the CDN addresses for the missing assets.
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

NPM_PACKAGES = {  # name -> exact version (the html-manager 1.x line matches ipywidgets 8)
    "mathjax": "3.2.2",
    "requirejs": "2.3.8",
    "@jupyter-widgets/html-manager": "1.0.15",
}
# What to take from each npm tarball (paths inside its package/ folder), and where it lands.
MATHJAX_PARTS = [
    "tex-mml-chtml.js", "output/chtml/fonts/woff-v2", "input/tex/extensions", "input/mml/extensions",
    "ui", "a11y", "adaptors",
]
LAYOUT = {  # name -> (folder inside the package, its parts, output subfolder)
    "mathjax": ("es5", MATHJAX_PARTS, "mathjax"),
    "requirejs": ("", ["require.js"], ""),
    # embed-amd.js bundles the manager and the core widgets; browsers take the woff2 icon fonts.
    "@jupyter-widgets/html-manager": ("dist", ["embed-amd.js", "*.woff2"], "html-manager"),
}
CDN = {
    "mathjax": "https://cdn.jsdelivr.net/npm/mathjax@3/es5/tex-mml-chtml.js",
    "requirejs": "https://cdnjs.cloudflare.com/ajax/libs/require.js/2.3.4/require.min.js",
    "@jupyter-widgets/html-manager":
        "https://cdn.jsdelivr.net/npm/@jupyter-widgets/html-manager@1.0.15/dist/embed-amd.js",
}


def npm_tarball(name: str, version: str, cache: Path) -> Path:
    """The package's tarball from the npm registry, cached (a partial download never lands)."""
    cache.mkdir(parents=True, exist_ok=True)
    target = cache / f"{name.replace('@', '').replace('/', '-')}-{version}.tgz"
    if target.exists():
        return target
    if shutil.which("npm") is None:
        raise RuntimeError("npm is not installed (Debian: apt-get install npm)")
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        out = subprocess.run(["npm", "pack", f"{name}@{version}", "--json", "--pack-destination", tmp],
                             capture_output=True, text=True, timeout=300)
        if out.returncode != 0:
            raise RuntimeError(f"npm pack {name}@{version} failed: {out.stderr.strip()[-500:]}")
        filename = json.loads(out.stdout)[0]["filename"]
        (Path(tmp) / filename).replace(target)
    return target


def extract(tarball: Path, folder: str, parts: list[str], dest: Path) -> None:
    """Copy `parts` (paths or glob patterns) of the package's `folder` into dest, keeping their layout."""
    with tempfile.TemporaryDirectory() as tmp, tarfile.open(tarball) as tar:
        tar.extractall(tmp, filter="data")
        root = Path(tmp) / "package" / folder
        for part in parts:
            matches = sorted(root.glob(part))
            if not matches:
                raise RuntimeError(f"{tarball.name} has no {folder}/{part}")
            for src in matches:
                out = dest / src.relative_to(root)
                out.parent.mkdir(parents=True, exist_ok=True)
                if src.is_dir():
                    shutil.copytree(src, out, dirs_exist_ok=True)
                else:
                    shutil.copy2(src, out)


def fetch(dest: Path, cache: Path) -> dict[str, str]:
    """Fill dest; returns {asset: 'local' | reason it is missing}."""
    status = {}
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    import plotly

    shutil.copy2(Path(plotly.__file__).parent / "package_data" / "plotly.min.js", dest / "plotly.min.js")
    status["plotly.js"] = "local"
    for name, version in NPM_PACKAGES.items():
        folder, parts, out = LAYOUT[name]
        try:
            extract(npm_tarball(name, version, cache), folder, parts, dest / out)
            status[name] = "local"
        except Exception as err:  # any failure: report it and let the build use the CDN
            status[name] = f"missing ({err})"
    return status


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dest", type=Path, help="folder the book serves as static files")
    parser.add_argument("--cache", type=Path, default=Path(".cache/book-assets"))
    args = parser.parse_args()
    status = fetch(args.dest, args.cache)
    for name, state in status.items():
        print(f"  book asset {name:32s} {state}")
    (args.dest / "status.json").write_text(json.dumps(status, indent=1))
    return 0 if all(s == "local" for s in status.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
