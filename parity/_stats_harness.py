"""What the parity scripts share to run an official repository's code on a CPU (LP++, GDA, CLAP, the linear
probe, Tip-Adapter, CLIP-Adapter).

Each official file is executed from the snapshot as it is, except for the listed source patches: every patch
is an exact (old, new) text replacement that must match once, and its reason is written into the golden's
meta. Observation never edits code: ``watch`` reads a running function's locals at a given line.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib.util
import shutil
import subprocess
import sys
import tempfile
import types
from pathlib import Path
from typing import Callable, Iterator

import torch

from . import fixture
from .text_official import literal, snapshot_commit as commit_of  # noqa: F401 (commit_of: the modules' harness.commit_of)

# Patches that hold for every script here; each module adds its own.
CPU_PATCH = "torch.Tensor.cuda and nn.Module.cuda return their object unchanged (the release calls .cuda())"
FP64_DEFAULT = "the float64 run sets torch's default dtype to float64 (torch.ones/eye in the release follow it)"


def checkout(repo: Path) -> Path:
    """A working tree of ``repo``: itself, or a fresh clone of a bare snapshot (fetch's mirrors are bare)."""
    repo = Path(repo)
    if (repo / "README.md").exists():
        return repo
    target = Path(tempfile.mkdtemp(prefix="parity-official-"))
    atexit.register(shutil.rmtree, target, True)
    subprocess.run(["git", "clone", "-q", str(repo), str(target / "repo")], check=True)
    return target / "repo"


def on_path(root: Path, packages: tuple[str, ...]) -> None:
    """Put ``root`` first on sys.path and forget earlier imports of ``packages`` (e.g. an installed ``clip``)."""
    for name in list(sys.modules):
        if name.split(".")[0] in packages:
            del sys.modules[name]
    sys.path.insert(0, str(root))


def package(name: str, folder: Path) -> types.ModuleType:
    """An empty package object for ``folder``: its modules import without running its ``__init__.py``."""
    module = types.ModuleType(name)
    module.__path__ = [str(folder)]
    sys.modules[name] = module
    return module


def load(name: str, path: Path, patches: list[tuple[str, str, str]] = ()) -> types.ModuleType:
    """Execute ``path`` as module ``name`` after the exact (old, new, why) text replacements in ``patches``."""
    source = Path(path).read_text()
    for old, new, why in patches:
        if source.count(old) != 1:
            raise RuntimeError(f"{path}: patch ({why}) expects one {old!r}, found {source.count(old)}")
        source = source.replace(old, new)
    spec = importlib.util.spec_from_loader(name, loader=None, origin=str(path))
    module = importlib.util.module_from_spec(spec)
    module.__file__ = str(path)
    if "." in name:
        module.__package__ = name.rsplit(".", 1)[0]
    sys.modules[name] = module
    exec(compile(source, str(path), "exec"), module.__dict__)
    return module


def release_template(root: Path, dataset: str) -> list[str]:
    """The ``template`` list of the release's ``datasets/<dataset>.py``, read as a literal (``ast.literal_eval``):
    importing the dataset module would need its files, and nothing of the snapshot is run that need not be."""
    return literal(root / "datasets" / f"{dataset}.py", "template")


def release_text(root: Path, clip, utils, dtype: torch.dtype, dataset: str) -> torch.Tensor:
    """The release's ``utils.clip_classifier`` with ``dataset``'s templates, on the tiny CLIP built by the
    repository's own ``build_model``: [D, C] (LP++'s and GDA's releases hold the same function)."""
    model = clip.model.build_model(fixture.tiny_state_dict(torch.float32)).to(dtype).eval()
    with torch.no_grad(), fixture.exact_layernorm(clip.model.LayerNorm):
        return utils.clip_classifier(fixture.CLASSNAMES, release_template(root, dataset), model)


def release_runs(root: Path, clip, utils, dataset: str, inputs: dict,
                 run: Callable[[Path, torch.dtype, dict], dict]) -> tuple[dict, list[str]]:
    """For each of the fixture's dtypes, the release's text classifier (``<dtype>/text`` [C, D]) and what
    ``run(root, dtype, inputs + text [D, C])`` computes with it (``<dtype>/<output>``); and the outputs' names."""
    tensors, outputs = {}, []
    for name, dtype in fixture.DTYPES.items():
        with cpu_only(), default_dtype(dtype):
            text = release_text(root, clip, utils, dtype, dataset)
        tensors[f"{name}/text"] = text.t().contiguous()
        computed = run(root, dtype, {**inputs, "text": text.t()})
        outputs = list(computed)
        tensors.update({f"{name}/{k}": v.clone() for k, v in computed.items()})
    return tensors, outputs


@contextlib.contextmanager
def cpu_only() -> Iterator[None]:
    """``.cuda()`` on tensors and modules is a no-op while inside (CPU_PATCH)."""
    saved = torch.Tensor.cuda, torch.nn.Module.cuda
    torch.Tensor.cuda = lambda self, *args, **kwargs: self
    torch.nn.Module.cuda = lambda self, *args, **kwargs: self
    try:
        yield
    finally:
        torch.Tensor.cuda, torch.nn.Module.cuda = saved


@contextlib.contextmanager
def swapped(get: Callable[[], object], put: Callable[[object], object], value: object) -> Iterator[None]:
    """``put(value)`` while inside; on the way out, ``put`` back what ``get()`` gave (a process-wide setting)."""
    saved = get()
    put(value)
    try:
        yield
    finally:
        put(saved)


def default_dtype(dtype: torch.dtype):
    """torch's default dtype is ``dtype`` while inside (FP64_DEFAULT)."""
    return swapped(torch.get_default_dtype, torch.set_default_dtype, dtype)


def line_of(function: Callable, text: str) -> int:
    """The absolute line number of the one line of ``function`` whose stripped text is ``text``."""
    code = function.__code__
    lines = Path(code.co_filename).read_text().splitlines()
    hits = [i + 1 for i, line in enumerate(lines) if line.strip() == text and i + 1 >= code.co_firstlineno]
    if not hits:
        raise RuntimeError(f"{code.co_filename}: no line {text!r} in {code.co_name}")
    return hits[0]


@contextlib.contextmanager
def watch(function: Callable, callbacks: dict[int, Callable[[dict], None]]) -> Iterator[None]:
    """Call ``callbacks[line](locals)`` each time ``function`` is about to run ``line`` (observation only)."""
    code = function.__code__

    def local(frame, event, arg):
        if event == "line" and frame.f_lineno in callbacks:
            callbacks[frame.f_lineno](frame.f_locals)
        return local

    def tracer(frame, event, arg):
        return local if frame.f_code is code else None

    sys.settrace(tracer)
    try:
        yield
    finally:
        sys.settrace(None)


@contextlib.contextmanager
def capture_return(function: Callable, into: dict) -> Iterator[None]:
    """Copy ``function``'s locals into ``into`` when it returns (observation only)."""
    code = function.__code__

    def profiler(frame, event, arg):
        if event == "return" and frame.f_code is code:
            into.update(frame.f_locals)

    sys.setprofile(profiler)
    try:
        yield
    finally:
        sys.setprofile(None)


def fit_test_logits(method, g: dict, views: torch.Tensor, logit_scale: float, seed: int,
                    with_val: bool = True) -> torch.Tensor:
    """The method's own ``fit`` through a FitContext on the golden ``g`` (float32, as every exported classifier;
    training views ``views`` [V, N, D], val when ``with_val``), and the classifier's logits on the test set."""
    from taskres.features.views import CachedViews
    from taskres.methods.base import FitContext

    val = {"val_features": g["val"].float(), "val_labels": g["val_labels"]} if with_val else {}
    ctx = FitContext(task_name="parity", classnames=list(fixture.CLASSNAMES), templates=["{}"],
                     text_classifier=g["text"].float(), logit_scale=logit_scale,
                     train=CachedViews(views.float(), g["train_labels"]), shots=fixture.SHOTS, seed=seed,
                     backbone_identity={}, progress=False, **val)
    classifier = method.fit(ctx)
    with torch.no_grad():
        return classifier(g["test"].float())


OVERLAP_SEED, OVERLAP_NOISE = 1919 + 19, 2.0


def overlapping_features() -> dict[str, torch.Tensor]:
    """The fixture's features with the classes made to overlap, so accuracies fall between 60 and 80 %.

    ``fixture.features`` separates its five classes perfectly: every epoch ties at 100 % on val, so a best-
    epoch rule or a search could never pick anything but its tie-break. Each image moves by a seeded offset of
    OVERLAP_NOISE times its norm (the same offset for all its views). float64; the goldens save the result.
    """
    feats = fixture.features(torch.float64)
    g = torch.Generator().manual_seed(OVERLAP_SEED)

    def offset(x: torch.Tensor) -> torch.Tensor:
        noise = torch.randn(x.shape[-2], x.shape[-1], generator=g, dtype=torch.float64) / x.shape[-1] ** 0.5
        return OVERLAP_NOISE * x.norm(dim=-1, keepdim=True) * noise

    out = dict(feats)
    out["train_views"] = feats["train_views"] + offset(feats["train_views"][0])
    for split in ("val", "test"):
        out[split] = feats[split] + offset(feats[split])
    return out
