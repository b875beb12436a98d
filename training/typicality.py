"""Fit the classifier's typicality reference (``ctai.model.typicality``) and measure its flag rates.

The reference is fitted on the training split's features, its limit set so that ``--flag-rate``
of the validation split's films lie beyond it. Then it reports the share flagged of: the
validation films, the same films under each shift of the benchmark suite (``training.shifts``),
photographed (``training.shifts.photo``), and the real films of other hospitals in a folder
with a ``MANIFEST.csv`` (``../shared/data/external-dev``), per source.

    python -m training.typicality --data ../shared/data/chest_xray/train \\
        --external ../shared/data/external-dev --model ctai/model/artifact --save
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

from ctai.inputs.images import read_gray
from ctai.model.backend import CalibratedClassifier, members
from ctai.model.converted import ConvertedClassifier
from ctai.model.preprocess import to_model_input
from ctai.model.storage import load_network
from ctai.model.typicality import fit
from training import data, shifts


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, required=True, help="folder with NORMAL/ and PNEUMONIA/")
    p.add_argument("--model", type=Path, default=Path("ctai/model/artifact"))
    p.add_argument("--external", type=Path, help="real films of other hospitals, with MANIFEST.csv")
    p.add_argument("--shrinkage", type=float, default=0.003, help="of each block's covariance towards the identity")
    p.add_argument("--flag-rate", type=float, default=0.02, help="share of validation films beyond the limit")
    p.add_argument("--work", type=Path, default=Path("training-work-typicality"), help="cached features, report")
    p.add_argument("--save", action="store_true", help="write the reference into --model")
    data.add_split_arguments(p)
    return p.parse_args(argv)


def features(classifier: CalibratedClassifier, images: list[np.ndarray]) -> np.ndarray:
    x = np.stack([to_model_input(image, classifier.input_size) for image in images])
    return np.concatenate([classifier.outputs(x[i:i + 64]).features for i in range(0, len(x), 64)])


def external_sources(folder: Path) -> dict[str, list[Path]]:
    """The films of ``folder``'s MANIFEST.csv, by the data set their source repository sampled."""
    by_source: dict[str, list[Path]] = defaultdict(list)
    with (folder / "MANIFEST.csv").open() as f:
        for row in csv.DictReader(f):
            by_source[row["file"].split("/")[-1].split("__")[0]].append(folder / row["file"])
    return dict(by_source)


def main(argv=None) -> None:
    args = parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    classifier = ConvertedClassifier(args.model, "onnxruntime", args.work / "converted")
    train_s, val_s, _ = data.load(args.data, args.val_fraction, args.split_seed)
    t0 = time.time()
    train = features(classifier, [read_gray(s.path) for s in train_s])
    validation_images = [read_gray(s.path) for s in val_s]
    validation = features(classifier, validation_images)
    seconds = (time.time() - t0) / (len(train) + len(validation))
    blocks = len(members(load_network(args.model)))  # each member's features are one block
    reference = fit(train, validation, blocks, args.shrinkage, args.flag_rate)

    flagged = {"validation": float(np.mean(reference.scores(validation) > 1))}
    for shift in shifts.suite():
        shifted = features(classifier, [shift.apply(image) for image in validation_images])
        flagged[f"validation, {shift.name} {shift.strength}"] = float(np.mean(reference.scores(shifted) > 1))
    photos = features(classifier, [shifts.photo(image, seed=i) for i, image in enumerate(validation_images)])
    flagged["validation, photographed"] = float(np.mean(reference.scores(photos) > 1))
    for source, paths in (external_sources(args.external) if args.external else {}).items():
        scores = reference.scores(features(classifier, [read_gray(p) for p in paths]))
        flagged[f"external {source} ({len(paths)})"] = float(np.mean(scores > 1))
    report = {"blocks": blocks, "shrinkage": args.shrinkage, "flag_rate": args.flag_rate, "limit": reference.limit,
              "train": len(train), "validation": len(validation), "seconds_per_image": seconds, "flagged": flagged}
    (args.work / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    if args.save:
        print("saved", reference.save(args.model))
        meta = json.loads((args.model / "model.json").read_text())
        meta["expected"]["atypical_share"] = args.flag_rate  # drift's expectation (ctai.site.drift)
        (args.model / "model.json").write_text(json.dumps(meta, indent=2) + "\n")


if __name__ == "__main__":
    main()
