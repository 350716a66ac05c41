"""torch.distributed on the CPU (gloo, 2 processes): every stage equals its one-process run on the same data.

The 2-process runs are real jobs: `python -m torch.distributed.run` (torchrun) for the stages, and ranks
started by hand with torchrun's variables where a test kills one or gives them different settings. The
one-process references run here, on one thread like torchrun's workers. The job is tests/distributed_job.py.
"""
from __future__ import annotations

import dataclasses
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import distributed_job as job
from stego_lite import distributed, features, sharded
from stego_lite import train as T
from stego_lite.__main__ import main

ROOT = Path(__file__).resolve().parents[1]
JOB = str(Path(job.__file__).resolve())
TIMEOUT = 20   # seconds: the collective timeout of the jobs


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def job_env(cache: Path, **extra: str) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
            "STEGO_LITE_CACHE": str(cache), "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "0",
            distributed.TIMEOUT_ENV: str(TIMEOUT), **extra}


def start_ranks(task: str, out: Path, cache: Path, extra_args=((), ())) -> list[subprocess.Popen]:
    """Two ranks started by hand, with the variables torchrun would set."""
    port = str(free_port())
    return [subprocess.Popen([sys.executable, JOB, task, str(out), *extra_args[r]], text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             env=job_env(cache, RANK=str(r), LOCAL_RANK=str(r), WORLD_SIZE="2",
                                         LOCAL_WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=port))
            for r in range(2)]


def finish(procs: list[subprocess.Popen], timeout: float = 120) -> list[tuple[int, str]]:
    return [(p.wait(timeout=timeout), p.communicate()[1]) for p in procs]


@pytest.fixture(scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)   # as torchrun's workers (OMP_NUM_THREADS=1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    """The stages job under torchrun with 2 processes: rank 0's results."""
    folder = tmp_path_factory.mktemp("two")
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                           "--master-addr", "127.0.0.1", "--master-port", str(free_port()), JOB, "stages",
                           str(folder / "out.pt")], env=job_env(folder / "cache"), capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return torch.load(folder / "out.pt", weights_only=True)


@pytest.fixture(scope="module")
def one_process(tmp_path_factory, one_thread):
    """The same job in this process."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("STEGO_LITE_CACHE", str(tmp_path_factory.mktemp("one")))
        return job.stages()


def stored(path: str) -> dict:
    return torch.load(path, weights_only=True)   # the whole record: spec, version, checksum, value


def test_feature_cache_equals_the_one_process_cache(two_ranks, one_process):
    two, one = stored(two_ranks["feature_file"]), stored(one_process["feature_file"])
    assert two["spec"] == one["spec"] and two["version"] == one["version"]
    assert two["checksum"] == one["checksum"]
    for name in ("feats", "labels"):
        assert two["value"][name].dtype == one["value"][name].dtype
        assert torch.equal(two["value"][name], one["value"][name]), name
    assert two["value"]["feats"].shape == (job.N_TRAIN, 8, 4, 4)
    assert not list(Path(two_ranks["feature_file"]).parent.glob("*.shards")), "shards are removed"


def test_knn_lists_are_identical(two_ranks, one_process):
    for name in ("knn_features", "knn_images"):   # from the feature cache, and from the backbone on images
        assert torch.equal(two_ranks[name], one_process[name]), name
    assert torch.equal(two_ranks["knn_features"][:, 0], torch.arange(job.N_TRAIN))


def test_training_matches_one_process_with_the_global_batch(two_ranks, one_process):
    assert len(two_ranks["history"]) == len(one_process["history"]) == 20
    for two, one in zip(two_ranks["history"], one_process["history"]):
        for name in ("loss", "self", "knn", "random", "probe/cluster", "probe/linear"):
            assert abs(two[name] - one[name]) < 1e-5, (two["step"], name, two[name], one[name])
    params = [(two_ranks["head"], one_process["head"])]
    params += [(two_ranks["probes"][k], one_process["probes"][k]) for k in ("cluster", "linear")]
    for two, one in params:
        for name in one:
            assert (two[name] - one[name]).abs().max() < 1e-5, name
    start = T.initial_head(job.CONFIG, 8).state_dict()   # the heads moved: not two copies of the initial one
    assert (one_process["head"]["linear.weight"] - start["linear.weight"]).abs().max() > 1e-3


def test_confusion_matrices_are_identical(two_ranks, one_process):
    for name in ("cluster_confusion", "linear_confusion"):
        assert torch.equal(two_ranks[name], one_process[name]), name
    labelled = sum(int((job.Images(job.N_VAL, "val")[i]["label"] >= 0).sum()) for i in range(job.N_VAL))
    assert int(two_ranks["linear_confusion"].sum()) == labelled


def test_a_killed_rank_stops_the_other_with_a_clear_error_and_the_rerun_resumes(tmp_path, one_thread):
    cache, out = tmp_path / "cache", tmp_path / "out.pt"
    checkpoint = cache / "slow-run" / T.CHECKPOINT
    procs = start_ranks("slow-train", out, cache)
    deadline = time.monotonic() + 120
    while not checkpoint.is_file() and time.monotonic() < deadline and procs[0].poll() is None:
        time.sleep(0.05)
    assert checkpoint.is_file(), finish(procs)[0][1][-3000:]
    procs[1].send_signal(signal.SIGKILL)
    killed = time.monotonic()
    (code, err), _ = finish(procs, timeout=TIMEOUT + 30)
    assert time.monotonic() - killed < TIMEOUT + 5
    assert code != 0 and "error on rank 0" in err and "died or hung" in err, err[-3000:]
    assert "Traceback" not in err, "one clear line, not a traceback"
    stopped_at = torch.load(checkpoint, weights_only=True)["step"]
    assert 0 < stopped_at < 60

    results = finish(start_ranks("slow-train", out, cache))
    assert all(code == 0 for code, _ in results), results[0][1][-3000:] + results[1][1][-3000:]
    resumed = torch.load(out, weights_only=True)
    assert resumed["start"] >= stopped_at and resumed["steps"] == 60
    with pytest.MonkeyPatch.context() as mp:   # the same 60 iterations in one process, uninterrupted
        mp.setenv("STEGO_LITE_CACHE", str(tmp_path / "one"))
        straight = T.train(dataclasses.replace(job.CONFIG, steps=60), job.source(), progress=False)
    for name, value in straight.head.state_dict().items():
        assert (resumed["head"][name] - value).abs().max() < 1e-5, name


def test_ranks_with_different_settings_are_refused(tmp_path):
    results = finish(start_ranks("seed-per-rank", tmp_path / "out.pt", tmp_path / "cache"))
    for code, err in results:
        assert code == 1 and "different settings for training" in err, err[-3000:]
        assert "rank 1: config.seed=1 (rank 0: 0)" in err, err[-3000:]


def test_ranks_started_with_different_commands_are_refused_at_start(tmp_path):
    results = finish(start_ranks("stages", tmp_path / "out.pt", tmp_path / "cache", ((), ("--seed=1",))))
    code, err = results[0]
    assert code == 1 and "different settings for the job" in err and "rank 1: command=" in err, err[-3000:]
    assert not (tmp_path / "cache").exists(), "nothing was computed"


def test_an_interrupted_sharded_extraction_resumes_from_finished_shards(tmp_path, monkeypatch, one_thread):
    monkeypatch.setenv("STEGO_LITE_CACHE", str(tmp_path / "one"))
    expected = features.cached_features(job.TinyBackbone(), job.Images(job.N_TRAIN, "train"),
                                        batch_size=job.BATCH)
    monkeypatch.setenv("STEGO_LITE_CACHE", str(tmp_path / "sharded"))
    backbone, data, calls = job.TinyBackbone(), job.Images(job.N_TRAIN, "train"), []
    forward = backbone.forward

    def counted(img, fail_at=None):
        calls.append(len(img))
        if len(calls) == fail_at:
            raise KeyboardInterrupt("stopped in the second shard")
        return forward(img)

    assert sharded.shard_size(job.N_TRAIN, job.BATCH) == job.BATCH   # 20 shards of one batch: 40 < 64 x 2
    backbone.forward = lambda img: counted(img, fail_at=9)   # stops in the 9th shard
    with pytest.raises(KeyboardInterrupt):
        sharded.cached_features(backbone, data, batch_size=job.BATCH)
    folder = sharded.shards_folder(expected.key, "features")
    assert sorted(p.name for p in folder.glob("*.pt")) == [f"{i:09d}-{i + 2:09d}.pt" for i in range(0, 16, 2)]
    calls.clear()
    backbone.forward = counted
    got = sharded.cached_features(backbone, data, batch_size=job.BATCH)
    assert sum(calls) == job.N_TRAIN - 16, "the finished shard was not computed again"
    assert torch.equal(got.feats, expected.feats) and torch.equal(got.labels, expected.labels)
    assert not folder.exists()


def test_row_ranges_split_whole_blocks_in_order(monkeypatch):
    monkeypatch.setattr(distributed, "world_size", lambda: 3)
    for n, block in [(40, 16), (100, 7), (5, 8), (0, 4)]:
        ranges = [distributed.row_range(n, block, r) for r in range(3)]
        assert ranges[0][0] == 0 and ranges[-1][1] == n
        assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:])), "contiguous, in rank order"
        assert all(lo % block == 0 for lo, hi in ranges if hi > lo), "never splits a block"


def test_one_process_helpers_are_the_identity():
    assert not distributed.active() and distributed.world_size() == 1 and distributed.is_main()
    t = torch.arange(6)
    assert distributed.all_reduce_sum(t) is t and distributed.all_gather_rows(t, 6, 4) is t
    distributed.check_same({"anything": 1}, "nothing")   # no other rank to disagree


def test_commands_that_do_not_split_refuse_torchrun(monkeypatch, capsys):
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(SystemExit, match="synthstuff runs in one process; start it without torchrun"):
        main(["synthstuff", "--n-train", "2"])


def test_a_bad_timeout_is_named(monkeypatch):
    monkeypatch.setenv(distributed.TIMEOUT_ENV, "soon")
    with pytest.raises(ValueError, match="STEGO_LITE_DIST_TIMEOUT='soon' is not a number"):
        distributed.timeout()
