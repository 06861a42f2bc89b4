"""``taskres methods``: every method this install knows, where it comes from, and the paper it reproduces."""

from __future__ import annotations


def method_rows() -> list[dict]:
    """One row per method: name, source ("built-in" or "package==version"), paper, description, and whether
    ``--method auto`` chooses among it by default."""
    from .methods import METHODS
    from .methods.auto import CANDIDATES

    rows = []
    for name in METHODS:
        cls, source = METHODS[name], METHODS.source(name)
        rows.append({"method": name, "source": "built-in" if source is None else source.requirement(),
                     "paper": cls.paper or "(not stated)", "description": cls.description,
                     "auto_candidate": name in CANDIDATES})
    return rows


def render(rows: list[dict]) -> str:
    width = max(len(r["method"]) for r in rows) + 4  # room for the auto mark
    source_width = max(len(r["source"]) for r in rows) + 2
    lines = [f"{'method'.ljust(width)}{'source'.ljust(source_width)}paper"]
    for r in rows:
        name = r["method"] + (" *" if r["auto_candidate"] else "")
        lines.append(f"{name.ljust(width)}{r['source'].ljust(source_width)}{r['paper']}")
    lines.append("* a candidate of --method auto (fitted on the cached features and compared on the validation "
                 "split)")
    return "\n".join(lines)


__all__ = ["method_rows", "render"]
