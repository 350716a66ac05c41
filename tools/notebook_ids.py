"""Give every notebook cell a stable, readable id: <chapter>-<nn>, e.g. "ch02-13".

    python tools/notebook_ids.py            # name the cells that have no such id yet (new cells)
    python tools/notebook_ids.py --check    # exit 1 if any cell lacks one (tests run this)

An id, once given, is kept: a new cell gets the next free number of its chapter, so inserting, moving or
regenerating cells never renames the others and diffs stay small. The file is rewritten in the stored
notebooks' own format (one-space JSON indent), so a run that changes nothing changes no byte.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ID = re.compile(r"^ch(\d\d)-(\d\d+)$")


def chapter(path: Path) -> str:
    return path.name[:2]   # notebooks are named NN_title.ipynb


def name_cells(nb: dict, ch: str) -> int:
    """Give ids to the cells of chapter `ch` that lack a stable one; -> how many were named."""
    taken = {int(m.group(2)) for c in nb["cells"] if (m := ID.match(c.get("id", ""))) and m.group(1) == ch}
    seen, named, free = set(), 0, 0
    for cell in nb["cells"]:
        m = ID.match(cell.get("id", ""))
        if m and m.group(1) == ch and cell["id"] not in seen:
            seen.add(cell["id"])
            continue
        while free in taken:
            free += 1
        cell["id"] = f"ch{ch}-{free:02d}"
        taken.add(free)
        seen.add(cell["id"])
        named += 1
    return named


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only report cells without a stable id")
    args = parser.parse_args()
    missing = 0
    for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        nb = json.loads(path.read_text())
        named = name_cells(nb, chapter(path))
        if named and args.check:
            print(f"{path.relative_to(ROOT)}: {named} cells without a stable id (run tools/notebook_ids.py)")
            missing += named
        elif named:
            path.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n")
            print(f"{path.relative_to(ROOT)}: named {named} cells")
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main())
