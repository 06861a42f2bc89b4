"""Hard kills for the resume tests, armed from outside the library (production code carries no test hooks).

A process that dies mid-run without cleanup, as with SIGKILL, must leave only whole shards and whole records.
``python tests/killers.py VERB ...`` runs ``taskres VERB ...`` (also as torchrun's script) with these kills
armed by the environment; ``job_worker`` stands in for bench's local worker process (``--jobs``).
"""

from __future__ import annotations

import os
import sys

# "RANK:COUNT": that rank (or local job) dies, exit status 17, after COUNT cache shards / COUNT cell records
KILL_AFTER_SHARDS = "TASKRES_TEST_KILL_AFTER_SHARDS"
KILL_AFTER_CELLS = "TASKRES_TEST_KILL_AFTER_CELLS"


def kill_count(variable: str, rank: int) -> int | None:
    spec = os.environ.get(variable, "")
    if not spec:
        return None
    who, count = (int(x) for x in spec.split(":"))
    return count if who == rank else None


def _die() -> None:
    sys.stdout.flush()
    os._exit(17)  # no cleanup, no index, workers orphaned: as with SIGKILL


def arm_shards(rank: int) -> None:
    """Die after this process has written COUNT shards (FeatureCache.encode yields once per shard written)."""
    from taskres.features.cache import FeatureCache

    after = kill_count(KILL_AFTER_SHARDS, rank)
    if after is None:
        return
    encode = FeatureCache.encode

    def dying_encode(self, *args, **kwargs):
        for n, shard in enumerate(encode(self, *args, **kwargs), 1):
            yield shard
            if n >= after:
                _die()

    FeatureCache.encode = dying_encode


def arm_cells(rank: int) -> None:
    """Die after this process has written COUNT cell records of its own (ok or error)."""
    from taskres import bench

    after = kill_count(KILL_AFTER_CELLS, rank)
    if after is None:
        return
    run_owned_cell, written = bench._run_owned_cell, []

    def dying_run_owned_cell(*args, **kwargs):
        record = run_owned_cell(*args, **kwargs)
        if record["status"] in ("ok", "error"):  # not another process's cell
            written.append(record)
            if len(written) >= after:
                _die()
        return record

    bench._run_owned_cell = dying_run_owned_cell


def job_worker(job: int, *args) -> None:
    """bench's local worker (monkeypatched in as ``bench._job_worker``; spawned, so armed here in the child)."""
    from taskres import bench

    arm_cells(job)
    bench._job_worker(job, *args)


if __name__ == "__main__":
    rank = int(os.environ.get("RANK", 0))
    arm_shards(rank)
    arm_cells(rank)
    from taskres.cli import main

    sys.exit(main(sys.argv[1:]))
