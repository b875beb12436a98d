"""Shift benchmark: the classifier's metrics on the validation split under realistic acquisition
changes (``training.shifts.suite``), then the worst case and the mean over the shifts.

    .venv/bin/python benchmarks/robustness.py --data ../shared/data/chest_xray/train
    .venv/bin/python benchmarks/robustness.py --data ... --model A --model B --json shift.json
    .venv/bin/python benchmarks/robustness.py --data ... --model M --held-out-source 'NORMAL/IM-*'
    .venv/bin/python benchmarks/robustness.py --data ... --model M --member-logits m.npz

``--model`` (repeatable; default the shipped model) is a model folder (``model.keras`` or ``model.f16.npz``) and
``model.json``. The split options are training's, so the benchmark sees exactly the patients
training kept out. ``--held-out-source`` is the leave-source-out check: for a model trained
with the same option, the images matching the glob were never seen, and a separate line gives
the metrics on them alone. ``--all`` uses every image under ``--data`` (a smoke run on a few
images). ``--member-logits`` also saves every member network's raw logits under every shift, for
``benchmarks/ensembles.py`` to score ensembles that were never built; ``--equalize`` is for
models trained with ``training.train --equalize``. Prints numbers, asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from ctai import evaluation
from ctai.inputs.images import read_gray
from ctai.labelled_folder import Sample, scan
from ctai.model.backend import KerasClassifier, shipped_model_dir
from ctai.model.preprocess import to_model_input
from training import augment, data, shifts

COLUMNS = ("acc", "bal_acc", "sens", "spec", "auc_pn", "auc_bv", "logloss", "ece")  # ctai.evaluation.summary
LOWER_IS_BETTER = {"logloss", "ece"}


def aggregate(rows: list[dict[str, float | None]]) -> tuple[dict, dict]:
    """Worst case (lowest, or highest for log-loss and ECE) and mean of each column."""
    worst, mean = {}, {}
    for column in COLUMNS:
        values = [r[column] for r in rows if r[column] is not None]
        if not values:
            worst[column] = mean[column] = None
            continue
        worst[column] = max(values) if column in LOWER_IS_BETTER else min(values)
        mean[column] = float(np.mean(values))
    return worst, mean


def evaluate(classifiers: list[KerasClassifier], images: list[np.ndarray], labels: np.ndarray,
             suite: list[shifts.Shift], networks: dict[str, object] | None = None, equalize: bool = False
             ) -> tuple[list[list[dict]], dict[str, np.ndarray]]:
    """For each shift, each classifier's summary: ``result[shift][model]``; and the raw logits
    of each of ``networks`` (name -> Keras model, same input size as the first classifier)
    under every shift: ``logits[name][shift]``. ``equalize``: for models trained with
    ``--equalize``, the shifted image is histogram-equalised before preprocessing."""
    finish = augment.equalize if equalize else (lambda image: image)
    results, logits = [], {name: [] for name in networks or {}}
    for shift in suite:
        inputs: dict[int, np.ndarray] = {}
        row = []
        for classifier in classifiers:
            size = classifier.input_size
            if size not in inputs:
                inputs[size] = np.stack([to_model_input(finish(shift.apply(image)), size) for image in images])
            row.append(evaluation.summary(evaluation.compute(labels, classifier.predict(inputs[size]))))
        results.append(row)
        for name, network in (networks or {}).items():
            logits[name].append(network.predict(inputs[classifiers[0].input_size], batch_size=256, verbose=0))
    return results, {name: np.stack(rows).astype(np.float32) for name, rows in logits.items()}


def member_networks(folders: list[Path]) -> dict[str, object]:
    """Every member network of every model folder, named ``<folder>#<index>``."""
    import keras

    from ctai.model.backend import members
    from ctai.model.storage import load_network

    return {f"{str(folder).strip('/').replace('/', '.')}#{i}": keras.Model(n.input, n.output)
            for folder in folders for i, n in enumerate(members(load_network(folder)))}


def _fmt(value: float | None) -> str:
    return f"{value:>8.3f}" if value is not None else f"{'n/a':>8}"


def table(name: str, suite: list[shifts.Shift], rows: list[dict], worst: dict, mean: dict) -> str:
    lines = [f"model {name}", f"{'shift':<12}{'strength':<14}" + "".join(f"{c:>8}" for c in COLUMNS)]
    lines += [f"{s.name:<12}{s.strength:<14}" + "".join(_fmt(r[c]) for c in COLUMNS)
              for s, r in zip(suite, rows, strict=True)]
    lines += [f"{'worst case':<26}" + "".join(_fmt(worst[c]) for c in COLUMNS),
              f"{'mean':<26}" + "".join(_fmt(mean[c]) for c in COLUMNS)]
    return "\n".join(lines)


def samples_for(args: argparse.Namespace) -> tuple[list[Sample], list[Sample]]:
    """The images to shift (validation split, or all) and the held-out source's images."""
    if args.all:
        return scan(args.data), []
    _, val, held_out = data.load(args.data, args.val_fraction, args.split_seed, args.held_out_source)
    return val, held_out


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, required=True, help="folder with NORMAL/ and PNEUMONIA/")
    p.add_argument("--model", type=Path, action="append", help="model folder (repeatable; default: shipped)")
    data.add_split_arguments(p)
    p.add_argument("--held-out-source", metavar="GLOB", help="images the model was trained without")
    p.add_argument("--all", action="store_true", help="every image under --data, no split")
    p.add_argument("--json", type=Path, help="also write every number here")
    p.add_argument("--equalize", action="store_true", help="for models trained with training.train --equalize")
    p.add_argument("--member-logits", type=Path, metavar="NPZ",
                   help="also save each member network's raw logits under every shift (benchmarks/ensembles.py)")
    return p.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    folders = args.model or [shipped_model_dir()]
    classifiers = [KerasClassifier(f) for f in folders]
    samples, held_out = samples_for(args)
    t0 = time.perf_counter()
    suite = shifts.suite()
    labels = np.array([s.label for s in samples])
    networks = member_networks(folders) if args.member_logits else None
    results, logits = evaluate(classifiers, [read_gray(s.path) for s in samples], labels, suite, networks,
                               args.equalize)
    if args.member_logits:
        names = np.array([f"{s.name} {s.strength}" for s in suite])
        np.savez_compressed(args.member_logits, labels=labels, shifts=names, **logits)
    out: dict = {"images": len(samples), "shifts": [[s.name, s.strength] for s in suite], "models": []}
    for i, (folder, classifier) in enumerate(zip(folders, classifiers, strict=True)):
        rows = [r[i] for r in results]
        worst, mean = aggregate(rows[1:])  # the first row is the unshifted image
        name = f"{folder} ({classifier.info.name} {classifier.info.version})"
        print(table(name, suite, rows, worst, mean), end="\n\n")
        out["models"].append({"model": str(folder), "version": classifier.info.version, "rows": rows,
                              "worst": worst, "mean": mean})
    if held_out:
        images = [read_gray(s.path) for s in held_out]
        labels = np.array([s.label for s in held_out])
        unseen = evaluate(classifiers, images, labels, suite[:1], equalize=args.equalize)[0][0]
        print(f"leave-source-out: {len(held_out)} images matching {args.held_out_source}, never trained on")
        for folder, row in zip(folders, unseen, strict=True):
            print(f"  {str(folder):<40}" + "".join(f"{c} {_fmt(row[c]).strip()}  " for c in ("acc", "spec")))
        for entry, row in zip(out["models"], unseen, strict=True):
            entry["held_out_source"] = {"glob": args.held_out_source, "images": len(held_out), **row}
    print(f"{len(samples)} images x {len(suite)} shifts x {len(classifiers)} model(s) in "
          f"{time.perf_counter() - t0:.0f} s", file=sys.stderr)
    if args.json:
        args.json.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
