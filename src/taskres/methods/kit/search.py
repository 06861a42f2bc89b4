"""Choosing hyper-parameters on the few-shot validation split: whether there is one, top-1 on it, the grids.

Hyper-parameters are chosen on ``ctx.val_features`` / ``ctx.val_labels`` and never on test data, which a
``FitContext`` does not hold.
"""

from __future__ import annotations

import logging

from ...metrics import accuracy  # the one top-1, re-exported for the methods' searches
from ..base import FitContext

log = logging.getLogger("taskres")


def has_val(ctx: FitContext) -> bool:
    return ctx.val_features is not None and ctx.val_labels is not None and len(ctx.val_labels) > 0


def warn_no_val(method: str, fallback: str) -> None:
    log.warning("%s: no validation split to search on; using %s", method, fallback)




def linspace_grid(top: float, steps: int, start: float = 0.1) -> list[float]:
    """Tip-Adapter's search grid: ``steps`` values from ``start`` up to (not including) ``top``."""
    steps = int(steps)
    if steps < 1:
        raise ValueError(f"a search grid needs at least one step, not {steps}")
    return [start + i * (top - start) / steps for i in range(steps)]
