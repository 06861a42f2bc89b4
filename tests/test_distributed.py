"""``taskres extract`` under torchrun: two gloo ranks on loopback, a killed rank, a restart, then ``fit``."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import TINY_MODEL
from killers import KILL_AFTER_SHARDS
from taskres.api import FitConfig, fit
from taskres.cli import main
from taskres.datasets import load_dataset, make_fewshot_split
from taskres.features import FeatureCache, View

SHARD = 5  # the generated folder's few-shot lists span several shards of 5
EXTRACT = ["extract", "--backbone", TINY_MODEL, "--pretrained", "none", "--shard-size", str(SHARD),
           "--shots", "4", "--seed", "1", "--views", "2", "--quiet"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def entry(extra_env: dict | None) -> list[str]:
    """torchrun's program: ``-m taskres``, or the same through tests/killers.py when a kill is asked for."""
    return [str(Path(__file__).with_name("killers.py"))] if extra_env else ["-m", "taskres"]


def torchrun(args: list[str], tmp: Path, extra_env: dict | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "TASKRES_CACHE": str(tmp / "home-cache"), "OMP_NUM_THREADS": "1", **(extra_env or {})}
    if Path("/sys/class/net/lo").exists():
        env["GLOO_SOCKET_IFNAME"] = "lo"  # stay on loopback
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
           "--master-port", str(_free_port()), *entry(extra_env), *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)


def shard_stats(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_ino, p.stat().st_mtime_ns) for p in root.rglob("shard-*.npy")}


def planned(class_folder):
    task = load_dataset(str(class_folder))
    split = make_fewshot_split(task, 4, 1)
    return [(split.train, View("aug", v, 1)) for v in range(2)] + [(split.val, View()), (task.test, View())]


@pytest.fixture(scope="module")
def killed_then_resumed(class_folder, tmp_path_factory, tiny_backbone):
    """Rank 1 dies after its first shard; the same command is run again."""
    tmp = tmp_path_factory.mktemp("dist")
    root = tmp / "cache"
    args = [*EXTRACT, "--dataset", str(class_folder), "--cache-dir", str(root)]
    killed = torchrun(args, tmp, {KILL_AFTER_SHARDS: "1:1"})
    after_kill = shard_stats(root)
    cache = FeatureCache(root, shard_size=SHARD)
    entries = [cache.entry(tiny_backbone, samples, view) for samples, view in planned(class_folder)]
    at_kill = {"indexes": len(list(root.rglob("index.json"))), "total": sum(e.num_shards for e in entries),
               "missing": sum(len(cache.missing_shards(e)) for e in entries)}
    resumed = torchrun(args, tmp)
    return root, killed, after_kill, at_kill, resumed


def test_a_killed_rank_fails_the_job_and_leaves_only_whole_shards(killed_then_resumed):
    _, killed, after_kill, at_kill, _ = killed_then_resumed
    assert killed.returncode != 0
    assert at_kill["total"] >= 10 and 1 <= len(after_kill) < at_kill["total"]
    assert at_kill["indexes"] == 0  # no entry was declared complete
    assert at_kill["missing"] == at_kill["total"] - len(after_kill)  # every shard file present is whole


def test_the_restart_encodes_only_the_missing_shards(killed_then_resumed):
    root, _, after_kill, _, resumed = killed_then_resumed
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    now = shard_stats(root)
    assert {k: now[k] for k in after_kill} == after_kill  # finished shards untouched (same inode and mtime)
    # both ranks write to one pipe: their lines may run together, so match every report, not every line
    encoded = [int(n) for n in re.findall(r"encoded (\d+)", resumed.stdout)]
    assert len(encoded) == 2 and sum(encoded) == len(now) - len(after_kill)
    assert min(encoded) >= 1  # the leftovers were shared between both ranks
    assert not list(root.rglob("*.tmp"))


def test_two_rank_cache_equals_a_single_process_run(killed_then_resumed, class_folder, tiny_backbone):
    root, *_ = killed_then_resumed
    cache = FeatureCache(root, shard_size=SHARD)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the ranks ran: then the float results are bit for bit the same
    try:
        for samples, view in planned(class_folder):
            entry = cache.entry(tiny_backbone, samples, view)
            distributed = cache.open(entry)
            assert distributed is not None, f"entry {view} was not completed"
            single = FeatureCache(None, shard_size=SHARD).features(tiny_backbone, samples, view, progress=False)
            assert torch.equal(distributed.to_tensor(), single)
            index = json.loads(entry.index_path.read_text())
            assert index["first_image"] == samples[0].path and index["last_image"] == samples[-1].path
    finally:
        torch.set_num_threads(threads)


def test_fit_afterwards_finds_the_cache_filled(killed_then_resumed, class_folder, tiny_backbone):
    root, *_ = killed_then_resumed
    before = shard_stats(root)
    entries_before = sorted(p.name for p in root.glob("*/*"))
    cfg = FitConfig(dataset=str(class_folder), shots=4, seed=1, views=2, cache_dir=str(root), progress=False,
                    method_params={"epochs": 2})
    result = fit(cfg, backbone=tiny_backbone)
    assert result.metrics["num_train"] == 16
    assert sorted(p.name for p in root.glob("*/*")) == entries_before and shard_stats(root) == before


def test_without_torchrun_extract_runs_in_one_process(class_folder, tmp_path, capsys, killed_then_resumed):
    dist_root, *_ = killed_then_resumed
    args = [*EXTRACT, "--dataset", str(class_folder), "--cache-dir", str(tmp_path / "c")]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the ranks ran
    try:
        assert main(args) == 0
    finally:
        torch.set_num_threads(threads)
    out = capsys.readouterr().out
    assert "encoded 14 shard(s)" in out and "rank" not in out
    assert sorted(p.name for p in (tmp_path / "c").glob("*/*")) == sorted(p.name for p in dist_root.glob("*/*"))
    for index in (tmp_path / "c").rglob("index.json"):
        twin = dist_root / index.parent.relative_to(tmp_path / "c")
        for name in json.loads(index.read_text())["shards"]:
            assert np.array_equal(np.load(index.parent / name), np.load(twin / name))
    assert main(args) == 0
    assert "encoded 0 shard(s)" in capsys.readouterr().out


def test_extract_refuses_a_cache_dir_of_nothing(class_folder, capsys):
    assert main([*EXTRACT, "--dataset", str(class_folder), "--cache-dir", ""]) == 2
    assert capsys.readouterr().err.startswith("taskres: error: --cache-dir '' keeps no cache")
