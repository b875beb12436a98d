"""``ctai site validate`` and ``ctai site calibrate``: from a site's truth to a report or to a
new calibration version, nothing stored unless every step succeeded."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import numpy as np

from ctai.config import Config, data_dir
from ctai.site import calibration, drift, report, sources, state
from ctai.site.cases import NAMES, Cases
from ctai.site.sources import Matching
from ctai.types import CLASSES


class Refused(ValueError):
    """The site's cases cannot support a calibration; the message says why and what would."""


def _matching_lines(matching: Matching | None) -> list[str]:
    if matching is None:
        return []
    lines = [f"RIS rows: {matching.rows}, matched {matching.rows - len(matching.unmatched) - len(matching.duplicates)}"
             f", unmatched {len(matching.unmatched)}, duplicates {len(matching.duplicates)}"]
    lines += [f"  unmatched (no recorded result): {u}" for u in matching.unmatched]
    lines += [f"  duplicate (ignored): {d}" for d in matching.duplicates]
    return lines


def _counts_line(cases: Cases) -> str:
    counts = cases.counts()
    line = (f"{len(cases.y)} cases ({', '.join(f'{counts[n]} {n}' for n in NAMES.values() if counts[n])}), "
            f"{len(set(cases.patients))} patients")
    return "\n".join([line, *(f"  refused, not counted: {r}" for r in cases.refused)])


def _in_force(config: Config, cases: Cases) -> tuple[np.ndarray, str]:
    """The cases' probabilities under the calibration in force, and its name."""
    _, own = cases.arrays()
    active = state.active(config)
    if active is None:
        return own, state.OWN
    return calibration.apply(own, active.temperature, np.array(active.bias)), f"site calibration {active.id}"


def validate(config: Config, source: Path, report_path: Path | None) -> str:
    """Measure the calibration in force on ``source``'s cases; write the HTML report; keep the
    cases' statistics as the site's validated period (the drift baseline)."""
    cases, matching = sources.load(source, config)
    if not cases.y:
        raise sources.SourceError(f"{source}: no case to validate on" + "\n".join(["", *_matching_lines(matching)]))
    probs, name = _in_force(config, cases)
    numbers = report.measure(cases, probs)
    now = datetime.now().astimezone()
    active = state.active(config)
    path = report_path or data_dir(config) / "site" / "reports" / f"validation-{now:%Y%m%dT%H%M%S}.html"
    facts = [("source", str(source)), ("calibration", name), ("mode", state.mode(config))]
    notes = ["Intervals: percentile bootstrap over patients (1,000 rounds). They describe other patients like "
             "these, not other times, rooms or populations."] + _matching_lines(matching)
    page = report.html_report("ctai: local validation", facts, cases, probs, numbers, notes)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page)
    drift.save_baseline(config, active.id if active else None, now.isoformat(timespec="seconds"), probs)
    return "\n".join([f"validation of {name} on {_counts_line(cases)}", *_matching_lines(matching), "",
                      report.text(numbers), "", f"report: {path}"])


def _check_counts(cases: Cases, minimum: int) -> bool:
    """Raise ``Refused`` below ``minimum`` normal or pneumonia cases; whether bacterial and viral
    are too few to get biases of their own."""
    counts = cases.counts()
    pneumonia = len(cases.y) - counts["normal"]
    if counts["normal"] < minimum or pneumonia < minimum:
        raise Refused(f"too few labelled cases: {counts['normal']} normal and {pneumonia} pneumonia; at least "
                      f"{minimum} of each are needed ([site] min_cases_per_class): with fewer, the cross-validated "
                      "sensitivity and specificity are too uncertain to decide anything (a 95 % interval wider "
                      "than about +-0.1). Nothing was changed.")
    return min(counts["bacterial"], counts["viral"]) < minimum


def calibrate(config: Config, source: Path, who: str) -> str:
    """Fit, compare by cross-validation and put in force a new calibration version."""
    settings = config["site"]
    cases, matching = sources.load(source, config)
    tie_kinds = _check_counts(cases, int(settings["min_cases_per_class"]))
    y, own = cases.arrays()
    floor = float(settings["min_sensitivity"])
    comparison = calibration.compare(y, own, cases.patients, floor, int(settings["folds"]), tie_kinds)
    temperature, bias = calibration.fit(y, own, comparison.chosen, tie_kinds, floor)
    probs = calibration.apply(own, temperature, bias)
    now = datetime.now().astimezone()
    expected = drift.expectation(probs)
    found = calibration.Calibration(
        id=calibration.new_id(now), created=now.isoformat(timespec="seconds"), model=state.configured_model(config),
        method=comparison.chosen, temperature=temperature, bias=[float(b) for b in bias], cases=cases.counts(),
        patients=len(set(cases.patients)), source=str(source), expected=comparison.after,
        label_shares=expected["label_shares"], mean_top_probability=expected["mean_top_probability"])
    state.save(config, found, who)
    drift.save_baseline(config, found.id, found.created, probs)
    return "\n".join([f"calibration on {_counts_line(cases)}, cross-validated by patient ({settings['folds']} folds)",
                      *_matching_lines(matching), *([f"fewer than {settings['min_cases_per_class']} bacterial or "
                                                     "viral: they share one bias"] if tie_kinds else []),
                      "", calibration.table(comparison, floor), "",
                      f"in force now: {found.id} ({found.method}, temperature {temperature:.3f}, biases "
                      + ", ".join(f"{c} {b:+.3f}" for c, b in zip(CLASSES, bias, strict=True)) + ")",
                      "undo: ctai site calibrate --reset (the model's own) or --use ID (an earlier version)"])


def status(config: Config) -> str:
    """The mode, the calibration in force, every version kept, and the history of changes."""
    active = state.active(config)
    lines = [f"mode: {state.mode(config)}",
             f"calibration: {active.id if active else state.OWN}", "", "versions:"]
    for version in state.versions(config):
        point = version.expected
        lines.append(f"  {version.id}  {version.created}  {version.method:<17} {sum(version.cases.values())} cases"
                     f"  expected sensitivity {point.get('sens', 0):.3f} specificity {point.get('spec', 0):.3f}"
                     f"  for {version.model}")
    lines += ["", "history:"] + [f"  {h['when']}  {h['who']}  " + ", ".join(f"{k} {v}" for k, v in h.items()
                                                                            if k not in ("when", "who"))
                                 for h in state.history(config)]
    return "\n".join(lines)
