#!/usr/bin/env bash
# Make sure a Chromium for the browser check exists: Debian's package, never a browser download.
# Where apt is unavailable (a reader's Mac, say), say so; the browser test then skips with a notice,
# except under CI (CI=true), where it fails.
set -u
for name in chromium chromium-browser google-chrome; do
  if command -v "$name" >/dev/null 2>&1; then
    echo "  browser: $(command -v "$name") ($("$name" --version 2>/dev/null | head -1))"
    exit 0
  fi
done
if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  echo "  installing Debian's chromium (apt-get, about 15 s) ..."
  apt-get update -qq >/dev/null && \
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null || {
      echo "  apt-get could not install chromium" >&2; exit 1; }
  echo "  installed: $(chromium --version)"
else
  echo "  NOTICE: no Chromium and no apt-get as root here; the browser check will be skipped" >&2
  echo "  (install Chromium yourself to run it; CI always runs it)." >&2
fi
