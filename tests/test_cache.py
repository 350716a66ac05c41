"""The keyed cache behind every cache: keys, versions, checksums, locks, killed writers, moved data."""
from __future__ import annotations

import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from stego_lite import cache, features
from stego_lite.data import SynthStuffConfig


def counting(value):
    calls = []

    def compute():
        calls.append(1)
        return value
    return compute, calls


def test_digest_is_canonical_and_short():
    assert cache.digest({"a": 1, "b": (2, 3)}) == cache.digest({"b": [2, 3], "a": 1})
    assert cache.digest({"a": 1}) != cache.digest({"a": 2})
    assert len(cache.digest("x")) == 16
    assert cache.keyed_path(Path("/c"), "heads", {"a": 1}).name == f"heads-{cache.digest({'a': 1})}.pt"


def test_computed_once_then_read(tmp_path):
    path = tmp_path / "x.pt"
    compute, calls = counting({"t": torch.arange(5.0), "n": 3, "rows": [{"a": 1.5}]})
    first = cache.load_or_compute(path, {"k": 1}, compute, version=1)
    again = cache.load_or_compute(path, {"k": 1}, compute, version=1)
    assert len(calls) == 1
    assert torch.equal(again["t"], torch.arange(5.0)) and again["rows"] == [{"a": 1.5}] and first["n"] == 3


@pytest.mark.parametrize("change", ["spec", "version"])
def test_other_spec_or_version_is_recomputed(tmp_path, change):
    path = tmp_path / "x.pt"
    compute, calls = counting(torch.ones(3))
    cache.load_or_compute(path, {"k": 1}, compute, version=1)
    spec, version = ({"k": 2}, 1) if change == "spec" else ({"k": 1}, 2)
    cache.load_or_compute(path, spec, compute, version=version)
    assert len(calls) == 2


def test_garbled_bytes_of_the_same_size_are_detected(tmp_path):
    """A file whose structure is intact but whose tensor bytes changed is recomputed, not used."""
    path = tmp_path / "x.pt"
    value = torch.arange(4096, dtype=torch.float32)
    cache.load_or_compute(path, {"k": 1}, lambda: value, version=1)
    raw = bytearray(path.read_bytes())
    needle = value[1000:1004].numpy().tobytes()
    at = raw.find(needle)
    assert at > 0
    raw[at:at + 4] = torch.tensor([-1.0]).numpy().tobytes()
    path.write_bytes(bytes(raw))
    assert cache.read(path, {"k": 1}, version=1) is None
    compute, calls = counting(value)
    assert torch.equal(cache.load_or_compute(path, {"k": 1}, compute, version=1), value)
    assert len(calls) == 1


def test_truncated_or_foreign_file_is_recomputed(tmp_path):
    path = tmp_path / "x.pt"
    cache.load_or_compute(path, {"k": 1}, lambda: torch.ones(100), version=1)
    path.write_bytes(path.read_bytes()[:50])
    assert cache.read(path, {"k": 1}, version=1) is None
    torch.save({"something": "else"}, path)
    assert cache.read(path, {"k": 1}, version=1) is None


def _slow_writer(path: str, marker: str) -> None:
    def compute():
        Path(marker).write_text("computing")
        time.sleep(1.0)
        return torch.full((3,), float(os.getpid()))
    cache.load_or_compute(Path(path), {"k": 1}, compute, version=1)


def test_second_process_waits_and_reads_the_first_ones_result(tmp_path, capfd):
    path, marker = tmp_path / "x.pt", tmp_path / "computing"
    ctx = multiprocessing.get_context("spawn")
    first = ctx.Process(target=_slow_writer, args=(str(path), str(marker)))
    first.start()
    deadline = time.time() + 60
    while not marker.exists() and time.time() < deadline:
        time.sleep(0.05)
    compute, calls = counting(torch.zeros(3))
    value = cache.load_or_compute(path, {"k": 1}, compute, version=1)
    first.join(30)
    assert calls == [] and value[0].item() == first.pid
    err = capfd.readouterr().err
    assert f"pid {first.pid}" in err and "waiting for" in err, err


KILLED_WRITER = """
import sys, time, torch
from pathlib import Path
from stego_lite import cache
def slow_save(obj, tmp):   # a write that is caught half way
    Path(tmp).write_bytes(b"partial")
    Path(sys.argv[2]).write_text("writing")
    time.sleep(60)
torch.save = slow_save
cache.load_or_compute(Path(sys.argv[1]), {"k": 1}, lambda: torch.ones(2), version=1)
"""


def test_a_killed_writer_leaves_no_lock_and_its_temporary_file_is_removed(tmp_path):
    path, marker = tmp_path / "x.pt", tmp_path / "writing"
    proc = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(path), str(marker)])
    deadline = time.time() + 60
    while not marker.exists() and time.time() < deadline:
        time.sleep(0.05)
    assert list(tmp_path.glob(".x.pt.*.tmp")), "the writer was caught mid-write"
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    start = time.time()
    value = cache.load_or_compute(path, {"k": 1}, lambda: torch.ones(2), version=1)
    assert time.time() - start < 10, "the dead writer's lock did not block"
    assert torch.equal(value, torch.ones(2))
    assert not list(tmp_path.glob("*.tmp")), "the dead writer's temporary file was removed"


def test_feature_cache_key_does_not_depend_on_where_the_data_lie(tmp_path, monkeypatch):
    """Moving a dataset's folder keeps its feature key, so its cached features are reused."""
    from stego_lite.backbone import load_backbone

    monkeypatch.setenv("STEGO_LITE_CACHE", str(tmp_path / "cache"))
    config = SynthStuffConfig(image_size=32, n_train=4, n_val=2)
    here = config.dataset("val", root=tmp_path / "a")
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    there = config.dataset("val", root=tmp_path / "b")
    assert here.folder != there.folder
    bank = load_backbone("texture_bank")
    assert features.feature_key(bank, here) == features.feature_key(bank, there)
