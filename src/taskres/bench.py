"""``taskres bench``: a protocol's sweep as one resumable command, one result record per cell.

    taskres bench results/ --preset paper --data-root /data
    taskres bench results/ --datasets caltech101 dtd --shots 1 16 --seeds 1 2 3 --methods zeroshot taskres
    taskres bench results/ --config sweep.yaml --protocol base2new

Each finished cell writes ``RESULTS/records/<backbone>__<dataset>__<method>__<K>shot__seed<S>.json``
(atomically, the moment it finishes) and its run folder ``RESULTS/runs/<same name>/``. A restarted sweep
skips the cells whose record says "ok" and runs the rest; a failing cell gets an error record and the
sweep goes on. ``taskres report RESULTS`` turns the records into tables and figures.

Across processes and machines (torchrun sets RANK and WORLD_SIZE; the ranks talk over gloo, on loopback or
the rendezvous network, and only to wait for each other)::

    torchrun --nproc-per-node 8 -m taskres bench results/ --preset paper --data-root /data --device cuda
    torchrun --nnodes 2 --node-rank 0 --nproc-per-node 8 --rdzv-backend c10d --rdzv-endpoint HOST:29400 \\
        -m taskres bench results/ ...   # RESULTS and --cache-dir on a filesystem every node shares

On one machine without torchrun, ``--jobs N`` runs the cells in N local worker processes, each with its
share of the cores (small models on a CPU: two 1-thread processes do about twice the work of one 2-thread
process); the workers take runs of cells from one queue.

Every rank reads the records' state, then (after a barrier, so that no rank has written yet) takes its
share of the unfinished cells: the cells are cut into runs that share features (same backbone, dataset,
shots and seed: the methods of one split) and those runs are dealt out as contiguous blocks of about equal
size, so each rank encodes its own splits and loads as few backbones as it can. A cell's result does not
depend on the rank that ran it, so the records are those of a one-process sweep, plus the rank and host
that wrote each. Two ranks may still encode one cache entry at once (a test split that two blocks share):
each shard is written atomically and holds the same rows whoever wrote it, so the second writer only
repeats work. After a last barrier, rank 0 prints the summary of every rank's cells. A rank that dies
makes torchrun stop the others; the same command then resumes from the records.

A cell has one owner at a time: a process runs it only while it holds the cell's lock
(``RESULTS/locks/<name>.lock``, an flock the kernel drops when its process ends), and skips a cell another
process holds, waiting for that cell's record before its summary. Two identical sweeps on one folder so
share the cells, and never run one cell twice (the loser's error record replacing the winner's "ok").
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import time
import traceback
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import torch

from .api import make_cache, versions
from .atomic import atomic_folder, lock_owner, read_json, release_lock, try_lock, wait_for_lock, write_json_atomic
from .backbone import load_backbone
from .datasets import TaskData, load_dataset
from .process_group import Group, rank_device
from .cli.commands import bench_command
from .protocols import PAPER_METHODS, PROTOCOL_RUNNERS, Cell, CellEnv, SweepConfig, dataset_label, expand

log = logging.getLogger("taskres")
RECORD_FORMAT = 1


def _component(name: str) -> str:
    """A cell's name as one path component inside the results folder (its parts are sanitised; this guards)."""
    if not name or name in (".", "..") or "/" in name or "\\" in name or "\0" in name:
        raise ValueError(f"cell name {name!r} is not a plain file name; it would leave the results folder")
    return name


def record_path(results_dir: Path, cell: Cell) -> Path:
    return Path(results_dir) / "records" / f"{_component(cell.name)}.json"


def run_path(results_dir: Path, cell: Cell) -> Path:
    return Path(results_dir) / "runs" / _component(cell.name)


def lock_path(results_dir: Path, cell: Cell) -> Path:
    """The cell's owner file while a process runs it (two sweeps on one results folder never run one cell)."""
    return Path(results_dir) / "locks" / f"{_component(cell.name)}.lock"


def cell_status(results_dir: Path, cell: Cell, sweep: SweepConfig) -> str:
    """'todo' (no record), 'done', 'failed', or 'changed' (a record made with other settings)."""
    path = record_path(results_dir, cell)
    if not path.is_file():
        return "todo"
    try:
        record = read_json(path)
    except (OSError, ValueError):
        log.warning("%s is unreadable; its cell will be run again", path)
        return "todo"
    if record.get("key") != cell.key(sweep):
        return "changed"
    return "done" if record.get("status") == "ok" else "failed"


@dataclass
class BenchSummary:
    results_dir: Path
    cells: list[Cell]
    skipped: list[str] = field(default_factory=list)  # finished before this run
    ran: list[str] = field(default_factory=list)  # finished now
    failed: dict[str, str] = field(default_factory=dict)  # name -> one-line error
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)  # what else the user must hear (a worker that died, ...)

    @property
    def ok(self) -> bool:
        return not self.failed


class _Tasks:
    """Each dataset read once per sweep; a dataset that cannot be read fails each of its cells alike."""

    def __init__(self, data_root: str | None):
        self.data_root = data_root
        self._tasks: dict[str, TaskData | Exception] = {}

    def __call__(self, name: str) -> TaskData:
        if name not in self._tasks:
            try:
                self._tasks[name] = load_dataset(name, self.data_root)
            except Exception as exc:  # noqa: BLE001 - remembered, re-raised in every cell that needs it
                self._tasks[name] = exc
        task = self._tasks[name]
        if isinstance(task, Exception):
            raise task
        return task


def assign_cells(pending: list[Cell], world: int) -> list[list[Cell]]:
    """Each rank's cells: runs of cells that share features, dealt out as contiguous blocks of about equal size.

    A run is the cells of one (backbone, dataset, shots, seed), i.e. the methods of one few-shot split, which
    read the same cache entries; ``pending`` is in ``expand``'s order, so a block also keeps a dataset's
    splits (and their shared test split) together on as few ranks as possible. Pure: every rank computes
    the same answer from the same records.
    """
    if world < 1:
        raise ValueError(f"WORLD_SIZE must be at least 1, not {world}")
    shares: list[list[Cell]] = [[] for _ in range(world)]
    rank, taken = 0, 0
    for run in _feature_runs(pending):
        # the block of rank r ends once the cells dealt reach (r + 1) / world of the total
        while rank < world - 1 and taken >= (rank + 1) * len(pending) / world:
            rank += 1
        shares[rank].extend(run)
        taken += len(run)
    return shares


def run_sweep(sweep: SweepConfig, results_dir: str | Path, *, progress: bool = True, inner_progress: bool = False,
              retry_failed: bool = True, redo_changed: bool = False,
              on_cell_done: Callable[[Cell, dict], None] | None = None, group: Group | None = None,
              jobs: int = 1) -> BenchSummary:
    """Run every cell of ``sweep`` that has no finished record in ``results_dir``.

    ``group``: this process's place in a torchrun job (started; see ``cmd_bench``); it runs its share of the
    cells (``assign_cells``), and the summary it returns covers every rank's cells. ``on_cell_done(cell,
    record)`` is called after each record this process writes (progress hooks, tests). ``jobs`` > 1 (one
    process, no torchrun): the cells run in that many local worker processes (``_run_local_jobs``), each
    with its share of the cores; ``on_cell_done`` is then not called.
    """
    from tqdm.auto import tqdm

    group = group or Group()
    started = time.time()
    results_dir = Path(results_dir)
    cells = expand(sweep)
    status = {c.name: cell_status(results_dir, c, sweep) for c in cells}
    changed = [n for n, s in status.items() if s == "changed"]
    if changed and not redo_changed:
        raise ValueError(
            f"{record_path(results_dir, next(c for c in cells if c.name == changed[0]))} was made with other "
            f"settings than this sweep ({len(changed)} such record(s)); use another results folder, or pass "
            "--redo-changed to replace them")
    todo_states = {"todo", "changed"} | ({"failed"} if retry_failed else set())
    pending = [c for c in cells if status[c.name] in todo_states]
    summary = BenchSummary(results_dir, cells, skipped=[c.name for c in cells if status[c.name] == "done"])
    group.barrier()  # every rank has read the records' state before any rank writes one
    mine = assign_cells(pending, group.world)[group.rank]
    if group.rank == 0:
        write_json_atomic(results_dir / "sweep.json", {"sweep": sweep.to_dict(), "versions": versions()})
    prefix = f"rank {group.rank}/{group.world}: " if group.world > 1 else ""
    total, initial = (len(mine), 0) if group.world > 1 else (len(cells), len(cells) - len(pending))
    bar = tqdm(total=total, initial=initial,
               desc=f"bench {sweep.protocol}" + (f" (rank 0/{group.world})" if group.world > 1 else ""),
               unit="cell", disable=not progress or group.rank != 0, dynamic_ncols=True)

    busy: list[Cell] = []  # cells another process owned when this one came to them

    def done(cell: Cell, status: str, message: str | None) -> None:
        if status == "busy":
            busy.append(cell)
            bar.write(f"taskres: {prefix}cell {cell.name} is {message}; its record is waited for")
        elif status == "error":
            bar.write(f"taskres: {prefix}cell {cell.name} failed: {message}")
        bar.update(1)

    try:
        if jobs > 1 and group.world == 1:
            summary.notes += _run_local_jobs(sweep, results_dir, mine, jobs, inner_progress, done)
        else:
            where = {"rank": group.rank, "world": group.world, "host": socket.gethostname()}
            envs = _Envs(sweep, inner_progress, group)
            for cell in mine:
                bar.set_postfix_str(cell.name)
                env, load_error = envs.get(cell.backbone, bar)
                record = _run_owned_cell(cell, env, results_dir, load_error, where)
                done(cell, record["status"], (record.get("error") or {}).get("message"))
                if record["status"] not in ("ok", "error"):
                    continue  # another process's cell
                if on_cell_done is not None:
                    on_cell_done(cell, record)
            del envs
        _wait_for_owners(results_dir, busy)
    finally:
        bar.close()
    if group.world > 1:
        group.barrier()  # every rank's records are on disk
    summary.ran, summary.failed = _outcomes(results_dir, pending)  # what the records say, every rank's
    summary.seconds = time.time() - started
    return summary


class _Envs:
    """The cells' environment per backbone: each backbone loaded when its first cell comes, one held at a
    time (the cells come backbone by backbone). A backbone that fails to load fails each of its cells."""

    def __init__(self, sweep: SweepConfig, inner_progress: bool, group: Group | None = None):
        self.sweep, self.inner_progress, self.group = sweep, inner_progress, group or Group()
        self.tasks = _Tasks(sweep.data_root)
        self.cache = make_cache(sweep.cache_dir, verify=sweep.verify_cache)
        self.spec, self.env, self.error = None, None, None

    def get(self, spec, bar=None):
        if spec != self.spec:
            self.env = None  # the previous backbone goes before the next one is loaded
            if bar is not None:
                bar.set_postfix_str(f"loading {spec.display}")
            bcfg = spec.config()
            bcfg = replace(bcfg, device=rank_device(bcfg.device, self.group))  # plain cuda: this rank's GPU
            try:
                backbone, self.error = load_backbone(bcfg), None
            except Exception as exc:  # noqa: BLE001 - each of its cells gets the error record
                backbone, self.error = None, exc
            self.env = CellEnv(self.sweep, backbone, self.cache, self.tasks, progress=self.inner_progress)
            self.spec = spec
        return self.env, self.error


def _run_owned_cell(cell: Cell, env: CellEnv, results_dir: Path, load_error: Exception | None,
                    where: dict | None = None) -> dict:
    """Run a cell as its owner (``_run_cell``); {"status": "busy"} while another process owns it, and
    {"status": "done"} when another process finished it since this sweep read the records.

    Two identical sweeps on one results folder would otherwise run a cell twice, and the loser's error
    (its run folder renamed over the winner's) replace the winner's "ok" record."""
    lock = lock_path(results_dir, cell)
    fd = try_lock(lock)
    if fd is None:
        return {"status": "busy", "error": {"message": f"being run by {lock_owner(lock) or 'another process'} "
                                                       f"(owner file {lock})"}}
    try:
        if cell_status(results_dir, cell, env.sweep) == "done":
            return {"status": "done"}
        return _run_cell(cell, env, results_dir, load_error, where)
    finally:
        release_lock(fd)


def _wait_for_owners(results_dir: Path, cells: list[Cell]) -> None:
    """Wait until the processes that owned ``cells`` are done with them (or died: their cells then have no
    record and count as failed), so that the summary is of the whole sweep."""
    for cell in cells:
        wait_for_lock(lock_path(results_dir, cell))


def _feature_runs(cells: list[Cell]) -> list[list[Cell]]:
    """Cells grouped into runs that read the same features: one (backbone, dataset, shots, seed) each."""
    runs: dict[tuple, list[Cell]] = {}
    for c in cells:
        runs.setdefault((c.backbone.display, c.dataset, c.shots, c.seed), []).append(c)
    return list(runs.values())


def _usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def default_jobs() -> int:
    """Local worker processes for the demo: one per usable core, at most 4."""
    return max(1, min(_usable_cores(), 4))


def _run_local_jobs(sweep: SweepConfig, results_dir: Path, cells: list[Cell], jobs: int, inner_progress: bool,
                    done: Callable[[Cell, str, str | None], None]) -> list[str]:
    """Run ``cells`` in ``jobs`` worker processes on this machine, each with its share of the cores.

    The workers take runs of cells that share features (``_feature_runs``) from one queue, the next free
    worker the next run, so long and short runs balance themselves. Each cell's record is written by the
    worker that ran it, as in a one-process sweep (plus its job number as the rank). Processes are spawned,
    not forked: a fork of a process whose thread pools are running can hang. Returns one line per worker
    that died (its unfinished cells have no record)."""
    import multiprocessing as mp
    import queue as queue_module

    # Longest first (more shots, more steps), so that no long run is left for the end with the other
    # workers idle; runs of one shot count keep expand's order (a dataset's splits together).
    runs = sorted(_feature_runs(cells), key=lambda run: -run[0].shots)
    by_name = {c.name: c for c in cells}
    tasks = _Tasks(sweep.data_root)
    for name in dict.fromkeys(c.dataset for c in cells):  # generated datasets are written once, here
        try:
            tasks(name)
        except Exception:  # noqa: BLE001 - each worker's cells of that dataset record the error
            pass
    jobs = min(jobs, len(runs))
    if jobs < 1:
        return []
    threads = max(1, _usable_cores() // jobs)
    ctx = mp.get_context("spawn")
    todo, results = ctx.Queue(), ctx.Queue()
    for run in runs:
        todo.put([c.name for c in run])
    for _ in range(jobs):
        todo.put(None)
    # not daemonic: a worker may start processes of its own (image decoding workers); it is stopped below
    workers = [ctx.Process(target=_job_worker, daemon=False, name=f"taskres-job-{j}",
                           args=(j, jobs, threads, sweep, str(results_dir), by_name, inner_progress, todo, results))
               for j in range(jobs)]
    for w in workers:
        w.start()
    finished = 0
    try:
        while finished < jobs:
            try:
                message = results.get(timeout=1.0)
            except queue_module.Empty:
                if not any(w.is_alive() for w in workers):
                    break  # a worker died without its last word: its cell has no record (reported as failed)
                continue
            if message is None:
                finished += 1
                continue
            name, status, error = message
            done(by_name[name], status, error)
        for w in workers:
            w.join(timeout=30)
    finally:
        for w in workers:
            if w.is_alive():
                w.terminate()
    return [f"worker {w.name} (pid {w.pid}) died with {_exit_text(w.exitcode)}; the cells it had taken have no "
            "record (run the same command again to finish them)" for w in workers if w.exitcode not in (0, None)]


def _exit_text(code: int) -> str:
    if code < 0:
        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"exit status {code}"


def _job_worker(job: int, jobs: int, threads: int, sweep: SweepConfig, results_dir: str, cells: dict,
                inner_progress: bool, todo, results) -> None:
    """One local worker process of ``_run_local_jobs``: runs the cells of each run it takes, until told to stop."""
    os.environ.setdefault("NUMBA_NUM_THREADS", str(threads))  # before numba is first imported (fused kernels)
    torch.set_num_threads(threads)
    where = {"rank": job, "world": jobs, "host": socket.gethostname(), "local_jobs": True}
    envs = _Envs(sweep, inner_progress)
    try:
        while True:
            names = todo.get()
            if names is None:
                break
            for name in names:
                cell = cells[name]
                env, load_error = envs.get(cell.backbone)
                record = _run_owned_cell(cell, env, Path(results_dir), load_error, where)
                results.put((name, record["status"], (record.get("error") or {}).get("message")))
    finally:
        results.put(None)



def _outcomes(results_dir: Path, cells: list[Cell]) -> tuple[list[str], dict[str, str]]:
    """What the records on disk say of ``cells`` (the ranks' common view, read after the last barrier)."""
    ran, failed = [], {}
    for cell in cells:
        try:
            record = read_json(record_path(results_dir, cell))
        except (OSError, ValueError):
            failed[cell.name] = f"no readable record at {record_path(results_dir, cell)}"
            continue
        if record.get("status") == "ok":
            ran.append(cell.name)
        else:
            failed[cell.name] = (record.get("error") or {}).get("message", "error record")
    return ran, failed


def _run_cell(cell: Cell, env: CellEnv, results_dir: Path, load_error: Exception | None,
              where: dict | None = None) -> dict:
    """Run one cell and write its record (ok or error) atomically; never raises except on interruption."""
    sweep = env.sweep
    run_dir = run_path(results_dir, cell)
    base = {
        "format": RECORD_FORMAT,
        "name": cell.name,
        "protocol": cell.protocol,
        "backbone": cell.backbone.display,
        "dataset": dataset_label(cell.dataset),
        "method": cell.method,
        "shots": cell.shots,
        "seed": cell.seed,
        "search_split": sweep.search_split,
        "key": cell.key(sweep),
        "backbone_config": {k: getattr(cell.backbone, k) for k in ("name", "pretrained", "device", "precision",
                                                                          "quick_gelu")},
        "run_dir": str(run_dir.relative_to(results_dir)),
        "rerun_bench": bench_command(cell, sweep, results_dir / "reruns" / cell.name),
        "versions": versions(),
        **(where or {"rank": 0, "world": 1, "host": socket.gethostname()}),  # who ran it
    }
    started = time.time()
    try:
        if load_error is not None:
            raise load_error
        # The cell's run folder is assembled beside runs/<name> and renamed into place when complete (a
        # killed or failed cell leaves the previous one as it was); the bench owns runs/, so it may replace.
        with atomic_folder(run_dir, overwrite=True, option="bench run folder", is_run=lambda p: True) as stage:
            outcome = PROTOCOL_RUNNERS[cell.protocol](cell, env, run_dir, stage)
            record = _ok_record(base, outcome, run_dir, results_dir, started)
            write_json_atomic(stage / "record.json", record)
    except Exception as exc:  # noqa: BLE001 - one failing cell must not stop the sweep
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        record = {**base, "status": "error", "error": {
            "type": type(exc).__name__, "message": message,
            "traceback": traceback.format_exception(type(exc), exc, exc.__traceback__)[-6:]},
            "seconds": round(time.time() - started, 3), "finished": _now()}
    # The record goes last: its presence is what marks the cell finished.
    write_json_atomic(record_path(results_dir, cell), record)
    return record


def _ok_record(base: dict, outcome, run_dir: Path, results_dir: Path, started: float) -> dict:
    return {
        **base, "status": "ok", "scores": outcome.scores, "details": outcome.details,
        "backbone_identity": outcome.fit_metrics.get("backbone"),
        "hparams": outcome.fit_metrics.get("hparams"),
        "splits": str((run_dir / "splits.json").relative_to(results_dir)),
        "config": outcome.config, "metrics": outcome.fit_metrics, "rerun": outcome.rerun,
        "seconds": round(time.time() - started, 3), "finished": _now()}


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def print_summary(summary: BenchSummary, echo: Callable[[str], None] = print) -> None:
    from .reports.tables import render_markdown, summarise_records

    n = len(summary.cells)
    echo(f"bench: {n} cell(s): {len(summary.skipped)} already finished, {len(summary.ran)} run now, "
         f"{len(summary.failed)} failed ({summary.seconds:.1f} s)")
    for note in summary.notes:
        echo(f"  note: {note}")
    for name, message in list(summary.failed.items())[:20]:
        echo(f"  failed: {name}: {message}")
    if len(summary.failed) > 20:
        echo(f"  ... and {len(summary.failed) - 20} more (their records in records/ say why)")
    names = {c.name for c in summary.cells}
    text = render_markdown(summarise_records(summary.results_dir, only=names))
    if text.strip():
        echo("")
        echo(text.rstrip())
    echo(f"\nrecords: {summary.results_dir / 'records'}; tables and figures: taskres report {summary.results_dir}")


def dry_run(sweep: SweepConfig, results_dir: Path, world: int = 1, retry_failed: bool = True,
            echo: Callable[[str], None] = print) -> None:
    cells = expand(sweep)
    status = {c.name: cell_status(results_dir, c, sweep) for c in cells}
    todo_states = {"todo", "changed"} | ({"failed"} if retry_failed else set())
    owner = {}
    if world > 1:
        shares = assign_cells([c for c in cells if status[c.name] in todo_states], world)
        owner = {c.name: r for r, share in enumerate(shares) for c in share}
    for cell in cells:
        who = f" (rank {owner[cell.name]})" if cell.name in owner else ""
        echo(f"{status[cell.name]:8s} {cell.name}{who}")


__all__ = ["BenchSummary", "PAPER_METHODS", "assign_cells", "cell_status", "record_path", "run_path", "run_sweep", "print_summary"]
