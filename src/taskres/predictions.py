"""Predictions for programs: image files, folders or list files in; each image's top-k classes out, as JSON or CSV.

Images are decoded and encoded as ``fit`` does (the same workers, progress bar and bad-image handling: an
unreadable image stops with one line naming it, or with ``skip_bad_images`` is skipped, counted in one
warning and kept in the output with its error), never through the on-disk feature cache.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import torch

from .classifier import Classifier
from .datasets import Sample
from .datasets.coop import IMAGE_EXTENSIONS
from .features import FeatureCache, View


def image_files(items: list[str | Path], list_file: str | Path | None = None) -> list[str]:
    """The image files named by ``items`` (files, or folders searched recursively, sorted) and ``list_file``
    (one path per line; blank lines and ``#`` comments skipped; relative paths are relative to the list)."""
    paths: list[str] = []
    for item in items:
        item = Path(item)
        if item.is_dir():
            found = sorted(str(Path(root) / f) for root, dirs, files in os.walk(item) for f in files
                           if f.lower().endswith(IMAGE_EXTENSIONS) and not f.startswith("."))
            if not found:
                raise ValueError(f"predict: the folder {item} holds no image files ({', '.join(IMAGE_EXTENSIONS)})")
            paths.extend(found)
        else:
            paths.append(str(item))
    if list_file is not None:
        paths.extend(_read_list(Path(list_file)))
    if not paths:
        raise ValueError("predict: no images given (image files, folders, or --file-list FILE)")
    return paths


def _read_list(path: Path) -> list[str]:
    if not path.is_file():
        raise ValueError(f"--file-list {path}: no such file")
    out = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            out.append(line if os.path.isabs(line) else str(path.parent / line))
    return out


def predict_files(classifier: Classifier, backbone, paths: list[str], *, k: int = 5, batch_size: int = 128,
                  num_workers: int | None = None, skip_bad_images: bool = False, progress: bool = False) -> list[dict]:
    """One row per image, in order: ``{"image", "top": [(class, probability), ...]}``; a skipped image's row
    has ``"top": None`` and ``"error"``."""
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise ValueError(f"--top must be at least 1, not {k!r}")
    samples = [Sample(os.path.abspath(p), -1) for p in paths]
    got = FeatureCache(None).encoded(backbone, samples, View(), batch_size=batch_size, num_workers=num_workers,
                                     skip_bad=skip_bad_images, progress=progress, desc="predicting")
    errors = {b.row: b.message for b in got.bad}
    ok = got.valid
    probs = classifier.predict_proba(got.features[ok]) if bool(ok.any()) else torch.empty(0, len(classifier.classnames))
    top = probs.topk(min(k, probs.shape[1]), dim=1)
    good = iter(zip(top.values.tolist(), top.indices.tolist()))
    rows = []
    for row, path in enumerate(paths):
        if not bool(ok[row]):
            rows.append({"image": path, "top": None, "error": errors.get(row, "no usable features")})
            continue
        values, ids = next(good)
        rows.append({"image": path, "top": [(classifier.classnames[i], float(p)) for p, i in zip(values, ids)]})
    return rows


def json_rows(rows: list[dict]) -> list[dict]:
    """The rows as JSON objects: ``{"path", "top": [{"class", "probability"}, ...]}`` (or ``"error"``)."""
    out = []
    for r in rows:
        if r["top"] is None:
            out.append({"path": r["image"], "top": None, "error": r["error"]})
        else:
            out.append({"path": r["image"], "top": [{"class": c, "probability": p} for c, p in r["top"]]})
    return out


def dump_json(rows: list[dict]) -> str:
    """One JSON array, one image's object per line (valid JSON that line tools can still read)."""
    items = [json.dumps(obj) for obj in json_rows(rows)]
    return "[\n" + ",\n".join(items) + "\n]" if items else "[]"


def write_csv(rows: list[dict], out: str | Path, k: int) -> Path:
    """One row per image: path, class_1, probability_1, ..., class_k, probability_k, error."""
    from .atomic import atomic_path

    out = Path(out)
    width = k
    header = ["path"] + [f"{what}_{i}" for i in range(1, width + 1) for what in ("class", "probability")] + ["error"]
    with atomic_path(out) as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        for r in rows:
            cells = [c for name, p in (r["top"] or []) for c in (name, f"{p:.6g}")]
            cells += [""] * (2 * width - len(cells))
            writer.writerow([r["image"], *cells, r.get("error", "")])
    return out


__all__ = ["dump_json", "image_files", "json_rows", "predict_files", "write_csv"]
