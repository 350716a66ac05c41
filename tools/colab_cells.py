"""Write every chapter's Colab badge and install cell from the one repository address in _config.yml.

    python tools/colab_cells.py           # rewrite the badge line of each title cell and the first code cell
    python tools/colab_cells.py --check   # exit 1, naming the notebooks, if any is not what this writes

The address is `repository.url` (and `repository.branch`) of _config.yml, the same one the book's
repository button uses. The badge opens the chapter's own file on Colab; the install cell runs pip only
on Colab, on `stego_lite @ git+<url>.git@<branch>` with the extras the chapter needs (`crf` where it calls
the dense CRF). pip keeps Colab's preinstalled torch: stego_lite asks for torch>=2.1 only.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
BADGE = re.compile(r"^\[!\[Open in Colab\]\(.*\)\]\(.*\)\s*$")


def repository(config_path: Path = ROOT / "_config.yml") -> tuple[str, str]:
    """(url, branch) of the book's repository, from _config.yml."""
    repo = yaml.safe_load(config_path.read_text())["repository"]
    return repo["url"].rstrip("/").removesuffix(".git"), repo.get("branch", "main")


def badge(name: str, url: str, branch: str) -> str:
    """The Open-in-Colab badge of notebooks/<name> (the image is the book's own copy, no CDN)."""
    path = url.removeprefix("https://github.com/")
    return (f"[![Open in Colab](../book/images/colab-badge.svg)]"
            f"(https://colab.research.google.com/github/{path}/blob/{branch}/notebooks/{name})")


def install_cell(url: str, branch: str, extras: tuple[str, ...] = ()) -> str:
    """The first code cell: pip install stego_lite from the repository, on Colab only."""
    package = "stego_lite" + (f"[{','.join(extras)}]" if extras else "")
    return (
        "# On Colab only: install stego_lite from the repository. Elsewhere this cell does nothing.\n"
        "# pip keeps Colab's own torch (stego_lite asks for torch>=2.1). Written by tools/colab_cells.py.\n"
        "import subprocess\n"
        "import sys\n"
        "\n"
        'if "google.colab" in sys.modules:\n'
        '    subprocess.run([sys.executable, "-m", "pip", "install", "-q",\n'
        f'                    "{package} @ git+{url}.git@{branch}"],\n'
        "                   check=True)"
    )


def extras_of(nb: dict) -> tuple[str, ...]:
    """The optional dependencies a chapter needs: `crf` (pydensecrf2) where it asks for the dense CRF."""
    code = "".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code")
    return ("crf",) if "crf=True" in code else ()


def lines(text: str) -> list[str]:
    """Notebook source as stored: lines that keep their newline, the last without."""
    return text.splitlines(keepends=True)


def generated(nb: dict, name: str, url: str, branch: str) -> dict:
    """`nb` with its title cell's badge line and its first code cell written from the repository address."""
    nb = json.loads(json.dumps(nb))
    title = nb["cells"][0]
    if title["cell_type"] != "markdown" or not "".join(title["source"]).startswith("# "):
        raise ValueError(f"{name}: the first cell must be the chapter's markdown title ('# ...')")
    text = lines("".join(title["source"]))
    found = [i for i, line in enumerate(text) if BADGE.match(line)]
    new = badge(name, url, branch)
    if found:
        text[found[0]] = new + ("\n" if text[found[0]].endswith("\n") else "")
    else:   # right under the title line
        text[1:1] = ["\n", new + "\n"]
    title["source"] = text
    first = next(c for c in nb["cells"] if c["cell_type"] == "code")
    first["source"] = lines(install_cell(url, branch, extras_of(nb)))
    return nb


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if a notebook differs")
    args = parser.parse_args()
    url, branch = repository()
    stale = []
    for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        nb = json.loads(path.read_text())
        new = generated(nb, path.name, url, branch)
        if new != nb:
            stale.append(path.name)
            if not args.check:
                path.write_text(json.dumps(new, indent=1, ensure_ascii=False) + "\n")
    if args.check and stale:
        print(f"not generated from {url}@{branch}: {', '.join(stale)}; run python tools/colab_cells.py",
              file=sys.stderr)
        return 1
    done = f"rewrote {len(stale)} of" if stale else "checked"
    print(f"Colab badges and install cells: {done} the chapters, from {url}@{branch}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
