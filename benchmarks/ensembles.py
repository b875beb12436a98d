"""Compare candidate ensembles under the shift benchmark without building them: each candidate
averages the raw logits that ``benchmarks/robustness.py --member-logits`` saved for its
members, is calibrated on the unshifted validation split (as ``training.ensemble`` does), and
gets the benchmark's columns per shift, the worst case and the mean.

    .venv/bin/python benchmarks/ensembles.py --logits a.npz b.npz --list
    .venv/bin/python benchmarks/ensembles.py --logits a.npz b.npz \\
        --candidate 'old=*artifact#0,*artifact#1' --candidate 'new=gpu.m4?*'

A candidate is ``NAME=GLOB[,GLOB...]`` over the member names (``--list`` prints them). A
two-stage candidate, ``NAME=GLOBS:BV_GLOBS``, takes p(normal) from the first members' mean and
splits the rest between bacterial and viral as the second members' mean does, before one
calibration (``ctai.model.heads``; ``training.ensemble --split-members`` builds it). Prints
numbers, asserts nothing.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from robustness import aggregate  # noqa: E402

from ctai import evaluation  # noqa: E402
from ctai.model.heads import two_stage_logits  # noqa: E402
from training.calibrate import calibrated, fit  # noqa: E402


def load(paths: list[Path]) -> tuple[np.ndarray, list[str], dict[str, np.ndarray]]:
    """Labels, shift names and every member's logits ``[shift, image, class]`` from the files,
    which must come from the same images and suite."""
    labels, names, logits = None, None, {}
    for path in paths:
        with np.load(path) as f:
            if labels is not None and not (np.array_equal(labels, f["labels"]) and names == list(f["shifts"])):
                raise SystemExit(f"{path}: other images or shifts than {paths[0]}")
            labels, names = f["labels"], list(f["shifts"])
            logits.update({k: f[k] for k in f.files if k not in ("labels", "shifts")})
    return labels, names, logits


def probabilities(labels: np.ndarray, logits: np.ndarray, priors: np.ndarray | None) -> np.ndarray:
    """``[shift, image, class]`` probabilities of an ensemble's ``logits``, calibrated on shift 0."""
    temperature, bias = fit(logits[0], labels, priors)
    return np.stack([calibrated(shifted, temperature, np.array(bias)) for shifted in logits])


def members(logits: dict[str, np.ndarray], globs: str) -> list[str]:
    return [k for k in logits if any(fnmatch.fnmatch(k, g) for g in globs.split(","))]


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--logits", type=Path, nargs="+", required=True)
    p.add_argument("--candidate", action="append", default=[], metavar="NAME=GLOB[,GLOB...]")
    p.add_argument("--priors", type=float, nargs=3, help="class priors the probabilities are for")
    p.add_argument("--list", action="store_true", help="print the member names")
    p.add_argument("--json", type=Path, help="also write every number here")
    args = p.parse_args(argv)
    labels, shift_names, logits = load(args.logits)
    if args.list:
        print("\n".join(logits))
    head = ("val acc", "val AUC bv", "val sens", "val spec", "val logloss", "worst spec", "(worst shift)",
            "mean spec", "mean acc", "mean AUC bv", "mean logloss", "mean ECE")
    print(f"{'candidate':<16}{'members':>8}" + "".join(f"{h:>13}" for h in head))
    out = {}
    for spec in args.candidate:
        name, _, globs = spec.partition("=")
        priors = np.array(args.priors) if args.priors else None
        stages = [members(logits, part) for part in globs.split(":")]
        if not all(stages):
            raise SystemExit(f"{name}: no member matches {globs}")
        means = [np.mean([logits[k] for k in keys], axis=0).astype(np.float64) for keys in stages]
        combined = np.asarray(two_stage_logits(*means)) if len(means) == 2 else means[0]
        shifted = probabilities(labels, combined, priors)
        rows = [evaluation.summary(evaluation.compute(labels, probs)) for probs in shifted]
        keys = sorted(set().union(*stages))
        worst, mean = aggregate(rows[1:])
        at = shift_names[1 + int(np.argmin([r["spec"] for r in rows[1:]]))]
        values = (rows[0]["acc"], rows[0]["auc_bv"], rows[0]["sens"], rows[0]["spec"], rows[0]["logloss"],
                  worst["spec"], at, mean["spec"], mean["acc"], mean["auc_bv"], mean["logloss"], mean["ece"])
        print(f"{name:<16}{len(keys):>8}" + "".join(f"{v:>13.3f}" if isinstance(v, float) else f"{v:>16}"
                                                    for v in values))
        out[name] = {"members": keys, "rows": rows, "worst": worst, "mean": mean}
    if args.json:
        args.json.write_text(json.dumps({"shifts": shift_names, "candidates": out}, indent=2) + "\n")


if __name__ == "__main__":
    main()
