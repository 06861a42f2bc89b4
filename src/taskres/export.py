"""``taskres export RUN --format onnx``: a run as one deployable graph, images in, class probabilities out.

The graph is the run's frozen image encoder followed by its tuned head (any classifier kind of
``taskres.classifier.CLASSIFIERS``) and a softmax: preprocessed images [N, 3, H, W] (float32, the batch axis
dynamic) -> probabilities [N, C], the numbers ``taskres predict`` prints. Beside it, ``<name>.onnx.json`` holds
what a deployment needs to feed it: the preprocessing (resize, interpolation, centre crop, mean, std) and the
class names in output order. ``--format torchscript`` writes the same model as a traced TorchScript file.

ONNX uses torch's default (dynamo) exporter through onnxscript, which works offline; the encoder runs in
float32 on the CPU whatever device and precision the run used, so the graph matches ``predict`` on a CPU.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from .atomic import atomic_path, write_json_atomic
from .backbone import Backbone
from .classifier import Classifier, ClassifierError

log = logging.getLogger("taskres")
FORMATS = {"onnx": ".onnx", "torchscript": ".torchscript.pt"}
PREPROCESS_FORMAT = "taskres-preprocess/1"
INPUT_NAME, OUTPUT_NAME = "images", "probabilities"
ONNX_SINGLE_FILE_LIMIT = 1800 * 2**20  # protobuf's 2 GiB ceiling: larger weights go to an external data file


class ProbabilityModel(torch.nn.Module):
    """Preprocessed images -> class probabilities: encode_image, the tuned head, softmax (as predict)."""

    def __init__(self, encoder: torch.nn.Module, classifier: Classifier):
        super().__init__()
        self.encoder = encoder
        self.classifier = classifier

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.encoder(images).float()).softmax(dim=-1)


class ImageEncoder(torch.nn.Module):
    """open_clip's encode_image (unnormalised features, as Backbone.encode_images gives them)."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(images)


def preprocessing(backbone: Backbone) -> dict:
    """The test transform as data: what to do to a decoded RGB image before the graph sees it."""
    from torchvision import transforms as T

    out: dict = {"steps": []}
    for t in getattr(backbone.preprocess, "transforms", [backbone.preprocess]):
        name = type(t).__name__
        out["steps"].append(" ".join(repr(t).split()))
        if isinstance(t, T.Resize):
            size = t.size if isinstance(t.size, int) or len(t.size) != 1 else t.size[0]
            out["resize"] = {"size": size, "rule": "shorter side to size, aspect kept" if isinstance(size, int)
                             else "to [height, width]", "interpolation": t.interpolation.value,
                             "antialias": bool(t.antialias)}
        elif isinstance(t, T.CenterCrop):
            out["crop"] = {"size": list(t.size), "rule": "centre crop to [height, width]"}
        elif isinstance(t, T.Normalize):
            out["mean"], out["std"] = [float(v) for v in t.mean], [float(v) for v in t.std]
        elif name in ("MaybeToTensor", "ToTensor"):
            out["scale"] = "uint8 RGB / 255 to float32 in [0, 1], HWC to CHW"
        elif name in ("MaybeConvertMode", "_convert_to_rgb"):
            out["colour"] = "RGB"
        else:  # still written under "steps"; the keys above cannot describe it
            log.warning("export: preprocessing step %s is only described in the JSON's 'steps'", name)
    out.setdefault("mean", list(backbone.mean))
    out.setdefault("std", list(backbone.std))
    return out


def export_info(backbone: Backbone, classifier: Classifier, fmt: str, model_file: str) -> dict:
    size = backbone.image_size
    return {
        "format": PREPROCESS_FORMAT,
        "model_file": model_file,
        "model_format": fmt,
        "input": {"name": INPUT_NAME, "shape": ["N", 3, size, size], "dtype": "float32", "layout": "NCHW, RGB"},
        "output": {"name": OUTPUT_NAME, "shape": ["N", len(classifier.classnames)], "dtype": "float32",
                   "meaning": "class probabilities (softmax of the logits), columns in 'classnames' order"},
        "preprocess": preprocessing(backbone),
        "classnames": list(classifier.classnames),
        "class_ids": classifier.meta.class_ids,
        "method": classifier.meta.method,
        "classifier_kind": classifier.kind,
        "backbone": backbone.identity,
    }


def _example_input(backbone: Backbone, batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, 3, backbone.image_size, backbone.image_size, generator=torch.Generator().manual_seed(0))


def _parameter_bytes(module: torch.nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in [*module.parameters(), *module.buffers()])


def write_onnx(model: torch.nn.Module, example: torch.Tensor, path: Path) -> None:
    """One ONNX file (two above 2 GiB of weights: the graph and its external data) with a dynamic batch."""
    try:
        import onnx  # noqa: F401
        import onnxscript  # noqa: F401
    except ModuleNotFoundError as exc:
        raise ValueError(f"--format onnx needs the {exc.name} package: pip install 'taskres[export]'") from None
    external = _parameter_bytes(model) > ONNX_SINGLE_FILE_LIMIT
    optimizer_log = logging.getLogger("onnxscript")
    level = optimizer_log.level
    optimizer_log.setLevel(logging.ERROR)  # its constant-folding notes ("Skipping ... Split") are not problems
    try:
        program = torch.onnx.export(model, (example,), input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                                    dynamo=True, dynamic_shapes={"images": {0: torch.export.Dim("batch")}},
                                    verbose=False, external_data=external)
    finally:
        optimizer_log.setLevel(level)
    with atomic_path(path) as tmp:
        program.save(str(tmp), external_data=external)
    if external:
        log.warning("export: the weights are larger than 2 GiB and were written as external data beside %s", path)


def write_torchscript(model: torch.nn.Module, example: torch.Tensor, path: Path) -> None:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*torch.jit.trace.* is deprecated")
        # the logit scale becomes a constant of the trace, as it should (it is frozen)
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        traced = torch.jit.trace(model, (example,), check_trace=False)
    with atomic_path(path) as tmp:
        traced.save(str(tmp))


WRITERS = {"onnx": write_onnx, "torchscript": write_torchscript}


def check_exportable(classifier: Classifier) -> None:
    """The kinds taskres ships (taskres.classifier.CLASSIFIERS) are plain tensor algebra on the features, each
    tested through the exporter; a class that is not the registered class of its kind is refused."""
    from .methods import CLASSIFIERS  # importing the methods registers their kinds

    if CLASSIFIERS.get(classifier.kind) is not type(classifier):
        raise ClassifierError(f"export: {type(classifier).__name__} is not the registered class of a classifier kind "
                              f"(kind {classifier.kind!r}; registered: {', '.join(CLASSIFIERS)})")


@dataclass
class ExportResult:
    model: Path
    info: Path
    format: str


def export_model(backbone: Backbone, classifier: Classifier, out: str | Path, fmt: str = "onnx") -> ExportResult:
    """Write ``out`` (the model) and ``out`` with ``.json`` (preprocessing and class names)."""
    if fmt not in WRITERS:
        raise ValueError(f"--format must be one of {', '.join(WRITERS)}, not {fmt!r}")
    check_exportable(classifier)
    out = Path(out)
    head = type(classifier).from_tensors({k: v.detach().float().cpu() for k, v in classifier.tensors().items()},
                                         classifier.meta, classifier.config())  # a CPU copy; the run's stays
    model = ProbabilityModel(ImageEncoder(backbone.model), head).eval()
    WRITERS[fmt](model, _example_input(backbone), out)
    info = out.with_name(out.name.removesuffix(FORMATS[fmt]) + f".{fmt}.json")
    write_json_atomic(info, export_info(backbone, classifier, fmt, out.name))
    return ExportResult(out, info, fmt)


def export_run(run: str | Path, fmt: str = "onnx", out: str | Path | None = None) -> ExportResult:
    """Export a run folder's classifier with its backbone, loaded in float32 on the CPU."""
    from .api import _classifier_and_backbone

    if fmt not in WRITERS:
        raise ValueError(f"--format must be one of {', '.join(WRITERS)}, not {fmt!r}")
    run = Path(run)
    classifier, backbone = _classifier_and_backbone(run, None, None, device="cpu", precision="fp32")
    if out is None:
        out = (run if run.is_dir() else run.parent) / f"model{FORMATS[fmt]}"
    return export_model(backbone, classifier, out, fmt)


__all__ = ["ExportResult", "ProbabilityModel", "export_model", "export_run", "preprocessing"]
