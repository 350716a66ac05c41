"""The stored chapters: clean (no outputs), parameterised for papermill, Colab-ready, in the TOC."""
from __future__ import annotations

import ast
import json
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
CONFIG = yaml.safe_load((ROOT / "_config.yml").read_text())
sys.path.insert(0, str(ROOT / "tools"))

import colab_cells  # noqa: E402


def code_cells(nb: dict) -> list[dict]:
    return [c for c in nb["cells"] if c["cell_type"] == "code"]


def source(cell: dict) -> str:
    return "".join(cell["source"])


def load(path: Path) -> dict:
    return json.loads(path.read_text())


def test_there_are_notebooks() -> None:
    assert NOTEBOOKS, "no notebooks under notebooks/"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_stored_without_outputs(path: Path) -> None:
    dirty = [i for i, c in enumerate(code_cells(load(path))) if c.get("outputs") or c.get("execution_count")]
    assert not dirty, (f"{path.relative_to(ROOT)} is stored with outputs or execution counts in code cells "
                       f"{dirty}: clear them (Jupyter: Edit > Clear All Outputs) before committing")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_parameters_cell(path: Path) -> None:
    tagged = [c for c in code_cells(load(path)) if "parameters" in c["metadata"].get("tags", [])]
    assert len(tagged) == 1, f"{path.name}: exactly one code cell must be tagged 'parameters'"
    assigned = {}
    for node in ast.parse(source(tagged[0])).body:
        if isinstance(node, ast.Assign):
            assigned[node.targets[0].id] = ast.literal_eval(node.value)
    assert assigned.get("profile") == "offline", f"{path.name}: parameters must set profile = 'offline'"
    assert assigned.get("scale") == "full", f"{path.name}: parameters must set scale = 'full'"
    assert isinstance(assigned.get("seed"), int), f"{path.name}: parameters must set an integer seed"
    code = "".join(source(c) for c in code_cells(load(path)))
    assert "get_profile(profile, scale=scale)" in code, f"{path.name}: pass the scale to the profile"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_first_code_cell_installs_only_on_colab(path: Path) -> None:
    first = source(code_cells(load(path))[0])
    tree = ast.parse(first)
    guards = [n for n in tree.body if isinstance(n, ast.If)]
    assert guards and "google.colab" in ast.unparse(guards[0].test), \
        f"{path.name}: the first code cell must install only under `if 'google.colab' in sys.modules:`"
    url, branch = CONFIG["repository"]["url"], CONFIG["repository"].get("branch", "main")
    assert f"@ git+{url}.git@{branch}\"" in first, f"{path.name}: install from {url}, branch {branch}"
    code_only = "\n".join(line.split("#")[0] for line in first.splitlines())
    assert not any(word in code_only for word in ("--upgrade", "-U", "--force-reinstall", "torch")), \
        f"{path.name}: the install cell must keep Colab's own torch (no upgrade, no torch requirement)"
    # Nothing but imports and the guarded install: elsewhere the cell must do nothing.
    assert all(isinstance(n, (ast.Import, ast.ImportFrom, ast.If)) for n in tree.body)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_title_cell_has_colab_badge(path: Path) -> None:
    title = "".join(load(path)["cells"][0]["source"])
    repo = CONFIG["repository"]["url"].removeprefix("https://github.com/")
    branch = CONFIG["repository"].get("branch", "main")
    url = f"https://colab.research.google.com/github/{repo}/blob/{branch}/notebooks/{path.name}"
    assert title.startswith("# "), f"{path.name}: the first cell must be the chapter title"
    assert url in title, f"{path.name}: the title cell needs an Open-in-Colab badge linking to {url}"


def test_every_notebook_is_in_the_toc() -> None:
    toc_text = (ROOT / "_toc.yml").read_text()
    missing = [p.name for p in NOTEBOOKS if f"notebooks/{p.stem}" not in toc_text]
    assert not missing, f"notebooks not listed in _toc.yml: {missing}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_cells_have_stable_ids(path: Path) -> None:
    """Readable ids (ch02-13) that tools/notebook_ids.py gives once, so regenerating cells churns no diff."""
    ids = [c.get("id", "") for c in load(path)["cells"]]
    wrong = [i for i in ids if not i.startswith(f"ch{path.name[:2]}-") or not i[5:].isdigit()]
    assert not wrong and len(set(ids)) == len(ids), \
        f"{path.name}: cells {wrong or 'with duplicate ids'}; run python tools/notebook_ids.py"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_colab_cells_are_written_from_the_config(path: Path) -> None:
    """Badge and install cell are what tools/colab_cells.py writes from _config.yml's repository url."""
    nb = load(path)
    url, branch = colab_cells.repository()
    assert colab_cells.generated(nb, path.name, url, branch) == nb, \
        f"{path.name}: its Colab cells are stale; run python tools/colab_cells.py"
    needs_crf = "crf=True" in "".join(source(c) for c in code_cells(nb))
    assert ("stego_lite[crf] @" in source(code_cells(nb)[0])) == needs_crf


def test_colab_cells_follow_a_new_repository_address(tmp_path: Path) -> None:
    config = tmp_path / "_config.yml"
    text = (ROOT / "_config.yml").read_text().replace(CONFIG["repository"]["url"], "https://github.com/someone/fork")
    config.write_text(text.replace("branch: main", "branch: dev"))
    url, branch = colab_cells.repository(config)
    assert (url, branch) == ("https://github.com/someone/fork", "dev")
    path = NOTEBOOKS[-1]
    nb = colab_cells.generated(load(path), path.name, url, branch)
    title, install = "".join(nb["cells"][0]["source"]), source(code_cells(nb)[0])
    assert f"https://colab.research.google.com/github/someone/fork/blob/dev/notebooks/{path.name})" in title
    assert CONFIG["repository"]["url"] not in title + install
    assert "@ git+https://github.com/someone/fork.git@dev\"" in install
    ast.parse(install)
    assert nb["cells"][1:] != load(path)["cells"][1:] and len(nb["cells"]) == len(load(path)["cells"])
