"""The numbers a practitioner reads about one evaluated split, for the method and for zero-shot CLIP.

For logits [N, C] and labels [N] (and the same images through the run's frozen zero-shot classifier t):

- ``top1``, ``top5``: percent of images whose label is the first / among the first min(5, C) predictions;
- ``macro``: the mean over classes of the per-class accuracy (classes without images left out), so a big
  class does not hide a small one;
- ``per_class``: accuracy of each class in ``classnames`` order (None for a class without images);
- the confusion matrix ``[true][predicted]`` counts: dense (``confusion``) up to
  ``DENSE_CONFUSION_MAX_CLASSES`` classes, else sparse (``confusion_sparse``: ``[true, predicted, count]``
  rows, zero cells left out), so an ImageNet run's metrics.json stays small;
- ``ece``: expected calibration error in percent with ``ECE_BINS`` equal-width confidence bins
  (Guo et al., *On Calibration of Modern Neural Networks*, ICML 2017, who use M = 15): the top-1
  confidence (max softmax probability) of each image falls in bin (i/M, (i+1)/M]; ECE = sum over bins of
  |B|/N * |accuracy(B) - mean confidence(B)|.

Accuracies are percent, like ``metrics["top1"]``. ``worst`` lists the wrong predictions made with the
highest confidence (image, label, top-3), the images report.html shows.
"""

from __future__ import annotations

import math

import torch

ECE_BINS = 15
DENSE_CONFUSION_MAX_CLASSES = 200
WORST_IMAGES = 12
TOP_K = 5


def topk_accuracy(logits: torch.Tensor, labels: torch.Tensor, k: int) -> float:
    if not len(labels):
        return float("nan")
    k = min(k, logits.shape[1])
    hits = (logits.topk(k, dim=1).indices == labels[:, None]).any(dim=1)
    return 100.0 * float(hits.float().mean())


def confusion_matrix(pred: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """counts[true, predicted]."""
    flat = labels.long() * num_classes + pred.long()
    return torch.bincount(flat, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def per_class_accuracy(confusion: torch.Tensor) -> list[float | None]:
    counts = confusion.sum(dim=1)
    return [100.0 * float(confusion[c, c]) / float(n) if n else None for c, n in enumerate(counts.tolist())]


def expected_calibration_error(probs: torch.Tensor, labels: torch.Tensor, bins: int = ECE_BINS) -> float:
    """ECE in percent over ``bins`` equal-width bins of the top-1 confidence (see the module docstring)."""
    if not len(labels):
        return float("nan")
    conf, pred = probs.max(dim=1)
    correct = (pred == labels).double()
    # bin i holds confidences in (i/M, (i+1)/M]: the index is ceil(conf * M) - 1
    index = (torch.ceil(conf.double() * bins) - 1).clamp(0, bins - 1).long()
    n = torch.bincount(index, minlength=bins).double()
    acc = torch.bincount(index, weights=correct, minlength=bins)
    mean_conf = torch.bincount(index, weights=conf.double(), minlength=bins)
    return 100.0 * float((acc - mean_conf).abs().sum() / len(labels))


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Top-1 as a fraction of ``labels`` (NaN for none): the one place top-1 is computed, for a run's metrics
    (x 100, ``top1``) and for the choices methods make on the validation split."""
    return float((logits.argmax(dim=1) == labels).float().mean()) if len(labels) else float("nan")


def classification_metrics(logits: torch.Tensor, labels: torch.Tensor) -> dict:
    """top1, top5, macro, ece, per_class and the confusion matrix of one classifier's logits."""
    logits = logits.float()
    num_classes = logits.shape[1]
    pred = logits.argmax(dim=1)
    confusion = confusion_matrix(pred, labels, num_classes)
    per_class = per_class_accuracy(confusion)
    present = [a for a in per_class if a is not None]
    out = {
        "top1": 100.0 * accuracy(logits, labels),
        f"top{TOP_K}": topk_accuracy(logits, labels, TOP_K),
        "macro": sum(present) / len(present) if present else float("nan"),
        "ece": expected_calibration_error(logits.softmax(dim=1), labels),
        "per_class": per_class,
    }
    if num_classes <= DENSE_CONFUSION_MAX_CLASSES:
        out["confusion"] = confusion.tolist()
    else:
        nz = confusion.nonzero()
        out["confusion_sparse"] = [[t, p, int(confusion[t, p])] for t, p in nz.tolist()]
    return out


def dense_confusion(entry: dict, num_classes: int) -> torch.Tensor:
    """The confusion matrix of a ``classification_metrics`` entry, dense whichever way it was stored."""
    if "confusion" in entry:
        return torch.tensor(entry["confusion"], dtype=torch.long).reshape(num_classes, num_classes)
    out = torch.zeros(num_classes, num_classes, dtype=torch.long)
    for t, p, n in entry["confusion_sparse"]:
        out[t, p] = n
    return out


def worst_predictions(logits: torch.Tensor, labels: torch.Tensor, images: list[str], classnames: list[str],
                      limit: int = WORST_IMAGES) -> list[dict]:
    """The wrong predictions made with the highest confidence, each with its top-3 classes."""
    probs = logits.float().softmax(dim=1)
    conf, pred = probs.max(dim=1)
    wrong = (pred != labels).nonzero().flatten()
    order = wrong[conf[wrong].argsort(descending=True, stable=True)][:limit]
    k = min(3, probs.shape[1])
    rows = []
    for i in order.tolist():
        top = probs[i].topk(k)
        rows.append({"image": images[i], "label": classnames[int(labels[i])],
                     "true_probability": float(probs[i, labels[i]]),
                     "top3": [[classnames[c], float(p)] for p, c in zip(top.values.tolist(), top.indices.tolist())]})
    return rows


def split_evaluation(logits: torch.Tensor, zero_shot_logits: torch.Tensor | None, labels: torch.Tensor,
                     images: list[str], classnames: list[str]) -> dict:
    """Everything metrics.json holds about one evaluated split (see the module docstring)."""
    if logits.shape[1] != len(classnames):
        raise ValueError(f"{logits.shape[1]} logit columns for {len(classnames)} class names")
    counts = torch.bincount(labels, minlength=len(classnames)).tolist()
    out = {"classnames": list(classnames), "class_counts": counts, "num_images": len(labels),
           "ece_bins": ECE_BINS, "method": classification_metrics(logits, labels)}
    if zero_shot_logits is not None:
        out["zeroshot"] = classification_metrics(zero_shot_logits, labels)
    out["worst"] = worst_predictions(logits, labels, images, classnames)
    return out


def class_gains(evaluation: dict) -> list[dict]:
    """Per class: method and zero-shot accuracy and their difference, largest gain first."""
    zs = evaluation.get("zeroshot", {}).get("per_class") or [None] * len(evaluation["classnames"])
    rows = []
    for c, (name, n, acc, base) in enumerate(zip(evaluation["classnames"], evaluation["class_counts"],
                                                 evaluation["method"]["per_class"], zs)):
        if acc is None:
            continue
        rows.append({"index": c, "class": name, "images": n, "method": acc, "zeroshot": base,
                     "gain": None if base is None else acc - base})
    return sorted(rows, key=lambda r: (-(r["gain"] if r["gain"] is not None else -math.inf), r["index"]))


def _num(v) -> str:
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.2f}"


def summary_lines(evaluation: dict, helped: int = 3) -> list[str]:
    """A compact text table (method and zero-shot) and the classes the method helped and hurt most."""
    keys = ("top1", f"top{TOP_K}", "macro", "ece")
    lines = [f"  {'':10} {'top-1':>7} {'top-' + str(TOP_K):>7} {'macro':>7} {'ECE':>7}"]
    for label, name in (("method", "method"), ("zero-shot", "zeroshot")):
        if name in evaluation:
            lines.append(f"  {label:10} " + " ".join(f"{_num(evaluation[name][k]):>7}" for k in keys))
    gains = [g for g in class_gains(evaluation) if g["gain"] is not None]
    if gains:
        up = [g for g in gains if g["gain"] > 0][:helped]
        down = [g for g in reversed(gains) if g["gain"] < 0][:helped]
        fmt = lambda rows: ", ".join(f"{g['class']} {g['gain']:+.1f}" for g in rows) or "none"  # noqa: E731
        lines.append(f"  vs zero-shot, most helped: {fmt(up)}; most hurt: {fmt(down)}")
    return lines
