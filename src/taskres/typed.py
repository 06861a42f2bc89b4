"""One conversion for typed settings: a value checked against its dataclass field's annotation, whether it
comes as text (``--set KEY=VALUE``) or already typed (a sweep YAML file, the Python API).

Text is parsed ("1e-3" -> 1e-3, "true" -> True, "1,10" -> [1.0, 10.0], "none" -> None where None is allowed,
"auto" where the field allows it). A typed value must already be of the field's kind: a float where a
whole number belongs (``shots: [2.7]``, ``views: 2.5``) or a bool where a number belongs is refused, never
truncated. Strings in a file are still parsed as numbers (YAML 1.1 reads ``2e-4`` as a string), but not
as booleans: ``augment: 'false'`` is a quoted string, and guessing its meaning is how a run trained with
augmentation while its record said false.
"""

from __future__ import annotations

from typing import Any

TRUE, FALSE = ("true", "1", "yes"), ("false", "0", "no")


def _kinds(annotation) -> tuple[str, bool, bool]:
    """(base kind, None allowed, 'auto' allowed) of an annotation such as ``float | Literal["auto"] | None``."""
    text = str(annotation).replace('"', "'")
    parts = [p.strip() for p in text.split("|")]
    optional = "None" in parts or "Optional" in text
    auto = "'auto'" in text
    for kind in ("bool", "int", "float", "list", "tuple", "dict", "str"):
        if any(p == kind or p.startswith(f"{kind}[") for p in parts):
            return kind, optional, auto
    if "float" in text:  # Optional[float] and other spellings
        return "float", optional, auto
    return "any", optional, auto


def describe(annotation) -> str:
    kind, optional, auto = _kinds(annotation)
    what = {"bool": "true or false", "int": "a whole number", "float": "a number", "list": "a list of numbers",
            "tuple": "a list of numbers", "dict": "a mapping", "str": "a text"}.get(kind, str(annotation))
    return what + (" or 'auto'" if auto else "") + (" or none" if optional else "")


def typed_value(value: Any, annotation, name: str, *, text_bools: bool = True) -> Any:
    """``value`` as the field ``name`` of type ``annotation`` holds it; ValueError (one line) when it cannot be.

    ``text_bools``: parse "true"/"false" text for a bool field (the command line); False for values from a
    typed file, where a quoted 'false' is refused."""
    kind, optional, auto = _kinds(annotation)
    if value is None:
        if optional or kind == "any":
            return None
        raise _refused(value, annotation, name)
    if isinstance(value, str):
        return _from_text(value, annotation, name, text_bools)
    if kind == "bool":
        ok = isinstance(value, bool)
    elif kind == "int":
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif kind == "float":
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif kind in ("list", "tuple"):
        ok = isinstance(value, (list, tuple))
        value = list(value) if ok else value
    elif kind == "dict":
        ok = isinstance(value, dict)
    else:
        ok = kind == "any"
    if not ok:
        raise _refused(value, annotation, name)
    return value


def _from_text(value: str, annotation, name: str, text_bools: bool) -> Any:
    kind, optional, auto = _kinds(annotation)
    word = value.strip().lower()
    if word in ("none", "null") and optional:
        return None
    if word == "auto" and auto:
        return "auto"  # a field annotated Literal["auto"] (TaskRes's alpha, lr): searched by the method
    try:
        if kind == "bool":
            if not text_bools or word not in TRUE + FALSE:
                raise ValueError
            return word in TRUE
        if kind == "int":
            return int(value)
        if kind == "float":
            return float(value)
        if kind in ("list", "tuple"):
            return [float(v) for v in value.split(",")]
    except ValueError:
        raise _refused(value, annotation, name) from None
    if kind in ("dict",):
        raise _refused(value, annotation, name)
    return value


def _refused(value, annotation, name: str) -> ValueError:
    shown = f"the text {value!r}" if isinstance(value, str) else f"{value!r}"
    return ValueError(f"{name}: expected {describe(annotation)}, not {shown}")
