"""The ``taskres`` command: a thin layer over the Python API (taskres.api).

The only place that speaks flags: each verb's module here declares its flags (``register(subparsers)``) and turns them into the library's
configs; the library itself never sees argparse. Known errors print one line, ``taskres: error: ...``, and exit
with status 2.
"""

from __future__ import annotations

import argparse
import errno
import logging
import os
import sys

from ..atomic import RunExistsError
from ..backbone import BackboneError
from ..classifier import ClassifierError
from ..datasets import DatasetError
from ..methods import TrainingError
from ..transforms import MAX_PIXELS_ENV, ImageError
from .flags import backbone_config, user_message

USER_ERRORS = (BackboneError, ClassifierError, DatasetError, ImageError, RunExistsError, TrainingError,
               ValueError)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="taskres", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    # imported here, not above: the library imports this package's commands module (a record's repeat command)
    from . import bench, demo, extract, reports, runs

    # every verb, in the order ``taskres --help`` lists them; each module's ``register`` adds its own flags
    for register in (runs.register, bench.register, reports.register_report, demo.register, extract.register,
                     reports.register_export, reports.register_published, reports.register_methods):
        register(sub)
    return parser


def file_error(exc: OSError) -> str:
    """One line naming the path at fault, from an OSError raised anywhere below."""
    what = exc.strerror or str(exc) or type(exc).__name__
    if exc.errno == errno.EROFS:
        what = "read-only file system"
    paths = [p for p in (exc.filename, exc.filename2) if p]
    return f"{what}: {' -> '.join(map(str, paths))}" if paths else what


def _version() -> str:
    from .. import __version__

    return f"taskres {__version__}"


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="taskres: %(levelname)s: %(message)s")
    logging.getLogger("taskres").setLevel(logging.INFO)  # our own one-line notes (e.g. products=auto's choice)
    args = build_parser().parse_args(argv)
    if getattr(args, "eval_split", "unset") is None:
        args.eval_split = ["test"]
    try:
        limit = getattr(args, "max_image_pixels", None)
        if limit is not None:
            if limit < 0:
                raise ValueError(f"--max-image-pixels must be 0 (no limit) or more, not {limit}")
            os.environ[MAX_PIXELS_ENV] = str(limit)  # the decoding workers read it too
        return args.func(args)
    except USER_ERRORS as exc:  # the library names fields; the user typed their flags
        print(f"taskres: error: {user_message(exc)}", file=sys.stderr)
        return 2
    except OSError as exc:  # permissions, a read-only disk, a file where a folder should be, a full disk...
        print(f"taskres: error: {file_error(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("taskres: interrupted; finished work is kept and the next run resumes", file=sys.stderr)
        return 130


__all__ = ["backbone_config", "build_parser", "main"]
