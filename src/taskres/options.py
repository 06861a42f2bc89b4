"""Each option declared once: its default, bounds, choices and help, here; its type, the config field's annotation.

A config takes an option as a field (``batch_size: int = BATCH_SIZE.field()``), so the options that several
configs share (where the data is, how it is encoded, which training views) are written once and read alike by
``FitConfig``, ``SweepConfig`` and ``ExtractConfig``. The command line generates its flags from those fields
(``taskres.cli.fields``): the help a user reads is the one written here. Library errors name the field
(``taskres.errors.OptionError``); nothing here knows a flag.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import OptionError

CACHE_ENV = "TASKRES_CACHE"  # the folder for everything taskres caches (features, demo data, probes)


def cache_home() -> Path:
    """``$TASKRES_CACHE``, or ``~/.cache/taskres``: the one place that variable is read."""
    return Path(os.environ.get(CACHE_ENV, Path.home() / ".cache" / "taskres"))


@dataclass(frozen=True)
class Option:
    """One option: its default, help, and what values it takes (``low``: the least number; ``choices``)."""

    default: Any
    help: str
    low: int | float | None = None
    choices: tuple | None = None

    def field(self, help: str | None = None, default: Any = dataclasses.MISSING):
        """A dataclass field for this option (``help`` / ``default`` where one config says more or differs)."""
        value = self.default if default is dataclasses.MISSING else default
        meta = {"help": help or self.help, "low": self.low, "choices": self.choices}
        if isinstance(value, (list, dict, set)):
            return dataclasses.field(default_factory=lambda: type(value)(value), metadata=meta)
        return dataclasses.field(default=value, metadata=meta)


def check_options(config, names=None) -> None:
    """The bounds and choices of ``config``'s option fields; OptionError naming the first that is out of them."""
    owner = type(config).__name__
    for f in dataclasses.fields(config):
        if names is not None and f.name not in names:
            continue
        value, low, choices = getattr(config, f.name), f.metadata.get("low"), f.metadata.get("choices")
        if value is None or isinstance(value, bool):
            continue
        if choices is not None and value not in choices:
            raise OptionError(f.name, f"must be one of {', '.join(map(str, choices))}, not {value!r}", owner=owner)
        if low is not None and isinstance(value, (int, float)) and value < low:
            raise OptionError(f.name, f"must be at least {low}, not {value!r}", owner=owner)


# -- where the data is, and how images are encoded (fit, eval, predict, bench, extract) -----------------------
DATA_ROOT = Option(None, "the folder holding the CoOp dataset layout")
CACHE_DIR = Option(None, f"feature cache (default: ${CACHE_ENV}/features or ~/.cache/taskres/features; '' for "
                         "none)")
BATCH_SIZE = Option(128, "images per encoder batch", low=1)
NUM_WORKERS = Option(None, "image decoding workers (default: automatic)", low=0)
SKIP_BAD_IMAGES = Option(False, "skip images without usable features (unreadable, or NaN/inf out of the encoder) "
                                "with a warning and a count instead of stopping")
VERIFY_CACHE = Option(None, "check cached shards when read: full (header, size and content hash; default) or none "
                            "(header and size only: changed bytes go unnoticed); default: $TASKRES_VERIFY_CACHE",
                      choices=("full", "none"))

# -- the few-shot draw and the training views (fit, bench, extract) -----------------------------------------
SHOTS = Option(None, "K: training images per class (default: 16, or the split file's, which it must match)",
               low=1)
SEED = Option(None, "few-shot and augmentation seed (default: 1, or the split file's, which it must match)")
VIEWS = Option(10, "augmented views cached per training image", low=1)
AUGMENT = Option(True, "augmented training views (on by default; off: train on the test transform only)")
REGIME = Option("cached", "cached: train on cached augmented views (fast, default); online: fresh augmentation "
                          "through the image encoder at every step (the reference regime)",
                choices=("cached", "online"))
MEMORY_MAP = Option(False, "keep the cached training views on disk, memory-mapped, instead of in memory (for "
                           "training sets larger than RAM; needs the feature cache)")
SEARCH_SPLIT = Option("fewshot", "where methods search hyper-parameters: fewshot = min(K, 4) val images per class "
                                 "(default), full = the dataset's whole validation split (as the papers' code); "
                                 "never test", choices=("fewshot", "full"))
ALLOW_FEWER_SHOTS = Option(False, "use every image of a class with fewer than K (CoOp's behaviour) instead of "
                                  "stopping")

# -- processes ----------------------------------------------------------------------------------------------
# One week: a rank waits at the last barrier for the slowest one (torchrun ends the job when a rank dies).
DIST_TIMEOUT_S = Option(7 * 24 * 3600.0, "under torchrun: seconds a rank may wait at a barrier for the others "
                                         "(default: a week)", low=1)
