"""taskres: Task Residual Tuning (CVPR 2023) and its baselines for few-shot adaptation of CLIP models."""

__version__ = "0.1.0"

from .api import FitConfig, FitResult, evaluate, fit, predict  # noqa: E402
from .backbone import BackboneConfig, load_backbone  # noqa: E402
from .classifier import load_classifier, save_classifier  # noqa: E402
from .datasets import load_dataset, make_fewshot_split  # noqa: E402

__all__ = ["BackboneConfig", "FitConfig", "FitResult", "evaluate", "fit", "load_backbone", "load_classifier",
           "load_dataset", "make_fewshot_split", "predict", "save_classifier"]
