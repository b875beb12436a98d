"""Train the input gate (``ctai.model.gate``): frontal chest radiographs against everything else.

Positives: the training split's radiographs (with the classifier's shift-robust augmentation)
and simulated phone photos of them (``training.shifts.photo``), and with ``--real`` the real
frontal films of other hospitals (``training.gate_sources``) of its train split. Negatives: the
training split of ``training.nonchest`` and the real non-chest images of that train split.
Measured on what training never saw: the validation split's radiographs, plain, under every
shift of the benchmark suite and photographed; the held-out split of the non-chest corpus, per
category; and the held-out real images, per source and kind. A fifth of the real train split
(by path) is kept out of training as validation. The threshold is the highest that still
accepts ``--accept`` of the validation radiographs and ``--accept-real`` of the real
validation films, so it is chosen without looking at any held-out image.

    python -m training.gate --data ../shared/data/chest_xray/train --real /work/shared-extra/gate \
        --out ctai/model/gate-artifact
    python -m training.gate --data ../shared/data/chest_xray/train --real /work/shared-extra/gate \
        --evaluate ctai/model/gate-artifact --threshold 0.95  # measure a gate, without training

Train it under ``KERAS_BACKEND=jax``: under TensorFlow the threads that feed ``model.fit`` crashed
in Pillow here (a segmentation fault in its filters, not investigated further).
"""

from __future__ import annotations

import argparse
import csv
import json
import time
import zlib
from collections import defaultdict
from pathlib import Path

import numpy as np

from ctai.inputs.images import read_gray
from ctai.model.preprocess import PREPROCESSING
from training import data, nonchest, shifts

SIDE = 224  # images are held as SIDE x SIDE uint8 between augmentations


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, required=True, help="folder with NORMAL/ and PNEUMONIA/")
    p.add_argument("--out", type=Path, help="where to write model.keras and model.json")
    p.add_argument("--evaluate", type=Path, metavar="DIR", help="only measure the gate in DIR")
    p.add_argument("--threshold", type=float, help="measure at this threshold (default: from --accept)")
    p.add_argument("--work", type=Path, default=Path("training-work-gate"), help="report and scores")
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--width", type=int, default=8)
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--per-category", type=int, default=500, help="rendered non-chest images per category")
    p.add_argument("--real", type=Path, help="folder of real images with MANIFEST.csv (training.gate_sources)")
    p.add_argument("--real-repeat", type=int, default=3, help="copies of each real training film per epoch")
    p.add_argument("--accept", type=float, default=0.995, help="share of radiographs the threshold accepts")
    p.add_argument("--accept-real", type=float, default=0.98, help="share of real validation films it accepts")
    p.add_argument("--seed", type=int, default=20180222)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--version", default="1.0.0")
    data.add_split_arguments(p)
    args = p.parse_args(argv)
    if not (args.out or args.evaluate):
        p.error("give --out (train) or --evaluate (measure)")
    return args


def _square(image: np.ndarray) -> np.ndarray:
    return np.round(np.clip(shifts.resize(image, SIDE, SIDE), 0, 1) * 255).astype(np.uint8)


def _non_chest(split: str, per_category: int, chests: np.ndarray) -> tuple[list[str], np.ndarray]:
    pairs = list(nonchest.corpus(split, per_category, [c / 255.0 for c in chests]))
    return [c for c, _ in pairs], np.stack([_square(image) for _, image in pairs])


def _photos(chests: np.ndarray, offset: int) -> np.ndarray:
    return np.stack([_square(shifts.photo(c / 255.0, seed=offset + i)) for i, c in enumerate(chests)])


def load_real(folder: Path | None) -> list[dict]:
    """The manifest rows of the real images, each with its display-ready ``image`` and its
    ``role``: ``train``, ``validation`` (a fifth of the train split, by path) or ``held-out``."""
    if folder is None:
        return []
    with open(folder / "MANIFEST.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    for row in rows:
        row["image"] = read_gray(folder / row["file"])
        row["role"] = row["split"] if row["split"] == "held-out" else \
            "validation" if zlib.crc32(row["path"].encode()) % 5 == 0 else "train"
    return rows


def _stack(images: list[np.ndarray]) -> np.ndarray:
    """Display-ready images as SIDE x SIDE uint8, stacked (none: an empty stack)."""
    return np.stack([_square(i) for i in images]) if images else np.empty((0, SIDE, SIDE), np.uint8)


def _real_training(real: list[dict], repeat: int) -> tuple[np.ndarray, np.ndarray]:
    """Real films (``repeat`` copies and a photo of each) and real non-chest images (each with
    three crops, flips or rotations) of the train role."""
    rng = np.random.default_rng(7)
    train = [r for r in real if r["role"] == "train"]
    films = [r["image"] for r in train if r["kind"] == "chest_frontal"]
    others = [v for r in train if r["kind"] != "chest_frontal" for v in nonchest.variants(r["image"], rng, 4)]
    photos = [shifts.photo(f, seed=20_000 + i) for i, f in enumerate(films)]
    return _stack(films * repeat + photos), _stack(others)


def training_set(args: argparse.Namespace, train_raw: np.ndarray, real: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    categories, negatives = _non_chest("train", args.per_category, train_raw)
    real_positives, real_negatives = _real_training(real, args.real_repeat)
    positives = np.concatenate([train_raw, _photos(train_raw[::4], 0), real_positives])
    negatives = np.concatenate([negatives, real_negatives])
    print(f"training: {len(positives)} radiographs, {len(negatives)} others "
          f"({', '.join(sorted(set(categories)))}); of them real: {len(real_positives)} radiographs, "
          f"{len(real_negatives)} others", flush=True)
    x = np.concatenate([positives, negatives])
    y = np.r_[np.ones(len(positives)), np.zeros(len(negatives))].astype(np.int64)
    return x, y


def _rates(rows: list[dict], threshold: float, key: str, chest: bool) -> dict:
    """Share of ``rows`` accepted (chest films) or refused (the rest) per value of ``key``."""
    out = {}
    for value in sorted({r[key] for r in rows}):
        s = np.array([r["score"] for r in rows if r[key] == value])
        rate = np.mean(s >= threshold) if chest else np.mean(s < threshold)
        out[value] = {"rate": round(float(rate), 4), "images": len(s)}
    return out


def evaluate_real(gate, real: list[dict], threshold: float) -> dict:
    """On the held-out real images: acceptance of frontal films per source, refusal of the
    others per kind and per source, and the films refused and others accepted, with scores."""
    held = [r for r in real if r["role"] == "held-out"]
    if not held:
        return {}
    for row, score in zip(held, gate.scores([r["image"] for r in held]), strict=True):
        row["score"] = float(score)
    films = [r for r in held if r["kind"] == "chest_frontal"]
    others = [r for r in held if r["kind"] != "chest_frontal"]
    return {
        "films_accepted_by_source": _rates(films, threshold, "source", True),
        "films_accepted_all": float(np.mean([r["score"] >= threshold for r in films])),
        "others_refused_by_kind": _rates(others, threshold, "kind", False),
        "others_refused_by_source": _rates(others, threshold, "source", False),
        "films_refused": {r["file"]: round(r["score"], 3) for r in films if r["score"] < threshold},
        "others_accepted": {r["file"]: round(r["score"], 3) for r in others if r["score"] >= threshold},
    }


def evaluate(gate, val_raw: np.ndarray, held_out: tuple[list[str], np.ndarray], accept: float,
             threshold: float | None = None, real: list[dict] | None = None, accept_real: float = 1.0) -> dict:
    """Scores on the validation radiographs (plain, shifted, photographed), on the held-out
    non-chest images and on the held-out real images; the threshold (given, or the highest that
    accepts ``accept`` of the radiographs and ``accept_real`` of the real validation films);
    acceptance and refusal rates at it."""
    images = [v / 255.0 for v in val_raw]
    chest_scores = {f"{s.name} {s.strength}": gate.scores([s.apply(im) for im in images]) for s in shifts.suite()}
    chest_scores["photo"] = gate.scores([shifts.photo(im, seed=10_000 + i) for i, im in enumerate(images)])
    pooled = np.concatenate(list(chest_scores.values()))
    real_val = [r["image"] for r in real or [] if r["role"] == "validation" and r["kind"] == "chest_frontal"]
    real_val_scores = gate.scores(real_val) if real_val else np.ones(1)
    if threshold is None:
        threshold = min(float(np.quantile(pooled, 1 - accept)), float(np.quantile(real_val_scores, 1 - accept_real)))
    categories, others = held_out
    other_scores = gate.scores([o / 255.0 for o in others])
    by_category: dict[str, list[float]] = defaultdict(list)
    for category, score in zip(categories, other_scores, strict=True):
        by_category[category].append(float(score))
    return {
        "threshold": threshold,
        "accepted": {name: float(np.mean(s >= threshold)) for name, s in chest_scores.items()},
        "accepted_all": float(np.mean(pooled >= threshold)),
        "refused": {c: float(np.mean(np.array(s) < threshold)) for c, s in sorted(by_category.items())},
        "refused_all": float(np.mean(other_scores < threshold)),
        "held_out_images": {c: len(s) for c, s in sorted(by_category.items())},
        "real_validation_accepted": {"rate": float(np.mean(real_val_scores >= threshold)), "images": len(real_val)},
        "real_held_out": evaluate_real(gate, real or [], threshold),
    }


def main(argv=None) -> None:
    args = parse_args(argv)
    import keras

    from ctai.model.gate import ChestGate
    from training.augment import Batches, Recipe
    from training.resnet import build_resnet

    keras.utils.set_random_seed(args.seed)
    train_s, val_s, _ = data.load(args.data, args.val_fraction, args.split_seed)
    train_raw, val_raw = data.load_raw(train_s), data.load_raw(val_s)
    real = load_real(args.real)
    if args.evaluate:
        held_out = _non_chest("held-out", max(args.per_category // 5, 20), val_raw)
        report = evaluate(ChestGate(args.evaluate), val_raw, held_out, args.accept, args.threshold, real,
                          args.accept_real)
        print(json.dumps(report, indent=2), flush=True)
        return
    t0 = time.time()
    x, y = training_set(args, train_raw, real)
    held_out = _non_chest("held-out", max(args.per_category // 5, 20), val_raw)
    print(f"corpora built in {time.time() - t0:.0f} s", flush=True)

    counts = np.bincount(y, minlength=2)
    batches = Batches(x, y, 64, args.size, Recipe((0.35, 1.0), intensity=True), args.seed, args.workers,
                      class_weight=len(y) / (2 * counts))
    model = build_resnet(18, args.width, args.size, 2)
    steps = args.epochs * len(batches)
    schedule = keras.optimizers.schedules.CosineDecay(0.0, steps, warmup_target=2e-3, warmup_steps=steps // 10)
    model.compile(optimizer=keras.optimizers.AdamW(schedule, weight_decay=1e-4),
                  loss=keras.losses.CategoricalCrossentropy(from_logits=True),
                  metrics=[keras.metrics.CategoricalAccuracy(name="accuracy")])
    t0 = time.time()
    model.fit(batches, epochs=args.epochs, verbose=2)
    train_seconds = time.time() - t0

    args.out.mkdir(parents=True, exist_ok=True)
    model.save(args.out / "model.keras")
    meta = {"name": "ctai-chest-gate", "version": args.version, "input_size": args.size,
            "architecture": f"ResNet-18, width {args.width}, {args.size}x{args.size} px, 1 channel, 2 classes",
            "preprocessing": PREPROCESSING}
    (args.out / "model.json").write_text(json.dumps(meta, indent=2) + "\n")
    report = evaluate(ChestGate(args.out), val_raw, held_out, args.accept, args.threshold, real, args.accept_real)
    report.update(train_seconds=train_seconds, train_images=int(len(y)), radiographs=int(counts[1]),
                  others=int(counts[0]), args={k: str(v) for k, v in vars(args).items()})
    args.work.mkdir(parents=True, exist_ok=True)
    (args.work / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2), flush=True)


if __name__ == "__main__":
    main()
