"""Write PARITY.md: every golden recomputed by taskres, one row per method, and the deviations kept on purpose.

    python -m parity.report                 # writes PARITY.md at the repository root
    python -m parity.report --out path.md

Each golden under tests/parity/golden/ is recomputed in float64 and float32 exactly as
tests/parity/test_golden.py does (``parity.fixture.compare``); the row shows the official file and commit,
what was compared, the largest difference in each dtype and the verdict. Methods of issue 19 without a
golden yet are listed as "not yet measured". The deviations come from each parity module's ``DEVIATIONS``.
"""

from __future__ import annotations

import argparse
import importlib
import json
import re
from pathlib import Path

import torch

from parity import fixture

# The methods of issue 19, and the golden names that measure each (a golden may also name the methods it
# covers in meta["methods"], e.g. one Tip-Adapter golden for both Tip-Adapter and Tip-Adapter-F).
METHODS = [
    ("Zero-shot CLIP (+ ZeroshotCLIP2)", r"^(zeroshot|zsclip)"),
    ("TaskRes", r"^taskres$"),
    ("Linear probe", r"^(linear_probe|lpclip)"),
    ("CoOp", r"^coop"),
    ("CLIP-Adapter", r"^clip_adapter"),
    ("Tip-Adapter", r"^tip_adapter$"),
    ("Tip-Adapter-F", r"^tip_adapter(_?f)?$"),  # parity-adapters' tip_adapter golden holds Tip-Adapter-F too
    ("LP++", r"^(lpp|lp_plus)"),
    ("GDA", r"^gda"),
    ("CLAP", r"^clap"),
    ("TaskRes*", r"^taskres_?(enhanced|star)"),
]
NOT_METHODS = {"__init__", "fixture", "report"}  # parity modules that measure no method
# Methods with no official implementation to run, and why.
NO_OFFICIAL = {
    "TaskRes*": "no official code: the authors released the enhanced base only as RN50 weight files, never the "
                "code that trains it (their issue #4); taskres trains it by its own documented design (README), "
                "and the TaskRes step on that base is the one the `taskres` golden checks",
}
# Deviations of the whole protocol, not of one method.
PROTOCOL_DEVIATIONS = [
    ("every hyper-parameter search (Tip-Adapter's beta/alpha, Tip-Adapter-F's epoch, GDA's alpha, LP++'s epoch, "
     "the linear probe's C, alpha=auto/lr=auto) reads the few-shot validation split: CoOp's min(K, 4) images per "
     "class (--search-split fewshot, the default); several releases search the whole val split, and Tip-Adapter "
     "and GDA on ImageNet search the test set",
     "a protocol rule (no method here sees test labels), not a numeric difference: given the same validation "
     "features each method picks what its release picks (the goldens above); --search-split full gives the "
     "releases' whole val split where they use it; the accuracy effect needs real images and is not measured "
     "here"),
]


def covered(name: str, meta: dict) -> list[str]:
    """The methods of METHODS that a golden measures."""
    declared = meta.get("methods")
    if declared:
        return [label for label, _ in METHODS if label in declared]
    return [label for label, pattern in METHODS if re.search(pattern, name)]


def measure(name: str) -> dict:
    """Recompute one golden in both dtypes: the comparison rows and the golden's meta."""
    golden, meta = fixture.load_golden(name)
    module = importlib.import_module(f"parity.{meta['module']}")
    rows = []
    for dtype in (torch.float64, torch.float32):
        rows += fixture.compare(module.recompute(golden, meta, dtype), golden, meta, dtype)
    return {"name": name, "meta": meta, "rows": rows}


def _differences(rows: list[dict], dtype: str) -> str:
    """Each output key's largest |taskres - official| in one dtype, the keys over their tolerance in bold."""
    mine = [r for r in rows if r["dtype"] == dtype]
    cells = [f"{r['key']} {r['max_abs']:.1g}" if r["ok"] else f"**{r['key']} {r['max_abs']:.1g}**" for r in mine]
    return ", ".join(cells) or "-"


def _verdict(rows: list[dict]) -> str:
    bad = sorted({f"{r['key']} ({r['dtype']})" for r in rows if not r["ok"]})
    return "matches" if not bad else "DIFFERS: " + ", ".join(bad)


def table(results: list[dict]) -> list[str]:
    lines = ["| method | golden | official file @ commit | compared | max abs diff per key, fp64 | same, fp32 "
             "| verdict |",
             "|---|---|---|---|---|---|---|"]
    seen = set()
    for res in results:
        meta, off = res["meta"], res["meta"]["official"]
        labels = covered(res["name"], meta) or [res["name"]]
        seen.update(labels)
        files = ", ".join(f"`{f}`" for f in off["files"])
        lines.append(f"| {' / '.join(labels)} | `{res['name']}` | {off['repo']}: {files} @ `{off['commit'][:10]}` | "
                     f"{meta['what']} | {_differences(res['rows'], 'float64')} | "
                     f"{_differences(res['rows'], 'float32')} | "
                     f"{_verdict(res['rows'])} |")
    for label, _ in METHODS:
        if label not in seen:
            verdict = NO_OFFICIAL.get(label, "not yet measured")
            lines.append(f"| {label} | - | - | - | - | - | {verdict} |")
    return lines


def fewshot_draw() -> list[str]:
    """The few-shot draw's golden lists (tests/parity/golden/fewshot_*.json), one line each."""
    lines = []
    for path in sorted(fixture.GOLDEN_DIR.glob("fewshot_*.json")):
        golden = json.loads(path.read_text())
        commits = ", ".join(f"{repo} @ `{c[:10]}`" for repo, c in golden["official"]["commits"].items())
        lines.append(f"- `{path.name}` ({golden['dataset']}): {len(golden['draws'])} (shots, seed) draws and "
                     f"{len(golden['base2new'])} base-to-new draws from {commits}; taskres's lists equal them "
                     "exactly, in order (`tests/parity/test_fewshot_draw.py`)")
    return lines or ["- none yet"]


def deviations() -> list[str]:
    """Every parity module's DEVIATIONS, as one bullet each with its measured effect."""
    lines = []
    for path in sorted(Path(__file__).parent.glob("*.py")):
        if path.stem in NOT_METHODS:
            continue
        module = importlib.import_module(f"parity.{path.stem}")
        for what, effect in getattr(module, "DEVIATIONS", []):
            lines.append(f"- **{path.stem}**: {what}. Effect: {effect}.")
    lines += [f"- **protocol**: {what}. Effect: {effect}." for what, effect in PROTOCOL_DEVIATIONS]
    return lines


def patches(results: list[dict]) -> list[str]:
    lines = []
    for res in results:
        lines.append(f"- `{res['name']}`: " + "; ".join(res["meta"].get("patches", [])) + ".")
    return lines


def render(results: list[dict]) -> str:
    tol = "; ".join(f"`{r['name']}` fp64 {r['meta']['tolerance']['float64']}, fp32 {r['meta']['tolerance']['float32']}"
                    for r in results)
    parts = [
        "# Parity with the authors' code",
        "",
        "Written by `python -m parity.report` (do not edit by hand). Each golden under `tests/parity/golden/` holds "
        "what a method's official implementation computed on the parity fixture (a tiny seeded OpenAI-format "
        "CLIP, fixed features, class names with `_`); taskres recomputes it in float64 and float32 "
        "(`tests/parity/test_golden.py`, part of `make test`). How to regenerate: `parity/README.md`.",
        "",
        "Each difference is the largest |taskres - official| of one output key; a key passes when every entry is "
        "within atol + rtol x |official| (a key in bold does not). Per-key tolerances and their reasons are in each "
        "golden's meta and its module. Default tolerances: " + (tol or "-") + ".",
        "",
        *table(results),
        "",
        "## The few-shot draw",
        "",
        "CoOp's few-shot draw (Dassl's generate_fewshot_dataset through CoOp's dataset readers) run on small "
        "synthetic CoOp layouts (shuffled split files, unequal classes), as golden lists:",
        "",
        *fewshot_draw(),
        "",
        "## Deviations kept on purpose",
        "",
        *deviations(),
        "",
        "## How each official implementation was run here",
        "",
        *(patches(results) or ["- no golden yet"]),
        "",
    ]
    return "\n".join(parts)


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=fixture.ROOT / "PARITY.md")
    args = parser.parse_args(argv)
    results = [measure(name) for name in fixture.golden_names()]
    args.out.write_text(render(results))
    print(args.out)
    return args.out


if __name__ == "__main__":
    main()
