"""``--method auto``: fit each cached-feature method on the run's features and keep the best on validation.

Every candidate is fitted exactly as ``--method NAME`` would fit it on the same run (its own training views
from the same cache, the same seed set before it), scored by top-1 on the validation split the run searches
on (``--search-split``; never test, which a FitContext does not hold), and the best is kept. Equal scores go
to the simpler method: the earlier one in ``CANDIDATES``. The classifier kept is the chosen method's own,
identical to what ``--method NAME`` gives (tested); ``metrics.json`` adds ``auto`` with every candidate's
validation score and the choice. Without a validation split it refuses: there would be nothing honest to
choose on.

Caveat, said where the numbers are: methods that search their own hyper-parameters on the same validation
images (linear probe, Tip-Adapter and -F, LP++, GDA, TaskRes*) arrive with a validation score already chosen on
it, so theirs is optimistic next to a method that searched nothing.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from ..classifier import Classifier
from ..errors import OptionError
from .base import FitContext, Method, TrainingError
from .kit.search import has_val

log = logging.getLogger("taskres")

# The candidates: the methods that train on cached image features in seconds, simplest first. The order is
# the tie-break (equal validation top-1: the earlier one), by what a method learns: nothing, then closed-form
# or training-free fits, then one linear layer, then more.
CANDIDATES: tuple[str, ...] = (
    "zeroshot",  # nothing learned: CLIP's text classifier
    "tip_adapter",  # training-free: a cache of the shots, two blending scalars searched
    "gda",  # training-free: class means and one shared covariance in closed form, one scalar searched
    "linear_probe",  # one linear layer [C, D], convex (L-BFGS), its penalty searched
    "clap",  # one linear layer initialised at the text classifier and held near it
    "lpp",  # one linear layer blended with per-class text weights
    "taskres",  # one residual [C, D] on the text classifier
    "tip_adapter_f",  # the cache's keys [K*C, D] trained
    "clip_adapter",  # a two-layer MLP on the image features
    "taskres_enhanced",  # a tuned text projection, then TaskRes on its base
)
# Not candidates: coop (every training step runs the text encoder: minutes, not seconds) and zeroshot_ens
# (zero-shot with other templates; ask for it with --set candidates=...).
NO_VAL = ("method auto chooses on the validation split, and this run has none (a dataset without one, and too "
          "few training images to draw min(K, 4) per class besides the shots); choose a method yourself")
TIE_RULE = "highest validation top-1; equal scores go to the simpler method (earlier in the order)"


@dataclass
class AutoParams:
    candidates: list[str] = field(default_factory=lambda: list(CANDIDATES))
    # per candidate, the overrides ``--method NAME --set KEY=VALUE`` would take (``--set NAME.KEY=VALUE``)
    candidate_params: dict[str, dict] = field(default_factory=dict)


@dataclass
class Candidate:
    name: str
    classifier: Classifier | None
    val_correct: int
    val_images: int
    seconds: float
    error: str | None = None

    @property
    def val_top1(self) -> float | None:
        return None if self.classifier is None else 100.0 * self.val_correct / self.val_images

    def record(self) -> dict:
        return {"method": self.name, "val_top1": self.val_top1, "val_correct": self.val_correct,
                "fit_seconds": round(self.seconds, 3), "error": self.error}


def simplicity_order(names: list[str]) -> list[str]:
    """``names`` in tie-break order: CANDIDATES' order, then any other (a plugin) in the order given."""
    known = [n for n in CANDIDATES if n in names]
    return known + [n for n in names if n not in CANDIDATES]


def parse_auto_overrides(items: list[str] | dict | None) -> AutoParams:
    """``candidates=a,b,c`` and ``NAME.KEY=VALUE`` (a candidate's parameter); anything else is refused."""
    from . import METHODS

    pairs = (items.items() if isinstance(items, dict) else
             [s.split("=", 1) if "=" in s else (s, None) for s in items or ()])
    params = AutoParams()
    for key, value in pairs:
        key = key.strip()
        if value is None:
            raise OptionError(key, "has no value (key=value)", method="auto")
        if key == "candidates":
            names = value if isinstance(value, (list, tuple)) else [v.strip() for v in str(value).split(",")]
            params.candidates = [n for n in names if n]
        elif "." in key:
            name, _, param = key.partition(".")
            params.candidate_params.setdefault(name, {})[param] = value
        else:
            raise OptionError(key, f"is not a parameter: auto takes candidates=NAME,NAME,... or a candidate's "
                              f"parameter as NAME.{key}=VALUE", method="auto")
    unknown = [n for n in [*params.candidates, *params.candidate_params] if n not in METHODS or n == "auto"]
    if unknown:
        raise OptionError("candidates", f"names {unknown[0]!r}, which is not a method it can choose (known: "
                          f"{', '.join(m for m in METHODS if m != 'auto')})", method="auto")
    if not params.candidates:
        raise OptionError("candidates", "names no method", method="auto")
    stray = sorted(set(params.candidate_params) - set(params.candidates))
    if stray:
        raise OptionError(f"{stray[0]}.KEY", f"sets {stray[0]}, which is not among the candidates", method="auto")
    params.candidates = simplicity_order(params.candidates)
    return params


@dataclass
class AutoMethod(Method):
    name = "auto"
    Params = AutoParams
    description = "fits the cached-feature methods and keeps the best on the validation split"
    paper = "none: chooses among the candidates (marked *) on the validation split"
    # The training source the run builds first is the test transform's (linear probe's, and the cheapest);
    # each candidate gets its own crop through ctx.train_for. After fit, the chosen method's crop.
    aug_scale = None
    # its candidates are the methods that fit on views encoded once (several refuse the online regime)
    no_online = "chooses among methods fitted on cached features, encoded once"

    @classmethod
    def from_overrides(cls, overrides) -> "AutoMethod":
        from . import get_method

        params = parse_auto_overrides(overrides)
        for name in params.candidates:  # a candidate's bad parameter fails now, before any image is read
            get_method(name, params.candidate_params.get(name))
        return cls(params)

    def check_split(self, split) -> None:
        """Called by taskres.fit before any image is encoded: no validation images, nothing to choose on."""
        if not split.val:
            raise TrainingError(NO_VAL)

    def fit(self, ctx: FitContext) -> Classifier:
        if not has_val(ctx):
            raise TrainingError(NO_VAL)
        if ctx.train_for is None:
            raise TrainingError("method auto needs each candidate's training views (FitContext.train_for); "
                                "run it through taskres.fit")
        candidates = fit_candidates(self.params, ctx)
        chosen = choose(candidates)
        from . import get_method

        # the run records the chosen method's training views (taskres.fit reads it after fit)
        self.chosen_crop = get_method(chosen.name, self.params.candidate_params.get(chosen.name)).crop_scale(
            ctx.task_name)
        clf = chosen.classifier
        clf.meta.extra = {**clf.meta.extra, "auto": selection_record(chosen, candidates)}
        return clf

    def classifier_for_new_classes(self, classifier: Classifier, ctx: FitContext) -> Classifier | None:
        """Base-to-new: the chosen method's own rule for classes it never saw."""
        from . import get_method

        name = (classifier.meta.extra.get("auto") or {}).get("chosen")
        if name is None:
            return None
        method = get_method(name, self.params.candidate_params.get(name))
        return method.classifier_for_new_classes(classifier, ctx.with_recipe(method.recipe))


def fit_candidates(params: AutoParams, ctx: FitContext) -> list[Candidate]:
    """Each candidate fitted as its own run would fit it (fresh training views, the run's seed), scored on val.

    A candidate that fails is recorded with its one-line error and left out of the choice."""
    from . import get_method

    out = []
    for name in params.candidates:
        started = time.time()
        try:
            method = get_method(name, params.candidate_params.get(name))
            # its own text classifier (prompt names, templates) and its own crop, as its own run would have
            own = dataclasses.replace(ctx.with_recipe(method.recipe), train=ctx.train_for(method.crop_scale(ctx.task_name)))
            torch.manual_seed(ctx.seed)  # as taskres.fit does before a method's fit
            clf = method.fit(own)
            correct = val_correct(clf, ctx.val_features, ctx.val_labels)
        except (TrainingError, ValueError, RuntimeError) as exc:
            message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            log.warning("auto: candidate %s failed and is left out: %s", name, message)
            out.append(Candidate(name, None, 0, len(ctx.val_labels), time.time() - started, message))
            continue
        out.append(Candidate(name, clf, correct, len(ctx.val_labels), time.time() - started))
    return out


@torch.no_grad()
def val_correct(clf: Classifier, features: torch.Tensor, labels: torch.Tensor) -> int:
    """How many validation images the classifier gets right (a count: equal scores compare exactly)."""
    return int((clf(features).argmax(dim=1).cpu() == labels.cpu()).sum())


def choose(candidates: list[Candidate]) -> Candidate:
    """The highest validation count; ``candidates`` is in tie-break order, so the first of the best wins."""
    ok = [c for c in candidates if c.classifier is not None]
    if not ok:
        raise TrainingError("method auto: every candidate failed (" + "; ".join(
            f"{c.name}: {c.error}" for c in candidates) + ")")
    best = max(c.val_correct for c in ok)
    return next(c for c in ok if c.val_correct == best)


def selection_record(chosen: Candidate, candidates: list[Candidate]) -> dict:
    return {"chosen": chosen.name, "val_top1": chosen.val_top1, "val_images": chosen.val_images, "rule": TIE_RULE,
            "order": [c.name for c in candidates], "candidates": [c.record() for c in candidates]}


def _pct(value: float | None) -> str:
    return "failed" if value is None else f"{value:.2f}"


def summary_line(auto: dict) -> str:
    """One line for the command line: the choice and every candidate's validation score."""
    scores = ", ".join(f"{c['method']} {_pct(c['val_top1'])}" for c in auto["candidates"])
    return (f"auto: chose {auto['chosen']} (val top-1 {auto['val_top1']:.2f} % on {auto['val_images']} val images; "
            f"ties to the simpler method) among: {scores}")


__all__: list[Any] = ["AutoMethod", "AutoParams", "CANDIDATES", "choose", "fit_candidates", "simplicity_order"]
