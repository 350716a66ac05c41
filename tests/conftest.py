import atexit
import os
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))  # tests import shared fixtures from sibling test modules

# The tests write datasets, features, KNN lists and runs into a cache of their own, never into the user's
# ($STEGO_LITE_CACHE or ~/.cache/stego_lite), where the book would then read what a test left behind.
# $STEGO_LITE_TEST_CACHE names a folder to keep between runs (faster reruns); otherwise a temporary one
# is made and removed at the end.
if os.environ.get("STEGO_LITE_TEST_CACHE"):
    os.environ["STEGO_LITE_CACHE"] = os.environ["STEGO_LITE_TEST_CACHE"]
else:
    _cache = tempfile.mkdtemp(prefix="stego-lite-tests-")
    os.environ["STEGO_LITE_CACHE"] = _cache
    atexit.register(shutil.rmtree, _cache, ignore_errors=True)
