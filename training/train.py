"""Train the ctai ResNet on a Kermany-layout folder and export the artifact ``ctai`` loads.

    python -m training.train --data ../shared/data/chest_xray/train --out ctai/model/artifact

Resumes from ``--work`` after an interruption (Keras BackupAndRestore).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from ctai import evaluation
from ctai.model.preprocess import PREPROCESSING
from ctai.types import CLASSES
from training import calibrate, data, report
from training.calibrate import calibrated, fit, softmax


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, required=True, help="folder with NORMAL/ and PNEUMONIA/")
    p.add_argument("--out", type=Path, required=True, help="where to write model.keras and model.json")
    p.add_argument("--work", type=Path, default=Path("training-work"), help="checkpoints and logs")
    p.add_argument("--depth", type=int, default=18, choices=(18, 34, 50))
    p.add_argument("--width", type=int, default=64, help="filters of the first stage (64 in He et al.)")
    p.add_argument("--size", type=int, default=224, help="input side in pixels")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--patience", type=int, default=6)
    data.add_split_arguments(p)
    calibrate.add_arguments(p)
    p.add_argument("--seed", type=int, default=20180222, help="initial weights, shuffling, augmentation")
    p.add_argument("--crop-scale", type=float, nargs=2, metavar=("MIN", "MAX"),
                   help="random resized crops over this range of image area (default: small shift and zoom)")
    p.add_argument("--intensity", action="store_true",
                   help="random gamma, contrast, brightness, blur/sharpening, noise and JPEG")
    p.add_argument("--aspect", type=float, nargs=2, default=(3 / 4, 4 / 3), metavar=("MIN", "MAX"),
                   help="width/height range of the random resized crops")
    p.add_argument("--mixup", type=float, default=0.0, metavar="ALPHA", help="mixup's alpha (0: none)")
    p.add_argument("--label-smoothing", type=float, default=0.0)
    p.add_argument("--equalize", action="store_true",
                   help="histogram-equalise every image before preprocessing (benchmark with --equalize too)")
    p.add_argument("--corners", action="store_true",
                   help="rotate after the crop, so that tilted variants keep their black corners")
    p.add_argument("--field", action="store_true",
                   help="a random smooth gain brightens or darkens the middle of half the images")
    p.add_argument("--held-out-source", metavar="GLOB",
                   help="leave out the images matching this glob under --data (leave-source-out check)")
    p.add_argument("--name", default="ctai-resnet")
    p.add_argument("--version", default="1.0.0")
    p.add_argument("--max-images", type=int, default=0, help="use only this many images (smoke runs)")
    p.add_argument("--time-limit", type=float, metavar="MINUTES",
                   help="stop after the last epoch that fits in this time (lent machines have a budget)")
    p.add_argument("--workers", type=int, default=1, help="threads that augment batches (more with a GPU)")
    return p.parse_args(argv)


class ValidationMetrics:
    """Adds balanced accuracy and the two AUCs on the validation split to each epoch's logs."""

    def __new__(cls, x_val, y_val):
        import keras

        class _Callback(keras.callbacks.Callback):
            def on_epoch_end(self, epoch, logs=None):
                probs = softmax(self.model.predict(x_val, batch_size=64, verbose=0))
                m = evaluation.compute(y_val, probs)
                logs.update(val_bal_acc=m["balanced_accuracy"],
                            val_auc_pneumonia=m["pneumonia_vs_normal"]["roc_auc"] or 0.0,
                            val_auc_viral=m["bacterial_vs_viral"]["roc_auc"] or 0.0)
                print(f"\nepoch {epoch + 1}: val acc {m['accuracy']:.3f} bal_acc {m['balanced_accuracy']:.3f} "
                      f"AUC pneumonia {logs['val_auc_pneumonia']:.3f} AUC bact/viral {logs['val_auc_viral']:.3f}",
                      flush=True)

        return _Callback()


class TimeLimit:
    """Stops training before an epoch that would end after ``minutes``; the best epoch's weights
    are still restored and exported."""

    def __new__(cls, minutes: float):
        import keras

        class _Callback(keras.callbacks.Callback):
            def on_train_begin(self, logs=None):
                self.start = time.time()

            def on_epoch_end(self, epoch, logs=None):
                elapsed = time.time() - self.start
                if elapsed * (epoch + 2) / (epoch + 1) > minutes * 60:
                    print(f"\ntime limit: stopping after epoch {epoch + 1} ({elapsed:.0f} s)", flush=True)
                    self.model.stop_training = True

        return _Callback()


def main(argv=None) -> None:
    args = parse_args(argv)
    import keras

    from training.augment import Batches, Recipe, equalize
    from training.resnet import build_resnet

    if report.gpus():
        keras.mixed_precision.set_global_policy("mixed_bfloat16")
    keras.utils.set_random_seed(args.seed)
    args.work.mkdir(parents=True, exist_ok=True)

    train_s, val_s, _ = data.load(args.data, args.val_fraction, args.split_seed, args.held_out_source)
    if args.max_images:
        train_s, val_s = train_s[: args.max_images], val_s[: max(args.max_images // 4, 3)]
    print(f"{len(train_s)} train / {len(val_s)} validation images; "
          f"{len({s.patient for s in train_s})} / {len({s.patient for s in val_s})} patients", flush=True)
    t0 = time.time()
    raw_train, y_train = data.load_raw(train_s), np.array([s.label for s in train_s], dtype=np.int64)
    x_val, y_val = data.load_arrays(val_s, args.size, equalize if args.equalize else None)
    print(f"loaded and preprocessed in {time.time() - t0:.0f} s", flush=True)

    counts = np.bincount(y_train, minlength=len(CLASSES))
    class_weight = len(y_train) / (len(CLASSES) * np.maximum(counts, 1))
    recipe = Recipe(tuple(args.crop_scale) if args.crop_scale else None, args.intensity, tuple(args.aspect),
                    args.mixup, args.equalize, args.corners, args.field)
    train_ds = Batches(raw_train, y_train, args.batch, args.size, recipe, args.seed, args.workers, class_weight)

    model = build_resnet(args.depth, args.width, args.size, len(CLASSES))
    steps = args.epochs * int(np.ceil(len(y_train) / args.batch))
    schedule = keras.optimizers.schedules.CosineDecay(0.0, steps, warmup_target=args.lr,
                                                      warmup_steps=min(steps // 10, 500))
    model.compile(optimizer=keras.optimizers.AdamW(schedule, weight_decay=1e-4),
                  loss=keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=args.label_smoothing),
                  metrics=[keras.metrics.CategoricalAccuracy(name="accuracy")])
    callbacks = [
        ValidationMetrics(x_val, y_val),
        keras.callbacks.BackupAndRestore(str(args.work / "backup")),
        keras.callbacks.EarlyStopping(monitor="val_bal_acc", mode="max", patience=args.patience,
                                      restore_best_weights=True),
        keras.callbacks.CSVLogger(str(args.work / "history.csv"), append=True),
    ]
    if args.time_limit:
        callbacks.append(TimeLimit(args.time_limit))
    t0 = time.time()
    history = model.fit(train_ds, validation_data=(x_val, np.eye(len(CLASSES))[y_val]), epochs=args.epochs,
                        callbacks=callbacks,
                        verbose=1 if sys.stdout.isatty() else 2)  # a progress bar on a terminal
    train_seconds = time.time() - t0

    logits = model.predict(x_val, batch_size=64, verbose=0).astype(np.float64)
    temperature, bias = fit(logits, y_val, args.priors)
    probs = calibrated(logits, temperature, np.array(bias))
    before = evaluation.compute(y_val, softmax(logits))
    after = evaluation.compute(y_val, probs)
    args.out.mkdir(parents=True, exist_ok=True)
    policy = keras.mixed_precision.global_policy().name
    # Ship the weights in a fresh float32 model: no optimizer state, runs the same on any machine.
    keras.mixed_precision.set_global_policy("float32")
    exported = build_resnet(args.depth, args.width, args.size, len(CLASSES))
    exported.set_weights(model.get_weights())
    exported.save(args.out / "model.keras")
    meta = {
        "name": args.name, "version": args.version, "manufacturer": "ctai",
        "architecture": f"ResNet-{args.depth}, width {args.width}, {args.size}x{args.size} px, 1 channel",
        "classes": list(CLASSES), "input_size": args.size, "temperature": temperature, "bias": bias,
        "priors": args.priors, "preprocessing": PREPROCESSING + ("+equalize" if args.equalize else ""),
    }
    (args.out / "model.json").write_text(json.dumps(meta, indent=2) + "\n")
    run = {
        "args": {k: str(v) for k, v in vars(args).items()},
        "train_images": len(y_train), "val_images": len(y_val),
        "train_patients": len({s.patient for s in train_s}), "val_patients": len({s.patient for s in val_s}),
        "epochs_run": len(history.history["loss"]), "train_seconds": train_seconds,
        "hardware": report.hardware(), "precision": policy, "temperature": temperature, "bias": bias,
        "validation_uncalibrated": before, "validation": after,
        "history": {k: [float(v) for v in vals] for k, vals in history.history.items()},
    }
    (args.work / "run.json").write_text(json.dumps(run, indent=2) + "\n")
    np.savez(args.work / "val_predictions.npz", y=y_val, probs=probs)
    print(json.dumps({"temperature": temperature, "bias": bias, "ece_before": before["expected_calibration_error"],
                      "validation": after}, indent=2), flush=True)


if __name__ == "__main__":
    main()
