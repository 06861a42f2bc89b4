"""Method registry: an explicit mapping from method names to method classes, plus installed plugins.

``BUILTIN_METHODS`` is the explicit table of the methods shipped here; ``METHODS`` is that table followed by
the methods other packages declare as ``taskres.methods`` entry points (taskres.plugins), loaded on first use.
"""

from __future__ import annotations

from ..classifier import CLASSIFIERS
from ..errors import OptionError
from ..plugins import MethodTable
from .auto import AutoMethod
from .base import FitContext, Method, TrainingError, check_regime, parse_overrides, validate_params
from .clap import CLAP
from .clip_adapter import ClipAdapter
from .coop import CoOp
from .gda import GDA
from .linear_probe import LinearProbe
from .lpp import LPP
from .taskres import TaskRes
from .kit.text_recipe import TASKRES, TextRecipe
from .taskres_enhanced import TaskResEnhanced
from .tip_adapter import TipAdapter, TipAdapterF
from .zeroshot import ZeroShot, ZeroShotEnsemble

BUILTIN_METHODS: dict[str, type[Method]] = {
    "zeroshot": ZeroShot,
    "zeroshot_ens": ZeroShotEnsemble,
    "taskres": TaskRes,
    # comparison methods (issue 3)
    "linear_probe": LinearProbe,
    "coop": CoOp,
    "clip_adapter": ClipAdapter,
    "tip_adapter": TipAdapter,
    "tip_adapter_f": TipAdapterF,
    "taskres_enhanced": TaskResEnhanced,
    "lpp": LPP,
    "gda": GDA,
    "clap": CLAP,
    # chooses among the cached-feature methods on the validation split (issue 22)
    "auto": AutoMethod,
}
METHODS = MethodTable(BUILTIN_METHODS)  # the built-ins, then the installed plugins (taskres.plugins)

# The classifier kinds that load_classifier understands register themselves (taskres.classifier.CLASSIFIERS)
# as the method modules above define them; it is re-exported here for callers that look for it beside METHODS.


def get_method(name: str, overrides: list[str] | dict | None = None) -> Method:
    if name not in METHODS:
        why = METHODS.problems.get(name)
        if why:
            raise ValueError(why)
        raise OptionError("method", f"{name!r} is not a known method; choose from {', '.join(METHODS)}")
    cls = METHODS[name]
    build = getattr(cls, "from_overrides", None)
    if build is not None:  # a method whose parameters are not one flat dataclass (auto: its candidates' too)
        return build(overrides)
    try:
        params = cls.Params(**parse_overrides(cls.Params, overrides, name))
    except TypeError as exc:  # a dict of overrides from the Python API with a key the Params do not take
        raise ValueError(f"taskres.methods.{name}: {exc}") from None
    validate_params(params, name)
    return cls(params)


def recipe_of(name: str, hparams: dict | None = None) -> TextRecipe:
    """The text recipe of a saved run's method (TaskRes's base for a method this registry does not know)."""
    cls = METHODS.get(name)
    return TASKRES if cls is None else cls.recipe_for(hparams)


__all__ = ["BUILTIN_METHODS", "CLASSIFIERS", "METHODS", "FitContext", "Method", "TrainingError", "check_regime",
           "get_method", "parse_overrides", "recipe_of", "validate_params"]
