"""``taskres bench`` under torchrun: two gloo ranks on loopback share the cells, and the records are those of a
one-process sweep; a rank that dies leaves a sweep that resumes; ``--dry-run`` prints one list."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import TINY_MODEL
from killers import KILL_AFTER_CELLS
from test_bench import FAST, make_mixed_folder
from test_distributed import _free_port, entry

from taskres import bench, cli
from taskres.cli.bench import sweep_from_args
from taskres.protocols import expand

# Fields that say when, where and by whom a cell ran, not what it gave.
RUN_FIELDS = {"seconds", "finished", "rank", "world", "host"}
TIMING_METRICS = {"fit_seconds", "total_seconds"}


CELLS = 12  # 2 shot counts x 3 seeds x 2 methods


def sweep_argv(data: dict) -> list[str]:
    """One dataset's 6 splits: the ranks get 3 each and both encode the dataset's test split (one cache entry)
    at once. Relative paths, so that two sweeps in two folders write equal records."""
    return ["bench", "res", "--datasets", str(data["mixed"]),
            "--shots", "1", "2", "--seeds", "1", "2", "3", "--methods", "zeroshot", "taskres", "--quiet",
            "--backbone", TINY_MODEL, "--pretrained", "none", "--cache-dir", "cache", *FAST]


def torchrun(argv: list[str], cwd: Path, nproc: int = 2, extra_env: dict | None = None):
    env = {**os.environ, "TASKRES_CACHE": str(cwd / "home-cache"), "OMP_NUM_THREADS": "1", **(extra_env or {})}
    if Path("/sys/class/net/lo").exists():
        env["GLOO_SOCKET_IFNAME"] = "lo"  # stay on loopback
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc), "--master-addr",
           "127.0.0.1", "--master-port", str(_free_port()), *entry(extra_env), *argv]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=240)


def records(results: Path) -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text()) for p in sorted((results / "records").glob("*.json"))}


def outcome(record: dict) -> dict:
    """A record without the fields that name the run's time and place."""
    out = {k: v for k, v in record.items() if k not in RUN_FIELDS}
    out["metrics"] = {k: v for k, v in record["metrics"].items() if k not in TIMING_METRICS}
    return out


def one_process_sweep(data: dict, where: Path, monkeypatch) -> dict[str, dict]:
    """The reference: the same sweep in this process, on one thread as the ranks run."""
    monkeypatch.chdir(where)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        sweep, _ = sweep_from_args(cli.build_parser().parse_args(sweep_argv(data)))
        summary = bench.run_sweep(sweep, Path("res"), progress=False)
    finally:
        torch.set_num_threads(threads)
    assert summary.ok and len(summary.ran) == CELLS
    return records(where / "res")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return {"mixed": make_mixed_folder(tmp_path_factory.mktemp("distbench-data") / "mixed")}


@pytest.fixture(scope="module")
def reference(data, tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        return one_process_sweep(data, tmp_path_factory.mktemp("one"), mp)


def test_assign_cells_splits_by_shared_features_in_balanced_blocks():
    sweep, _ = sweep_from_args(cli.build_parser().parse_args(
        ["bench", "r", "--datasets", "a", "b", "c", "--shots", "1", "2", "--seeds", "1", "2", "3",
         "--methods", "zeroshot", "taskres", "coop", "--backbone", "RN50"]))
    cells = expand(sweep)
    assert bench.assign_cells(cells, 1) == [cells]
    for world in (2, 3, 4, 7, 40):
        shares = bench.assign_cells(cells, world)
        assert len(shares) == world
        assert [c for share in shares for c in share] == cells  # each cell once, in order: contiguous blocks
        owner = {c.name: r for r, share in enumerate(shares) for c in share}
        for c in cells:  # the methods of one split (one set of cache entries) stay on one rank
            assert owner[c.name] == owner[cells[cells.index(c) - cells.index(c) % 3].name]
        sizes = [len(s) for s in shares]
        assert max(sizes) - min(sizes) <= 3  # off by at most one split's cells
    # After a partial run only the leftovers are dealt out, over every rank.
    left = cells[::2]
    assert all(bench.assign_cells(left, 3))


def test_two_ranks_split_the_cells_and_write_the_records_of_one_process(data, reference, tmp_path):
    run = torchrun(sweep_argv(data), tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    two = records(tmp_path / "res")
    assert set(two) == set(reference) and len(two) == CELLS
    assert {r["world"] for r in two.values()} == {2}
    ranks = [r["rank"] for r in two.values()]
    assert sorted(set(ranks)) == [0, 1] and ranks.count(0) == ranks.count(1) == CELLS // 2  # both worked
    assert all(r["host"] for r in two.values())
    for name in two:
        # each cell's split holds both of its methods on one rank (they share the cache entries)
        assert two[name]["rank"] == two[name.replace("__zeroshot__", "__taskres__")]["rank"]
        assert outcome(two[name]) == outcome(reference[name]), name
    assert len({r["scores"]["top1"] for r in two.values()}) > 2, "all cells scored alike: equality tests little"
    # The summary is printed once (by rank 0, after every rank finished) and counts every rank's cells.
    assert run.stdout.count(f"bench: {CELLS} cell(s)") == 1
    assert f"0 already finished, {CELLS} run now, 0 failed" in run.stdout
    assert run.stdout.count("| taskres |") == 2  # the results table once: one row per shot count


def test_local_jobs_write_the_records_of_one_process(data, reference, tmp_path, monkeypatch, capsys):
    """``--jobs 2``: two spawned worker processes on this machine take the splits from one queue; the records
    are the one-process sweep's, each naming the job that ran it, and the summary counts every cell."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TASKRES_CACHE", str(tmp_path / "home-cache"))
    assert cli.main([*sweep_argv(data), "--jobs", "2"]) == 0
    assert f"0 already finished, {CELLS} run now, 0 failed" in capsys.readouterr().out
    two = records(tmp_path / "res")
    assert set(two) == set(reference)
    assert {r["world"] for r in two.values()} == {2} and all(r["local_jobs"] for r in two.values())
    assert {r["rank"] for r in two.values()} == {0, 1}  # both workers took splits
    for name in two:
        assert two[name]["rank"] == two[name.replace("__zeroshot__", "__taskres__")]["rank"]
        assert {k: v for k, v in outcome(two[name]).items() if k != "local_jobs"} == outcome(reference[name]), name
    # A second call finds everything done and starts no worker.
    assert cli.main([*sweep_argv(data), "--jobs", "2"]) == 0
    assert f"{CELLS} already finished, 0 run now" in capsys.readouterr().out


def test_jobs_must_be_positive_and_not_under_torchrun(data, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert cli.main([*sweep_argv(data), "--jobs", "0"]) != 0
    assert "--jobs must be at least 1" in capsys.readouterr().err


def test_a_rank_that_dies_fails_the_job_and_the_sweep_resumes(data, reference, tmp_path, monkeypatch, capsys):
    run = torchrun(sweep_argv(data), tmp_path, extra_env={KILL_AFTER_CELLS: "1:1"})
    assert run.returncode != 0
    left = records(tmp_path / "res")
    assert 1 <= len(left) < CELLS and all(r["status"] == "ok" for r in left.values())  # only whole records
    assert any(r["rank"] == 1 for r in left.values())
    # The same sweep, here on one process, runs only what is missing; the result is the reference.
    monkeypatch.chdir(tmp_path)
    assert cli.main(sweep_argv(data)) == 0
    assert f"{len(left)} already finished, {CELLS - len(left)} run now, 0 failed" in capsys.readouterr().out
    final = records(tmp_path / "res")
    assert {n: outcome(r) for n, r in final.items()} == {n: outcome(r) for n, r in reference.items()}


def test_dry_run_under_torchrun_prints_one_list_with_each_cells_rank(data, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    argv = [*sweep_argv(data), "--dry-run"]
    for rank in ("1", "0"):  # what torchrun's ranks see: rank 1 prints nothing, rank 0 the list
        monkeypatch.setenv("RANK", rank)
        monkeypatch.setenv("WORLD_SIZE", "2")
        assert cli.main(argv) == 0
        out = capsys.readouterr().out
        if rank == "1":
            assert out == ""
    lines = out.splitlines()
    assert len(lines) == CELLS and all(line.startswith("todo") for line in lines)
    assert sum(line.endswith("(rank 0)") for line in lines) == sum(line.endswith("(rank 1)") for line in lines) == 6
    assert not (tmp_path / "res").exists()  # a dry run writes nothing
