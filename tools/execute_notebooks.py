"""Execute the chapters with papermill into a build folder, one fresh kernel each, and time them.

    python tools/execute_notebooks.py --profile offline --out _build/executed [NAMES...]

The stored notebooks (notebooks/*.ipynb, no outputs) are never modified: executed copies go to
OUT/notebooks/, which the book build and nbval read. Each chapter's wall time is printed as it
finishes and written to OUT/times.tsv, so the growth of the offline book's run time stays visible.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import papermill as pm

ROOT = Path(__file__).resolve().parents[1]


def execute(names: list[str], profile: str, out: Path, timeout: int) -> list[tuple[str, float]]:
    """Run each notebook; raises on the first failing cell after reporting where it failed."""
    (out / "notebooks").mkdir(parents=True, exist_ok=True)
    times = []
    for name in names:
        src = ROOT / "notebooks" / f"{name}.ipynb"
        dst = out / "notebooks" / f"{name}.ipynb"
        start = time.perf_counter()
        print(f"  executing {name} (profile={profile}) ...", flush=True)
        pm.execute_notebook(
            src, dst, parameters={"profile": profile}, kernel_name="python3",
            cwd=str(src.parent), execution_timeout=timeout, progress_bar=False, log_output=False,
        )
        seconds = time.perf_counter() - start
        times.append((name, seconds))
        print(f"  executed  {name}: {seconds:6.1f} s", flush=True)
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="notebook names without .ipynb (default: all)")
    parser.add_argument("--profile", default="offline", choices=["offline", "paper"])
    parser.add_argument("--out", type=Path, default=ROOT / "_build" / "executed")
    parser.add_argument("--timeout", type=int, default=1800, help="seconds per cell")
    args = parser.parse_args()
    names = args.names or sorted(p.stem for p in (ROOT / "notebooks").glob("*.ipynb"))
    if not names:
        print("no notebooks found under notebooks/", file=sys.stderr)
        return 1
    times = execute(names, args.profile, args.out, args.timeout)
    lines = [f"{name}\t{seconds:.1f}" for name, seconds in times]
    (args.out / "times.tsv").write_text("notebook\tseconds\n" + "\n".join(lines) + "\n")
    print(f"  all notebooks: {sum(s for _, s in times):.1f} s (per notebook in {args.out / 'times.tsv'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
