"""The methods' rooms keep their shape (issue 20): TaskRes is a package led by its equation whose fast paths
import nothing lazily from it, and the methods' machinery lives in its own room beside the methods."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

METHODS = Path(__file__).resolve().parents[1] / "src" / "taskres" / "methods"
TASKRES = METHODS / "taskres"


def own(node: ast.AST) -> bool:
    """An import of a taskres module (relative, or by its absolute name); optional packages (numba) may be lazy."""
    if isinstance(node, ast.ImportFrom):
        return node.level > 0 or (node.module or "").startswith("taskres")
    return isinstance(node, ast.Import) and any(a.name.startswith("taskres") for a in node.names)


def function_level_imports(path: Path) -> list[str]:
    """``module:line`` of every import of a taskres module inside a function or method body of ``path``."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for inner in ast.walk(node):
                if own(inner):
                    found.append(f"{path.name}:{inner.lineno}")
    return found


def test_taskres_package_has_no_function_level_imports():
    # the lazy circle products.py <-> taskres.py was two imports inside functions; none may come back
    files = sorted(TASKRES.glob("*.py"))
    assert {p.name for p in files} >= {"__init__.py", "gradient.py", "products.py", "fused.py", "autotune.py"}
    assert [hit for p in files for hit in function_level_imports(p)] == []


def test_fast_paths_do_not_import_the_method():
    # the fast paths sit behind the equation: the package's __init__ imports them, never the other way round
    for path in TASKRES.glob("*.py"):
        if path.name == "__init__.py":
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                names = [node.module] if node.module else [a.name for a in node.names]
                siblings = {p.stem for p in TASKRES.glob("*.py")} - {"__init__"}
                assert set(names) <= siblings, f"{path.name}:{node.lineno} imports the package's own names"


def test_the_first_thing_taskres_defines_is_the_equation():
    tree = ast.parse((TASKRES / "__init__.py").read_text(encoding="utf-8"))
    defs = [n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))]
    assert defs[0] == "taskres_logits" and "TaskRes" in defs


def test_each_fast_path_imports_alone_in_a_fresh_interpreter():
    # any import order works: a module of the package imported first must not meet a half-built one
    for name in ("products", "gradient", "fused", "autotune"):
        code = f"import taskres.methods.taskres.{name}"
        run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        assert run.returncode == 0, run.stderr[-2000:]


def test_each_method_declares_on_its_class_whether_it_scores_new_classes():
    import taskres.protocols as protocols
    from taskres.methods import BUILTIN_METHODS
    from taskres.methods.base import Method

    declared = {name for name, cls in BUILTIN_METHODS.items()
                if cls.classifier_for_new_classes is not Method.classifier_for_new_classes}
    assert declared == {"zeroshot", "zeroshot_ens", "taskres", "coop", "clip_adapter", "auto"}
    assert not hasattr(protocols, "NEW_CLASS_RULES")  # no side table beside the methods


def test_top1_is_computed_in_one_place():
    # metrics.accuracy; besides it only a count (auto's exact tie-break) and Tip-Adapter's whole (alpha, beta)
    # grid at once compare predictions with labels
    import re

    pattern = re.compile(r"argmax\([^)]*\)(\.\w+\(\))*\s*==")
    package = METHODS.parent
    hits = sorted(p.relative_to(package).as_posix() for p in package.rglob("*.py") if pattern.search(p.read_text()))
    assert hits == ["methods/auto.py", "methods/tip_adapter.py", "metrics.py"]


def test_the_methods_name_fields_not_flags():
    import re

    import pytest

    from taskres.errors import OptionError
    from taskres.methods import get_method

    with pytest.raises(OptionError) as err:
        get_method("taskres", {"lr": -1})
    assert str(err.value) == "taskres.methods.taskres: lr must be positive, not -1.0"
    assert (err.value.field, err.value.method) == ("lr", "taskres")
    with pytest.raises(OptionError, match="^taskres.methods.coop: precision must be one of"):
        get_method("coop", {"precision": "bf16"})  # a Params class's own check, named with its method
    flag = re.compile(r"--(set|regime|memory-map|method)\b")
    assert [hit for p in METHODS.rglob("*.py") for hit in message_texts(p) if flag.search(hit)] == []


def message_texts(path: Path) -> list[str]:
    """The string pieces of every raise statement and log call of ``path`` (what a user reads)."""
    texts = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        said = isinstance(node, ast.Raise) or (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                                               and isinstance(node.func.value, ast.Name) and node.func.value.id == "log")
        if said:
            texts += [n.value for n in ast.walk(node) if isinstance(n, ast.Constant) and isinstance(n.value, str)]
    return texts
