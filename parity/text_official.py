"""Helpers of the text-classifier parity modules (zeroshot, text_classifiers): import an official fork's code
from a snapshot on a CPU without its training framework, and encode texts through taskres's backbone in any dtype.

Each fork ships its own ``clip`` package (the import name of the installed clip-anytorch too), so a fork's
modules are imported with its root first on ``sys.path`` and every earlier ``clip`` / ``trainers`` /
``datasets`` / ``utils`` module forgotten before and after. Dassl (CoOp, CLAP and CLIP-Adapter import it at
module level, for trainer registries and base classes the functions compared here never use) is replaced by
permissive stand-in modules. ``.cuda()`` and ``.to("cuda")`` become no-ops while official code runs.
"""

from __future__ import annotations

import ast
import contextlib
import copy
import functools
import importlib
import importlib.abc
import importlib.machinery
import subprocess
import sys
import types
from pathlib import Path

import torch

FORK_PACKAGES = ("clip", "trainers", "datasets", "utils")


class _Anything(type):
    """A stand-in Dassl name: usable as a base class, a decorator factory, a function, an attribute chain."""

    def __getattr__(cls, name):
        return _anything()

    def __call__(cls, *args, **kwargs):
        if len(args) == 1 and isinstance(args[0], type) and not kwargs:
            return args[0]  # TRAINER_REGISTRY.register()(cls) -> cls
        return _anything()


def _anything(name: str = "Stub"):
    return _Anything(name, (object,), {})


class _DasslStubs(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Imports of ``dassl`` and its submodules get empty modules whose every attribute is an ``_Anything``."""

    def find_spec(self, fullname, path, target=None):
        if fullname == "dassl" or fullname.startswith("dassl."):
            return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
        return None

    def create_module(self, spec):
        module = types.ModuleType(spec.name)
        module.__path__ = []
        module.__getattr__ = lambda name: _anything(name)
        return module

    def exec_module(self, module):
        pass


def _forget_fork_modules() -> None:
    for name in list(sys.modules):
        if name.split(".")[0] in FORK_PACKAGES + ("dassl",):
            del sys.modules[name]


@contextlib.contextmanager
def official_code(repo: Path):
    """While inside: ``import <module>`` reads ``repo``'s files, Dassl is stubbed, CUDA calls stay on the CPU."""
    import clip.model  # noqa: F401  clip-anytorch, loaded before the fork's clip hides it (the fixture's model)

    saved_modules = {k: v for k, v in sys.modules.items() if k.split(".")[0] in FORK_PACKAGES}
    saved_cuda, saved_to = torch.Tensor.cuda, torch.Tensor.to
    finder = _DasslStubs()

    def to_cpu(self, *args, **kwargs):
        args = tuple("cpu" if (isinstance(a, str) and a.startswith("cuda")) else a for a in args)
        if isinstance(kwargs.get("device"), str) and kwargs["device"].startswith("cuda"):
            kwargs["device"] = "cpu"
        return saved_to(self, *args, **kwargs)

    _forget_fork_modules()
    sys.path.insert(0, str(repo))
    sys.meta_path.insert(0, finder)
    torch.Tensor.cuda = lambda self, *a, **k: self
    torch.Tensor.to = to_cpu
    try:
        yield
    finally:
        torch.Tensor.cuda, torch.Tensor.to = saved_cuda, saved_to
        sys.meta_path.remove(finder)
        sys.path.remove(str(repo))
        _forget_fork_modules()
        sys.modules.update(saved_modules)


def load_module(name: str):
    """``importlib.import_module`` inside ``official_code``."""
    return importlib.import_module(name)


def literal(path: Path, name: str):
    """The literal value a module assigns to ``name`` at top level (a template list), read without running it."""
    tree = ast.parse(Path(path).read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == name for t in node.targets):
            return ast.literal_eval(node.value)
    raise KeyError(f"{path}: no top-level {name} = <literal>")


def snapshot_commit(repo: Path) -> str:
    return subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], check=True, capture_output=True,
                          text=True).stdout.strip()


# -- taskres's side --------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=2)
def _model_in(dtype: torch.dtype):
    from parity import fixture

    return copy.deepcopy(fixture.tiny_backbone().model).to(dtype).eval()


def taskres_encode_texts(dtype: torch.dtype):
    """texts -> unnormalised text features through taskres.backbone's model and tokenizer, in ``dtype``.

    ``Backbone.encode_texts`` returns float32; the same open_clip model cast to float64 gives the fp64 run."""
    from parity import fixture

    backbone = fixture.tiny_backbone()
    if dtype == torch.float32:
        return backbone.encode_texts
    model = _model_in(dtype)

    def encode(texts: list[str]) -> torch.Tensor:
        with torch.no_grad():
            return model.encode_text(backbone.tokenizer(texts)).to(dtype)

    return encode


def taskres_encode_images(pixels: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    from parity import fixture

    if dtype == torch.float32:
        return fixture.tiny_backbone().encode_images(pixels.float())
    with torch.no_grad():
        return _model_in(dtype).encode_image(pixels.to(dtype))


def recipe_text_classifier(method: str, task_name: str, dataset_templates: list[str], classnames: list[str],
                           dtype: torch.dtype) -> torch.Tensor:
    """t [C, D] as taskres gives it to ``method`` (its text recipe) on dataset ``task_name``, in ``dtype``."""
    from taskres.methods import get_method

    recipe = get_method(method).recipe
    return recipe.build(taskres_encode_texts(dtype), recipe.prompt_names(classnames),
                        recipe.task_templates(task_name, dataset_templates))
