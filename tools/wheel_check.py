"""Build stego_lite's sdist and wheel, install the wheel into fresh virtual environments, and use it there.

    python tools/wheel_check.py [--out _build/wheel-check] [--skip-colab]

1. `python -m build`: the sdist, then the wheel built from that sdist (so the sdist is complete).
2. "fresh": a new venv (no system site-packages) gets the wheel and nothing else: pip resolves only
   pyproject.toml's loose dependencies (not requirements.txt).
3. "colab": a new venv that already holds another torch (2.13.0 with torchvision 0.28.0, as Colab holds
   its own) gets the wheel the way the chapters' install cell installs it; torch must stay as it was.

In each venv, from a folder outside the clone (so the installed package is the one imported):
`python -m stego_lite --help`, then `segment` of two small images with a model file made there (a
texture_bank model with a random head: what is checked is the install, not the model). Every step's
wall time is printed; any failure exits non-zero.

Disk: each venv is checked for room before it is made, and removed as soon as it has been used (kept only
when its check failed, to look into). On x86_64 the fresh venv holds a CUDA build of torch, several GB.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COLAB_TORCH = ("torch==2.13.0", "torchvision==0.28.0")   # an older pair than requirements.txt's pins
# Room a venv needs, in GB: the larger size measured here (fresh 6.3 on x86_64, torch 2.14.1's CUDA build)
# plus a margin for pip's temporary files. The colab venv took 1.5 here, where pip finds a CPU build of
# torch 2.13.0 on disk; from PyPI it would be a CUDA build of the fresh one's size.
VENV_NEEDS_GB = 7.5

MAKE_MODEL = """
import sys
from pathlib import Path
import stego_lite as sl
from PIL import Image
from stego_lite.head import SegmentationHead
from stego_lite.probes import ClusterProbe, LinearProbe

assert Path(sl.__file__).resolve().is_relative_to(Path(sys.prefix).resolve()), sl.__file__
backbone = sl.backbone.load_backbone("texture_bank")
from stego_lite.data.scenes import CLASSES as classes
K = len(classes)
model = sl.evaluate.StegoModel(backbone, SegmentationHead(backbone.embed_dim, 8), ClusterProbe(8, K),
                               LinearProbe(8, K), classes, res=64)
sl.evaluate.save_model(model, "model.pt")
Path("images").mkdir()
for i in range(2):
    image, _ = sl.data.synthstuff_sample(0, "val", i, 64)
    Image.fromarray(image).save(f"images/{i}.png")
import torch
print(f"stego_lite {sl.__version__} from {Path(sl.__file__).parent}, torch {torch.__version__}")
"""


def run(args: list[str], *, cwd: Path | None = None, what: str) -> str:
    """Run a command with a clean environment (no PYTHONPATH), print its time; raise on failure."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    start = time.perf_counter()
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    print(f"  {what}: {seconds:.1f} s{'' if done.returncode == 0 else f' FAILED ({done.returncode})'}",
          flush=True)
    if done.returncode != 0:
        print(done.stdout[-4000:] + done.stderr[-4000:], file=sys.stderr)
        raise SystemExit(f"wheel check failed at: {what}")
    return done.stdout


def build(out: Path) -> Path:
    dist = out / "dist"
    shutil.rmtree(dist, ignore_errors=True)
    run([sys.executable, "-m", "build", "--outdir", str(dist), str(ROOT)], what="build sdist and wheel")
    wheels, sdists = sorted(dist.glob("*.whl")), sorted(dist.glob("*.tar.gz"))
    if len(wheels) != 1 or len(sdists) != 1:
        found = [p.name for p in dist.iterdir()]
        raise SystemExit(f"expected one wheel and one sdist in {dist}, found {found}")
    print(f"  built {sdists[0].name} and {wheels[0].name}")
    return wheels[0]


def versions(python: Path) -> dict[str, str]:
    code = ("import importlib.metadata as m, json; print(json.dumps({d: m.version(d) for d in "
            "('torch', 'torchvision') if __import__('importlib.util').util.find_spec(d)}))")
    return json.loads(run([str(python), "-c", code], what="read the installed torch version").strip())


def use(python: Path, work: Path) -> None:
    """`--help` and a tiny `segment` with the installed stego_lite, from a folder outside the clone."""
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    run([str(python), "-m", "stego_lite", "--help"], cwd=work, what="python -m stego_lite --help")
    made = run([str(python), "-c", MAKE_MODEL], cwd=work, what="make a model file and two images")
    print("  " + made.strip())
    run([str(python), "-m", "stego_lite", "segment", "--checkpoint", "model.pt", "--images", "images",
         "--out", "masks", "--no-progress", "--device", "cpu"], cwd=work, what="python -m stego_lite segment")
    written = sorted(p.name for p in (work / "masks").iterdir())
    if len(written) != 8:
        raise SystemExit(f"segment wrote {written}, expected 4 PNG files per image")


def require_room(folder: Path, need_gb: float, what: str) -> None:
    """Stop with the figures and the fix when the disk under `folder` has less than `need_gb` free."""
    free_gb = shutil.disk_usage(folder).free / 1e9
    if free_gb < need_gb:
        raise SystemExit(f"wheel check: the {what} venv needs about {need_gb:.1f} GB free in {folder}, but "
                         f"only {free_gb:.1f} GB are free. Free some disk space (old clones, caches, "
                         f"_build folders), or give --out a folder on a disk with room.")


def size_gb(folder: Path) -> float:
    """Bytes under `folder` (each file once, links not followed), in GB."""
    seen, total = set(), 0
    for path in folder.rglob("*"):
        info = path.lstat()   # one call per entry; a symlink's own mode is not S_ISREG
        if stat.S_ISREG(info.st_mode) and (info.st_dev, info.st_ino) not in seen:
            seen.add((info.st_dev, info.st_ino))
            total += info.st_size
    return total / 1e9


def venv(path: Path, what: str) -> Path:
    """A new venv at `path` (main has removed any earlier one), if the disk has room for it."""
    require_room(path.parent, VENV_NEEDS_GB, what)
    run([sys.executable, "-m", "venv", str(path)], what=f"{what}: create the venv")
    return path / "bin" / "python"


def done_with(path: Path) -> None:
    print(f"  {path.name}: {size_gb(path):.1f} GB of files, removed", flush=True)
    shutil.rmtree(path)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "_build" / "wheel-check")
    parser.add_argument("--skip-colab", action="store_true", help="skip the venv with an older torch")
    args = parser.parse_args()
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    for stale in ("venv-fresh", "venv-colab"):   # kept by an earlier failed check; several GB each
        shutil.rmtree(out / stale, ignore_errors=True)
    wheel = build(out)
    pip = ["-m", "pip", "install", "-q", "--disable-pip-version-check"]

    python = venv(out / "venv-fresh", "fresh")
    run([str(python), *pip, str(wheel)], what="fresh: pip install the wheel (loose dependencies)")
    print(f"  fresh: installed {versions(python)}")
    use(python, out / "run-fresh")
    done_with(out / "venv-fresh")

    if not args.skip_colab:
        python = venv(out / "venv-colab", "colab")
        run([str(python), *pip, *COLAB_TORCH], what=f"colab: preinstall {' '.join(COLAB_TORCH)}")
        before = versions(python)
        run([str(python), *pip, f"stego_lite @ {wheel.as_uri()}"],
            what="colab: pip install as the install cell does")
        after = versions(python)
        if after != before:
            raise SystemExit(f"installing stego_lite changed torch: {before} -> {after}")
        print(f"  colab: torch kept at {after}")
        use(python, out / "run-colab")
        done_with(out / "venv-colab")
    print("wheel check passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
