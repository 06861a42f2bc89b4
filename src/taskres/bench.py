"""``taskres bench``: a protocol's sweep as one resumable command, one result record per cell.

    taskres bench results/ --preset paper --data-root /data
    taskres bench results/ --datasets caltech101 dtd --shots 1 16 --seeds 1 2 3 --methods zeroshot taskres
    taskres bench results/ --config sweep.yaml --protocol base2new

Each finished cell writes ``RESULTS/records/<backbone>__<dataset>__<method>__<K>shot__seed<S>.json``
(atomically, the moment it finishes) and its run folder ``RESULTS/runs/<same name>/``. A restarted sweep
skips the cells whose record says "ok" and runs the rest; a failing cell gets an error record and the
sweep goes on. ``taskres report RESULTS`` turns the records into tables and figures.
"""

from __future__ import annotations

import argparse
import logging
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from .api import make_cache, versions
from .backbone import load_backbone
from .datasets import TaskData, load_dataset
from .io import atomic_folder, read_json, write_json_atomic
from .protocols import (PAPER_METHODS, PROTOCOL_RUNNERS, PROTOCOLS, Cell, CellEnv, SweepConfig, bench_command,
                        dataset_label, expand, preset, read_sweep_file, resolve_sweep)

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


def run_sweep(sweep: SweepConfig, results_dir: str | Path, *, progress: bool = True, inner_progress: bool = False,
              retry_failed: bool = True, redo_changed: bool = False,
              on_cell_done: Callable[[Cell, dict], None] | None = None) -> BenchSummary:
    """Run every cell of ``sweep`` that has no finished record in ``results_dir``.

    ``on_cell_done(cell, record)`` is called after each record is written (progress hooks, tests).
    """
    from tqdm.auto import tqdm

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
    write_json_atomic(results_dir / "sweep.json", {"sweep": sweep.to_dict(), "versions": versions()})

    tasks = _Tasks(sweep.data_root)
    cache = make_cache(sweep.cache_dir)
    bar = tqdm(total=len(cells), initial=len(cells) - len(pending), desc=f"bench {sweep.protocol}", unit="cell",
               disable=not progress, dynamic_ncols=True)
    try:
        for spec in sweep.backbones:
            mine = [c for c in pending if c.backbone == spec]
            if not mine:
                continue  # every cell of this backbone is finished: don't even load it
            bar.set_postfix_str(f"loading {spec.display}")
            try:
                backbone, load_error = load_backbone(spec.config()), None
            except Exception as exc:  # noqa: BLE001 - each of its cells gets the error record
                backbone, load_error = None, exc
            env = CellEnv(sweep, backbone, cache, tasks, progress=inner_progress)
            for cell in mine:
                bar.set_postfix_str(cell.name)
                record = _run_cell(cell, env, results_dir, load_error)
                if record["status"] == "ok":
                    summary.ran.append(cell.name)
                else:
                    summary.failed[cell.name] = record["error"]["message"]
                    bar.write(f"taskres: cell {cell.name} failed: {record['error']['message']}")
                bar.update(1)
                if on_cell_done is not None:
                    on_cell_done(cell, record)
            del env, backbone
    finally:
        bar.close()
    summary.seconds = time.time() - started
    return summary


def _run_cell(cell: Cell, env: CellEnv, results_dir: Path, load_error: Exception | None) -> dict:
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
    from .report import render_markdown, summarise_records

    n = len(summary.cells)
    echo(f"bench: {n} cell(s): {len(summary.skipped)} already finished, {len(summary.ran)} run now, "
         f"{len(summary.failed)} failed ({summary.seconds:.1f} s)")
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


# -- command line -------------------------------------------------------------------------------------------
def _list_arg(values):
    """``--shots 1 2 4`` and ``--shots 1,2,4`` both work."""
    if values is None:
        return None
    return [v for item in values for v in str(item).split(",") if v]


def sweep_from_args(args) -> tuple[SweepConfig, list[str]]:
    layers, missing = [], []
    if args.preset:
        settings, missing = preset(args.preset, args.protocol or "fewshot")
        layers.append(settings)
    if args.config:
        layers.append(read_sweep_file(args.config))
    flags = {
        "protocol": args.protocol, "datasets": _list_arg(args.datasets), "shots": _list_arg(args.shots),
        "seeds": _list_arg(args.seeds), "methods": _list_arg(args.methods), "targets": _list_arg(args.targets),
        "data_root": args.data_root, "regime": args.regime, "views": args.views,
        "augment": False if args.no_augment else None, "cache_dir": args.cache_dir, "batch_size": args.batch_size,
        "num_workers": args.workers, "skip_bad_images": True if args.skip_bad_images else None,
        "allow_fewer_shots": True if args.allow_fewer_shots else None, "search_split": args.search_split,
    }
    backbone_flags = {"pretrained": args.pretrained, "device": args.device, "precision": args.precision,
                      "quick_gelu": args.quick_gelu}
    if args.backbone:
        flags["backbones"] = [{"name": name, **{k: v for k, v in backbone_flags.items() if v is not None}}
                              for name in _list_arg(args.backbone)]
    else:
        flags["_override_backbone"] = backbone_flags
    layers.append(flags)
    return resolve_sweep(*layers, set_items=args.set), missing


def add_sweep_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("sweep (layered: --preset, then --config, then these flags)")
    g.add_argument("--preset", choices=["paper"], default=None,
                   help="paper: the 11 datasets, shots 1/2/4/8/16 (16 for domain and base2new), seeds 1/2/3, the "
                        "paper's methods available here, RN50 with openai weights")
    g.add_argument("--config", default=None, metavar="SWEEP.yaml", help="a YAML file with the sweep's settings")
    g.add_argument("--protocol", choices=PROTOCOLS, default=None,
                   help="fewshot (default), domain (train on ImageNet, test on its shifted variants), or "
                        "base2new (CoCoOp's base-to-new classes)")
    g.add_argument("--datasets", nargs="+", default=None, help="dataset names or class-folder paths")
    g.add_argument("--shots", nargs="+", default=None, help="shot counts, e.g. 1 2 4 8 16")
    g.add_argument("--seeds", nargs="+", default=None, help="seeds, e.g. 1 2 3")
    g.add_argument("--methods", nargs="+", default=None, help="methods, e.g. zeroshot taskres")
    g.add_argument("--targets", nargs="+", default=None,
                   help="domain protocol: target datasets (default: imagenetv2 imagenet_sketch imagenet_a "
                        "imagenet_r)")
    g.add_argument("--backbone", action="append", default=None,
                   help="open_clip model name or model config .json (repeat for several)")
    g.add_argument("--pretrained", default=None, help="weights for the backbones (tag, file or 'none')")
    g.add_argument("--device", default=None, help="cpu or cuda[:N]")
    g.add_argument("--precision", default=None, choices=["fp32", "fp16", "bf16"])
    g.add_argument("--quick-gelu", action=argparse.BooleanOptionalAction, default=None,
                   help="the checkpoint file's weights were trained with QuickGELU (--no-quick-gelu: nn.GELU)")
    g.add_argument("--data-root", default=None, help="the folder holding the CoOp dataset layout")
    g.add_argument("--regime", default=None, choices=["cached", "online"], help="training regime (default: cached)")
    g.add_argument("--views", type=int, default=None, help="augmented views cached per training image (default 10)")
    g.add_argument("--no-augment", action="store_true", help="train on the test transform only")
    g.add_argument("--set", action="append", default=[], metavar="[METHOD.]KEY=VALUE",
                   help="method parameter override: METHOD.KEY=VALUE for one method, KEY=VALUE for every swept "
                        "method that has KEY (e.g. --set taskres.epochs=50)")
    g.add_argument("--cache-dir", default=None, help="feature cache folder ('' for none)")
    g.add_argument("--batch-size", type=int, default=None, help="images per encoder batch")
    g.add_argument("--workers", type=int, default=None, help="image decoding workers")
    g.add_argument("--skip-bad-images", action="store_true", help="skip unreadable images instead of failing")
    g.add_argument("--allow-fewer-shots", action="store_true",
                   help="use every image of a class with fewer than K (CoOp's behaviour)")
    g.add_argument("--search-split", default=None, choices=["fewshot", "full"],
                   help="where methods search hyper-parameters: fewshot = min(K, 4) val images per class "
                        "(default), full = the dataset's whole validation split; never the test split")


def cmd_bench(args) -> int:
    sweep, missing = sweep_from_args(args)
    results_dir = Path(args.results_dir)
    if missing:
        print(f"bench: paper methods not available in this install, skipped: {', '.join(missing)}")
    if args.dry_run:
        for cell in expand(sweep):
            print(f"{cell_status(results_dir, cell, sweep):8s} {cell.name}")
        return 0
    summary = run_sweep(sweep, results_dir, progress=not args.quiet, inner_progress=args.verbose and not args.quiet,
                        retry_failed=not args.keep_failed, redo_changed=args.redo_changed)
    print_summary(summary)
    return 0 if summary.ok else 1


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "bench", help="run a protocol's sweep (datasets x shots x seeds x methods x backbones), resumable",
        description="Run a protocol's sweep as one resumable command, one result record per cell. Exits with 1 "
                    "when a cell failed (its error record says why).")
    p.add_argument("results_dir", metavar="RESULTS_DIR", help="where records/ and runs/ are written")
    add_sweep_args(p)
    p.add_argument("--dry-run", action="store_true", help="list the cells and their state, run nothing")
    p.add_argument("--keep-failed", action="store_true", help="do not retry cells that failed before")
    p.add_argument("--redo-changed", action="store_true",
                   help="rerun cells whose record was made with other settings (default: stop)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--verbose", action="store_true", help="also show encoding and training progress inside cells")
    p.set_defaults(func=cmd_bench)


__all__ = ["BenchSummary", "PAPER_METHODS", "cell_status", "record_path", "run_path", "run_sweep", "print_summary"]
