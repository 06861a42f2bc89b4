"""What taskres promises when processes meet on one results folder: a bench cell has one owner at a time, so
two identical sweeps share the cells, both end with every record "ok", and no error record ever replaces an
"ok" one; a --jobs worker that dies is named in the summary, not only its cells' missing records."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time

import killers
from kit import TINY, colours  # noqa: F401 (fixtures)

from taskres import bench
from taskres.atomic import lock_owner, release_lock, try_lock
from taskres.cli import build_parser, main
from taskres.cli.bench import sweep_from_args


def bench_args(results, colours, *extra, seeds=("1", "2", "3"), methods=("zeroshot",)):
    return ["bench", str(results), "--datasets", str(colours), "--methods", *methods, "--shots", "1",
            "--seeds", *seeds, *TINY, "--views", "1", "--quiet", *extra]


def records(results) -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text()) for p in sorted((results / "records").glob("*.json"))}


def test_a_cell_another_process_owns_is_left_to_it_and_its_record_kept(colours, tmp_path, capsys):
    results = tmp_path / "results"
    sweep, _ = sweep_from_args(build_parser().parse_args(bench_args(results, colours)))
    cells = bench.expand(sweep)
    theirs = cells[1]
    fd = try_lock(bench.lock_path(results, theirs))  # "another process" (flock: another descriptor conflicts)
    assert fd is not None and try_lock(bench.lock_path(results, theirs)) is None
    assert lock_owner(bench.lock_path(results, theirs)) == f"{os.getpid()}@" + lock_owner(
        bench.lock_path(results, theirs)).split("@")[1]
    outcome = {}
    sweeper = threading.Thread(target=lambda: outcome.update(summary=bench.run_sweep(sweep, results, progress=False)))
    sweeper.start()
    deadline = time.time() + 60
    while set(records(results)) != {cells[0].name, cells[2].name} and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)
    assert sweeper.is_alive()  # the others are done; it waits for the owner's record of the last one
    assert set(records(results)) == {cells[0].name, cells[2].name}
    ok = {"status": "ok", "key": theirs.key(sweep), "scores": {"top1": 12.5}, "by": "the owner"}
    (results / "records" / f"{theirs.name}.json").write_text(json.dumps(ok))
    release_lock(fd)
    sweeper.join(timeout=60)
    assert not sweeper.is_alive() and outcome["summary"].ok
    assert records(results)[theirs.name] == ok  # never run again, never replaced
    assert not (results / "runs" / theirs.name).exists()


def test_two_identical_sweeps_at_once_both_end_ok(colours, tmp_path):
    results = tmp_path / "results"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    args = [sys.executable, "-m", "taskres", *bench_args(results, colours, seeds="123")]
    procs = [subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    got = records(results)
    assert len(got) == 3 and all(r["status"] == "ok" for r in got.values())
    assert sorted(p.name for p in (results / "runs").iterdir()) == sorted(got)  # no leftovers beside the runs


def test_a_dead_local_worker_is_named_in_the_summary(colours, tmp_path, capsys, monkeypatch):
    results = tmp_path / "results"
    monkeypatch.setenv(killers.KILL_AFTER_CELLS, "0:1")  # job 0 dies after the first cell of its first split
    monkeypatch.setattr(bench, "_job_worker", killers.job_worker)  # spawned: armed in the child
    two = {"seeds": ("1", "2"), "methods": ("zeroshot", "zeroshot_ens")}
    assert main(bench_args(results, colours, "--jobs", "2", **two)) == 1
    out = capsys.readouterr().out
    assert "note: worker taskres-job-0 (pid" in out and "died with exit status 17" in out, out
    assert "no readable record" in out
    monkeypatch.delenv(killers.KILL_AFTER_CELLS)
    assert main(bench_args(results, colours, **two)) == 0  # the same command finishes them
    assert all(r["status"] == "ok" for r in records(results).values()) and len(records(results)) == 4
