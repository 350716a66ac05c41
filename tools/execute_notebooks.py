"""Execute the chapters with papermill into a build folder, one fresh kernel each, and time them.

    python tools/execute_notebooks.py --profile offline --out _build/executed [NAMES...]
    python tools/execute_notebooks.py --profile paper --scale smoke --world _build/paper-world \
        --out _build/paper-smoke                     # CI's paper-smoke stage

The stored notebooks (notebooks/*.ipynb, no outputs) are never modified: executed copies go to
OUT/notebooks/, which the book build and nbval read. Each chapter's wall time is printed as it
finishes and written to OUT/times.tsv, so the growth of the offline book's run time stays visible.

`--world DIR` builds the miniature paper world there (tools/paper_world.py: STEGO's datasets in small,
DINO weights and a released checkpoint, no download), reads every file of it once, and points the
kernels at it ($STEGO_LITE_DATA, $TORCH_HOME, $STEGO_LITE_OFFLINE) with an empty cache in OUT/cache, so
every chapter runs cold, as in a fresh clone.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

import papermill as pm

ROOT = Path(__file__).resolve().parents[1]
# Size parameters of single chapters that the profile does not hold, at the smoke scale (given to the
# chapters that declare them): chapter 1's DINO runs, the same code in both profiles.
SMOKE_PARAMETERS = {"dino_steps": 5}


def execute(names: list[str], profile: str, out: Path, timeout: int,
            scale: str = "full") -> list[tuple[str, float]]:
    """Run each notebook; raises on the first failing cell after reporting where it failed."""
    (out / "notebooks").mkdir(parents=True, exist_ok=True)
    times = []
    for name in names:
        src = ROOT / "notebooks" / f"{name}.ipynb"
        dst = out / "notebooks" / f"{name}.ipynb"
        parameters = {"profile": profile}
        if scale != "full":
            declared = pm.inspect_notebook(str(src))
            parameters |= {"scale": scale, **{k: v for k, v in SMOKE_PARAMETERS.items() if k in declared}}
        start = time.perf_counter()
        print(f"  executing {name} ({', '.join(f'{k}={v}' for k, v in parameters.items())}) ...", flush=True)
        pm.execute_notebook(
            src, dst, parameters=parameters, kernel_name="python3",
            cwd=str(src.parent), execution_timeout=timeout, progress_bar=False, log_output=False,
        )
        seconds = time.perf_counter() - start
        times.append((name, seconds))
        print(f"  executed  {name}: {seconds:6.1f} s", flush=True)
    return times


def use_world(root: Path, out: Path) -> None:
    """Build (or keep) the miniature paper world at `root`, read it once, and point the kernels at it."""
    sys.path.insert(0, str(ROOT / "tools"))
    import paper_world

    start = time.perf_counter()
    world = paper_world.build(root)
    os.environ.update(world.environment())
    cache = out / "cache"
    shutil.rmtree(cache, ignore_errors=True)
    os.environ["STEGO_LITE_CACHE"] = str(cache)
    read = paper_world.check(world)
    print(f"  miniature paper world {world.root}: {sum(read.values())} images in {len(read)} splits, DINO "
          f"weights, a released checkpoint ({time.perf_counter() - start:.1f} s); cache {cache} (empty)",
          flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="notebook names without .ipynb (default: all)")
    parser.add_argument("--profile", default="offline", choices=["offline", "paper"])
    parser.add_argument("--scale", default="full", choices=["full", "smoke"],
                        help="the profile's size (the notebooks' `scale` parameter)")
    parser.add_argument("--world", type=Path, help="build and use the miniature paper world in this folder")
    parser.add_argument("--out", type=Path, default=ROOT / "_build" / "executed")
    parser.add_argument("--timeout", type=int, default=1800, help="seconds per cell")
    args = parser.parse_args()
    names = args.names or sorted(p.stem for p in (ROOT / "notebooks").glob("*.ipynb"))
    if not names:
        print("no notebooks found under notebooks/", file=sys.stderr)
        return 1
    if args.world is not None:
        use_world(args.world.resolve(), args.out.resolve())
    times = execute(names, args.profile, args.out, args.timeout, scale=args.scale)
    lines = [f"{name}\t{seconds:.1f}" for name, seconds in times]
    (args.out / "times.tsv").write_text("notebook\tseconds\n" + "\n".join(lines) + "\n")
    print(f"  all notebooks: {sum(s for _, s in times):.1f} s (per notebook in {args.out / 'times.tsv'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
