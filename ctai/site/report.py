"""Local validation: the numbers with 95 % intervals as text, and a self-contained HTML report
(figures embedded as PNG) that a go-live committee can read."""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Callable
from datetime import datetime
from typing import Any

import numpy as np
from sklearn.metrics import confusion_matrix, roc_curve

from ctai.site.cases import NAMES, NORMAL, PNEUMONIA, VIRAL, Cases, intervals, summary
from ctai.types import CLASSES

#: The numbers shown, in order, with their names.
SHOWN = {"acc": "3-class accuracy", "sens": "sensitivity (pneumonia)", "spec": "specificity (pneumonia)",
         "auc_pn": "pneumonia-vs-normal ROC AUC", "auc_bv": "bacterial-vs-viral ROC AUC", "logloss": "log-loss",
         "ece": "expected calibration error"}
AGE_BANDS = ((0, 1, "under 1 year"), (1, 5, "1-4 years"), (5, 12, "5-11 years"), (12, 18, "12-17 years"),
             (18, 200, "18 years and over"))


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def measure(cases: Cases, probs: np.ndarray, rounds: int = 1000) -> dict[str, Any]:
    """The ``summary`` numbers of ``probs`` against the truth, their intervals and the confusion matrix."""
    y, _ = cases.arrays()
    known = y != PNEUMONIA
    cm = confusion_matrix(y[known], probs[known].argmax(axis=1), labels=range(len(CLASSES)))
    return {**summary(y, probs), "intervals": intervals(y, probs, cases.patients, rounds),
            "confusion": cm.tolist(), "unspecified_pneumonia": int((~known).sum())}


def text(numbers: dict[str, Any]) -> str:
    """The numbers, their intervals and the confusion matrix as a text table."""
    lines = [f"{'':<32}{'value':>8}   95 % interval (bootstrap by patient)"]
    for key, name in SHOWN.items():
        interval = numbers["intervals"].get(key)
        span = f"{_fmt(interval[0])} to {_fmt(interval[1])}" if interval else ""
        lines.append(f"{name:<32}{_fmt(numbers[key]):>8}   {span}")
    lines += ["", "confusion matrix (rows: truth, columns: predicted)",
              "            " + "".join(f"{c:>11}" for c in CLASSES),
              *(f"{c:<12}" + "".join(f"{v:>11}" for v in row) for c, row in zip(CLASSES, numbers["confusion"],
                                                                                  strict=True))]
    if numbers["unspecified_pneumonia"]:
        lines.append(f"(and {numbers['unspecified_pneumonia']} pneumonias of unstated kind: in sensitivity, "
                     "pneumonia AUC and log-loss only)")
    return "\n".join(lines)


def _png(draw: Callable[[Any], None], title: str) -> str:
    """A matplotlib figure as an ``<img>`` with a data URI."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    figure = Figure(figsize=(4.2, 3.6), dpi=110, layout="constrained")
    draw(figure.add_subplot())
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    data = base64.b64encode(buffer.getvalue()).decode()
    return f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(title)}"><figcaption>' \
           f'{html.escape(title)}</figcaption></figure>'


def _roc(y: np.ndarray, probs: np.ndarray) -> Callable[[Any], None]:
    def draw(ax) -> None:
        sick = y != NORMAL
        if 0 < sick.sum() < len(y):
            fpr, tpr, _ = roc_curve(sick, 1.0 - probs[:, NORMAL])
            ax.plot(fpr, tpr, label="pneumonia vs normal")
        kinds = (y != NORMAL) & (y != PNEUMONIA)
        viral = y[kinds] == VIRAL
        if 0 < viral.sum() < len(viral):
            p = probs[kinds]
            fpr, tpr, _ = roc_curve(viral, p[:, VIRAL] / np.maximum(p[:, 1:].sum(axis=1), 1e-12))
            ax.plot(fpr, tpr, label="viral vs bacterial")
        ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
        ax.set(xlabel="1 - specificity", ylabel="sensitivity", xlim=(0, 1), ylim=(0, 1.01))
        ax.legend(loc="lower right", fontsize=8)
    return draw


def _reliability(y: np.ndarray, probs: np.ndarray, bins: int = 10) -> Callable[[Any], None]:
    def draw(ax) -> None:
        known = y != PNEUMONIA
        confidence, correct = probs[known].max(axis=1), probs[known].argmax(axis=1) == y[known]
        edges = np.linspace(0, 1, bins + 1)
        which = np.clip(np.digitize(confidence, edges) - 1, 0, bins - 1)
        filled = [b for b in range(bins) if (which == b).any()]
        ax.bar([edges[b] + 0.05 for b in filled], [correct[which == b].mean() for b in filled], width=0.09,
               color="#4c72b0", label="observed accuracy")
        ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1, label="perfect calibration")
        ax.set(xlabel="top-class probability", ylabel="share correct", xlim=(0, 1), ylim=(0, 1))
        ax.legend(loc="upper left", fontsize=8)
    return draw


def _confusion(cm: list[list[int]]) -> Callable[[Any], None]:
    def draw(ax) -> None:
        matrix = np.array(cm)
        ax.imshow(matrix, cmap="Blues")
        for (i, j), value in np.ndenumerate(matrix):
            ax.text(j, i, str(value), ha="center", va="center",
                    color="white" if value > matrix.max() / 2 else "black")
        ax.set(xticks=range(len(CLASSES)), yticks=range(len(CLASSES)), xticklabels=CLASSES, yticklabels=CLASSES,
               xlabel="predicted", ylabel="truth")
    return draw


def _band(age: object) -> str:
    if not isinstance(age, (int, float)):
        return "unknown"
    return next((name for low, high, name in AGE_BANDS if low <= age < high), "unknown")


def breakdown(cases: Cases, probs: np.ndarray) -> dict[str, list[tuple[str, int, dict]]]:
    """Per modality, manufacturer and age band (where the headers give them): n and the numbers."""
    y, _ = cases.arrays()
    groups = {"modality": [h.get("modality") or "unknown" for h in cases.headers],
              "manufacturer": [h.get("manufacturer") or "unknown" for h in cases.headers],
              "age": [_band(h.get("age")) for h in cases.headers]}
    found = {}
    for name, values in groups.items():
        if set(values) == {"unknown"}:
            continue
        rows = []
        for value in sorted(set(values)):
            mask = np.array(values) == value
            rows.append((value, int(mask.sum()), summary(y[mask], probs[mask])))
        found[name] = rows
    return found


def _table(head: list[str], rows: list[list[str]]) -> str:
    cells = "".join(f"<th scope=col>{html.escape(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{cells}</tr></thead><tbody>{body}</tbody></table>"


STYLE = """body{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;color:#222}
table{border-collapse:collapse;margin:1rem 0}td,th{border:1px solid #bbb;padding:.25rem .6rem;text-align:right}
th:first-child,td:first-child{text-align:left}figure{display:inline-block;margin:.5rem}
figcaption{text-align:center;font-size:.9rem}img{max-width:100%}.note{color:#555}"""


def html_report(title: str, facts: list[tuple[str, str]], cases: Cases, probs: np.ndarray,
                numbers: dict[str, Any], notes: list[str]) -> str:
    """The whole report as one HTML document: no script, no outside file."""
    y, _ = cases.arrays()
    counts = cases.counts()
    facts = [*facts, ("cases", f"{len(y)} ({', '.join(f'{counts[n]} {n}' for n in NAMES.values() if counts[n])})"),
             ("patients", str(len(set(cases.patients)))),
             ("written", datetime.now().astimezone().isoformat(timespec="seconds"))]
    metric_rows = [[name, _fmt(numbers[key]),
                    f"{_fmt(numbers['intervals'][key][0])} to {_fmt(numbers['intervals'][key][1])}"
                    if numbers["intervals"].get(key) else "n/a"] for key, name in SHOWN.items()]
    parts = [f"<h1>{html.escape(title)}</h1>",
             "<table><tbody>" + "".join(f"<tr><th scope=row>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>"
                                        for k, v in facts) + "</tbody></table>",
             "<h2>Numbers</h2>", _table(["measure", "value", "95 % interval (bootstrap by patient)"], metric_rows),
             "<h2>Figures</h2>",
             _png(_roc(y, probs), "ROC curves"), _png(_reliability(y, probs), "Reliability diagram"),
             _png(_confusion(numbers["confusion"]), "Confusion matrix (rows: truth)"),
             "<h2>Confusion matrix</h2>",
             _table(["truth \\ predicted", *CLASSES], [[c, *map(str, row)] for c, row in
                                                      zip(CLASSES, numbers["confusion"], strict=True)])]
    for name, rows in breakdown(cases, probs).items():
        parts += [f"<h2>By {html.escape(name)}</h2>",
                  _table([name, "cases", "3-class accuracy", "sensitivity", "specificity"],
                         [[value, str(n), _fmt(s["acc"]), _fmt(s["sens"]), _fmt(s["spec"])] for value, n, s in rows])]
    parts += [f'<p class="note">{html.escape(note)}</p>' for note in notes]
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f'<meta name="viewport" content="width=device-width, initial-scale=1"><style>{STYLE}</style></head>'
            f'<body><main>{"".join(parts)}</main></body></html>\n')
