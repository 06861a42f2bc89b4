"""``taskres bench``: the sweep's flags (layered over --preset and --config), then the run of its cells."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from ..bench import dry_run, print_summary, run_sweep
from ..options import DIST_TIMEOUT_S
from ..process_group import Group
from ..protocols import PROTOCOLS, SweepConfig, preset, read_sweep_file, resolve_sweep
from .flags import DATA_FIELDS, add_field_flags, field_values

# SweepConfig's fields that are flags as they are in fit (the sweep's lists and backbones have their own below)
CELL_FIELDS = DATA_FIELDS + ("regime", "views", "augment", "memory_map", "search_split", "allow_fewer_shots")


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
        **field_values(args, CELL_FIELDS),  # None where not given: the preset's or the file's value stands
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
    g.add_argument("--set", action="append", default=[], metavar="[METHOD.]KEY=VALUE",
                   help="method parameter override: METHOD.KEY=VALUE for one method, KEY=VALUE for every swept "
                        "method that has KEY (e.g. --set taskres.epochs=50)")
    add_field_flags(g, SweepConfig, CELL_FIELDS, layered=True)


def cmd_bench(args) -> int:
    sweep, missing = sweep_from_args(args)
    results_dir = Path(args.results_dir)
    group = Group.from_env()
    if args.jobs < 1:
        raise ValueError(f"--jobs must be at least 1, not {args.jobs}")
    if args.jobs > 1 and group.world > 1:
        raise ValueError("--jobs is for one process on one machine; under torchrun each rank is already one worker")
    if missing and group.rank == 0:
        print(f"bench: paper methods not available in this install, skipped: {', '.join(missing)}")
    if args.dry_run:
        if group.rank == 0:  # one list, with the rank each unfinished cell would go to
            dry_run(sweep, results_dir, group.world, retry_failed=not args.keep_failed)
        return 0
    group.start(torch.device("cpu"), args.dist_timeout)  # gloo: the ranks only wait for each other
    try:
        summary = run_sweep(sweep, results_dir, progress=not args.quiet,
                            inner_progress=args.verbose and not args.quiet, retry_failed=not args.keep_failed,
                            redo_changed=args.redo_changed, group=group, jobs=args.jobs)
    finally:
        group.close()
    if group.rank == 0:
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
    p.add_argument("--jobs", type=int, default=1,
                   help="worker processes on this machine, each with its share of the cores (default 1; for GPUs "
                        "or several machines use torchrun)")
    p.add_argument("--dist-timeout", type=float, default=DIST_TIMEOUT_S.default, help=DIST_TIMEOUT_S.help)
    p.set_defaults(func=cmd_bench)
