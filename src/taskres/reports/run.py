"""``RUN/report.html``: one self-contained page about a run, written by ``fit`` beside metrics.json.

It shows, per evaluated split (metrics.json's ``evaluation``, see taskres.metrics): the headline numbers of
the method beside zero-shot CLIP on the same images; every class's accuracy, method against zero-shot,
sorted by gain (which classes the few shots helped or hurt); the confusion matrix as a picture and the most
frequent confusions; for a classifier with a residual (kind "cosine": TaskRes, TaskRes*) the residual's norm
per class; and thumbnails of the wrong predictions made with the highest confidence, with their top-3.
Nothing is loaded from the network (taskres.reports.htmlpage).
"""

from __future__ import annotations

import io
import logging
import math
from html import escape
from pathlib import Path

import torch

from .htmlpage import data_uri, figure_uri, img, page, table
from ..atomic import atomic_path
from ..metrics import ECE_BINS, TOP_K, class_gains, dense_confusion

log = logging.getLogger("taskres")
CONFUSION_MAX_LABELLED = 30  # above this many classes the picture shows the classes with the most errors
CLASS_ROWS_SHOWN = 15  # with many classes: the most helped and the most hurt, the rest folded away
THUMB_SIZE = 160


def _pct(v) -> str:
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.2f}"


def _delta(v, better_high: bool = True) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    good = v > 0 if better_high else v < 0
    cls = "up" if good and abs(v) >= 0.005 else ("down" if abs(v) >= 0.005 else "")
    return f'<span class="{cls}">{v:+.2f}</span>'


def _cards(ev: dict) -> str:
    m, z = ev["method"], ev.get("zeroshot")
    out = []
    for key, label, high in (("top1", "top-1 %", True), (f"top{TOP_K}", f"top-{TOP_K} %", True),
                             ("macro", "macro (mean per class) %", True), ("ece", f"ECE % ({ECE_BINS} bins)", False)):
        diff = "" if z is None else (f"zero-shot {_pct(z[key])} &middot; "
                                     f"{_delta(m[key] - z[key], high)}")
        out.append(f'<div class="card"><div class="k">{escape(label)}</div><div class="v">{_pct(m[key])}</div>'
                   f'<div class="d">{diff}</div></div>')
    return '<div class="cards">' + "".join(out) + "</div>"


def _gain_bar(gain: float | None) -> str:
    if gain is None:
        return ""
    width = min(abs(gain), 100.0) / 2  # 100 points of gain fill one half
    side = f"left:50%;width:{width:.1f}%;background:var(--up)" if gain >= 0 else (
        f"left:{50 - width:.1f}%;width:{width:.1f}%;background:var(--down)")
    return f'<div class="bar"><span style="{side}"></span><div class="mid"></div></div>'


def _class_table(rows: list[dict]) -> str:
    body = [[escape(r["class"]), str(r["images"]), _pct(r["zeroshot"]), _pct(r["method"]),
             _delta(r["gain"]), _gain_bar(r["gain"])] for r in rows]
    return table(["class", "images", "zero-shot %", "method %", "gain", "zero-shot → method"], body, raw=True,
                 left=1)


def _classes_section(ev: dict) -> str:
    gains = class_gains(ev)
    known = [g for g in gains if g["gain"] is not None]
    helped = sum(g["gain"] > 0 for g in known)
    hurt = sum(g["gain"] < 0 for g in known)
    head = (f"<h2>Per class: method against zero-shot</h2><p class=\"note\">Sorted by gain (method minus zero-shot "
            f"accuracy on the same images). {helped} class(es) improved, {hurt} got worse, "
            f"{len(known) - helped - hurt} unchanged.</p>")
    if len(gains) <= 2 * CLASS_ROWS_SHOWN:
        return f"<section>{head}{_class_table(gains)}</section>"
    top = [g for g in known if g["gain"] > 0][:CLASS_ROWS_SHOWN]
    bottom = [g for g in reversed(known) if g["gain"] < 0][:CLASS_ROWS_SHOWN]  # the worst first
    part = lambda title, rows: f"<h3>{title}</h3>" + (_class_table(rows) if rows else "<p>none</p>")  # noqa: E731
    return (f"<section>{head}{part('Most helped', top)}{part('Most hurt', bottom)}"
            f"<details><summary>all {len(gains)} classes</summary>{_class_table(gains)}</details></section>")


def _confusion_picture(confusion: torch.Tensor, classnames: list[str]) -> tuple[str, str]:
    """The matrix as an inline PNG (row-normalised colour, counts written in small matrices) and a caption."""
    from matplotlib.figure import Figure

    c = confusion.shape[0]
    idx = list(range(c))
    caption = "rows: true class, columns: predicted class; colour: share of the row's images"
    if c > CONFUSION_MAX_LABELLED:  # keep it legible: the classes with the most errors, both ways
        errors = confusion.sum(0) + confusion.sum(1) - 2 * confusion.diag()
        idx = sorted(errors.argsort(descending=True, stable=True)[:CONFUSION_MAX_LABELLED].tolist())
        caption += f"; the {len(idx)} classes (of {c}) with the most errors in or out"
    sub = confusion[idx][:, idx].double()
    share = sub / confusion[idx].sum(1, keepdim=True).clamp(min=1).double()
    n = len(idx)
    side = min(9.0, 2.6 + 0.24 * n)
    fig = Figure(figsize=(side + 0.8, side), layout="constrained")
    ax = fig.add_subplot()
    im = ax.imshow(share.numpy(), cmap="Blues", vmin=0, vmax=1)
    names = [classnames[i] if len(classnames[i]) <= 22 else classnames[i][:21] + "…" for i in idx]
    font = 8 if n <= 15 else 7
    ax.set_xticks(range(n), names, rotation=60, ha="right", rotation_mode="anchor", fontsize=font)
    ax.set_yticks(range(n), names, fontsize=font)
    ax.set_xlabel("predicted", fontsize=9)
    ax.set_ylabel("true", fontsize=9)
    if n <= 15:
        for i in range(n):
            for j in range(n):
                v = int(sub[i, j])
                if v:
                    ax.text(j, i, str(v), ha="center", va="center", fontsize=7,
                            color="white" if share[i, j] > 0.5 else "#1d2330")
    fig.colorbar(im, ax=ax, shrink=0.7).ax.tick_params(labelsize=7)
    return figure_uri(fig), caption


def _confusion_section(ev: dict) -> str:
    names = ev["classnames"]
    conf = dense_confusion(ev["method"], len(names))
    uri, caption = _confusion_picture(conf, names)
    off = conf.clone()
    off.fill_diagonal_(0)
    flat = off.flatten()
    order = flat.argsort(descending=True, stable=True)[:10]
    rows = []
    for k in order.tolist():
        n = int(flat[k])
        if not n:
            break
        t, p = divmod(k, len(names))
        rows.append([escape(names[t]), escape(names[p]), str(n), _pct(100.0 * n / max(1, int(conf[t].sum())))])
    top = (table(["true class", "predicted as", "images", "% of the class"], rows, raw=True, left=2) if rows else
           "<p>No confusions: every image was classified correctly.</p>")
    layout = "two" if len(names) <= 15 else "stack"  # a big matrix gets the page's width
    return (f'<section><h2>Confusion matrix (method)</h2><div class="{layout}"><div>'
            f'{img(uri, "confusion matrix")}<p class="note">{escape(caption)}</p></div>'
            f"<div><h3>Most frequent confusions</h3>{top}</div></div></section>")


def _residual_section(classifier) -> str:
    """||alpha x_c|| against ||t_c|| per class, for a classifier with a base and a non-zero residual."""
    base, residual = getattr(classifier, "base", None), getattr(classifier, "residual", None)
    if getattr(classifier, "kind", "") != "cosine" or base is None or residual is None or not residual.any():
        return ""
    alpha = float(classifier.alpha)
    step = (alpha * residual).norm(dim=1)
    base_norm = base.norm(dim=1)
    rel = step / base_norm.clamp(min=1e-12)
    cos = torch.nn.functional.cosine_similarity(base, base + alpha * residual, dim=1)
    order = rel.argsort(descending=True, stable=True).tolist()
    top = max(float(rel.max()), 1e-12)
    rows = []
    for c in order:
        width = 100.0 * float(rel[c]) / top
        bar = f'<div class="bar"><span style="left:0;width:{width:.1f}%;background:var(--accent)"></span></div>'
        rows.append([escape(classifier.classnames[c]), f"{float(base_norm[c]):.3f}", f"{float(step[c]):.3f}",
                     f"{float(rel[c]):.3f}", f"{math.degrees(math.acos(max(-1.0, min(1.0, float(cos[c]))))):.2f}",
                     bar])
    body = table(["class", "‖t_c‖", "‖α x_c‖", "‖α x_c‖ / ‖t_c‖", "angle t→t′ (°)", ""], rows[:2 * CLASS_ROWS_SHOWN],
                 raw=True)
    more = "" if len(rows) <= 2 * CLASS_ROWS_SHOWN else (
        f"<details><summary>all {len(rows)} classes</summary>"
        + table(["class", "‖t_c‖", "‖α x_c‖", "‖α x_c‖ / ‖t_c‖", "angle t→t′ (°)", ""], rows, raw=True)
        + "</details>")
    return (f"<section><h2>Task residual per class</h2><p class=\"note\">t′ = t + α x with α = {alpha:g}: how far "
            f"the few shots moved each class's text classifier (largest first). The angle is the change of "
            f"direction, which is what the cosine classifier sees.</p>{body}{more}</section>")


def _thumbnail(path: str) -> str | None:
    from ..transforms import ImageError, load_image

    try:
        image = load_image(path)
    except ImageError:
        return None
    image.thumbnail((THUMB_SIZE, THUMB_SIZE))
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=85)
    return data_uri(buf.getvalue(), "image/jpeg")


def _worst_section(ev: dict) -> str:
    worst = ev.get("worst") or []
    if not worst:
        return ("<section><h2>Most confident mistakes</h2><p>None: no test image was misclassified.</p>"
                "</section>")
    cards, missing = [], []
    for w in worst:
        uri = _thumbnail(w["image"])
        if uri is None:
            missing.append(w["image"])
        picture = img(uri, w["image"], cls="") if uri else '<div class="note">(image unreadable)</div>'
        preds = "".join(f'<li class="{"hit" if name == w["label"] else ""}">{escape(name)} '
                        f"{100 * p:.1f}%</li>" for name, p in w["top3"])
        cards.append(f'<div class="thumb" title="{escape(w["image"])}">{picture}<div class="t">true: '
                     f"<b>{escape(w['label'])}</b> ({100 * w['true_probability']:.1f}%)</div><ol>{preds}</ol></div>")
    if missing:
        log.warning("report.html: %d of %d mistake thumbnail(s) could not be read (e.g. %s)", len(missing),
                    len(worst), missing[0])
    return (f'<section><h2>Most confident mistakes</h2><p class="note">The {len(worst)} wrong predictions with the '
            f"highest confidence, with the method's top-3 (the true class in green if it is among them).</p>"
            f'<div class="grid">{"".join(cards)}</div></section>')


def _split_table(evaluations: dict) -> str:
    rows = []
    for name, ev in evaluations.items():
        for label, key in (("method", "method"), ("zero-shot", "zeroshot")):
            if key in ev:
                e = ev[key]
                rows.append([name, label, str(ev["num_images"]), _pct(e["top1"]), _pct(e[f"top{TOP_K}"]),
                             _pct(e["macro"]), _pct(e["ece"])])
    return table(["split", "classifier", "images", "top-1 %", f"top-{TOP_K} %", "macro %", "ECE %"], rows, left=2)


def _auto_section(auto: dict | None) -> str:
    """--method auto: every candidate's validation score and the one kept."""
    if not auto:
        return ""
    rows = [[("&#10003; " if c["method"] == auto["chosen"] else "") + escape(c["method"]), _pct(c["val_top1"]),
             str(c["val_correct"]) if c["error"] is None else "", f"{c['fit_seconds']:.1f}",
             escape(c["error"] or "")] for c in auto["candidates"]]
    return (f"<section><h2>Method chosen on validation: {escape(auto['chosen'])}</h2>"
            + table(["candidate", "val top-1 %", f"correct of {auto['val_images']}", "fit s", "error"], rows,
                    raw=True, left=1)
            + f"<p class=\"note\">{escape(auto['rule'])}. Candidates in tie-break order; only the validation "
              "split was used to choose. Methods that search their own settings on the same images arrive with an "
              "optimistic validation score.</p></section>")


def render_run_report(metrics: dict, classifier=None) -> str:
    """The page for a run's metrics (api.fit's) and, when given, its classifier."""
    evaluations = metrics.get("evaluation") or {}
    bb = metrics.get("backbone") or {}
    title = f"{metrics.get('method')} on {metrics.get('dataset')}"
    parts = [f"<h1>{escape(title)}</h1>",
             f'<p class="sub">{metrics.get("shots")} shots per class, seed {metrics.get("seed")} &middot; backbone '
             f'{escape(str(bb.get("model")))} ({escape(str(bb.get("pretrained")))}) &middot; '
             f'{metrics.get("num_train")} training images &middot; fitted in {metrics.get("fit_seconds")} s</p>']
    parts.append(_auto_section(metrics.get("auto")))
    if not evaluations:
        parts.append("<section><p>No evaluated split in metrics.json.</p></section>")
    for i, (name, ev) in enumerate(evaluations.items()):
        if len(evaluations) > 1:
            parts.append(f"<h2>Split: {escape(name)}</h2>")
        parts.append(_cards(ev))
        if i == 0:
            parts.append(f"<section><h2>Headline</h2>{_split_table(evaluations)}<p class=\"note\">Zero-shot: the "
                         f"run's frozen text classifier t on the same images. Macro: mean of the per-class "
                         f"accuracies. ECE: expected calibration error of the top-1 confidence, {ECE_BINS} "
                         f"equal-width bins.</p></section>")
        parts += [_classes_section(ev), _confusion_section(ev)]
        if i == 0 and classifier is not None:
            parts.append(_residual_section(classifier))
        parts.append(_worst_section(ev))
    return page(f"taskres: {title}", "\n".join(p for p in parts if p))


def write_run_report(path: str | Path, metrics: dict, classifier=None) -> Path:
    path = Path(path)
    with atomic_path(path) as tmp:
        # surrogateescape: an image whose name is not UTF-8 is named by its own bytes, not a crash
        tmp.write_text(render_run_report(metrics, classifier), encoding="utf-8", errors="surrogateescape")
    return path
