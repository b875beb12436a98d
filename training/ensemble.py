"""Average the logits of several trained ResNets into one model, then calibrate it.

Members differ only in their seed (initial weights, shuffling, augmentation); averaging them
lowers the variance of a single run (Lakshminarayanan et al. 2017, "Simple and Scalable
Predictive Uncertainty Estimation using Deep Ensembles"). The result is one ``model.keras``
that ``ctai`` loads like any other.

    python -m training.ensemble --members training-work-a/export training-work-b/export \\
        --data ../shared/data/chest_xray/train --out ctai/model/artifact --work training-work-ensemble
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from ctai import metrics
from ctai.model.backend import members
from ctai.model.storage import load_network
from training import calibrate, data
from training.calibrate import calibrated, fit, softmax


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--members", type=Path, nargs="+", required=True,
                   help="model folders (model.json, and model.keras or model.f16.npz) written by training.train "
                        "(or by this command: an ensemble's members join one by one)")
    p.add_argument("--data", type=Path, required=True, help="folder with NORMAL/ and PNEUMONIA/")
    p.add_argument("--out", type=Path, required=True, help="where to write model.keras and model.json")
    p.add_argument("--work", type=Path, default=Path("training-work-ensemble"), help="validation predictions")
    data.add_split_arguments(p)
    calibrate.add_arguments(p)
    p.add_argument("--version", required=True)
    return p.parse_args(argv)


def average(folders: list[Path]):
    """One Keras model whose logits are the mean of the members' logits."""
    import keras

    metas = [json.loads((f / "model.json").read_text()) for f in folders]
    sizes = {m["input_size"] for m in metas}
    if len(sizes) != 1:
        raise ValueError(f"members have different input sizes {sorted(sizes)}")
    size = sizes.pop()
    inputs = keras.Input((size, size, 1), name="image")
    networks = [network for folder in folders
                for network in members(load_network(folder))]
    outputs = [keras.Model(n.input, n.output, name=f"member{i}")(inputs) for i, n in enumerate(networks)]
    logits = keras.layers.Average(name="logits")(outputs)
    return keras.Model(inputs, logits, name=f"ensemble{len(networks)}_{size}px"), metas[0]


def main(argv=None) -> None:
    args = parse_args(argv)
    model, first = average(args.members)
    size = first["input_size"]
    _, val, _ = data.load(args.data, args.val_fraction, args.split_seed)
    x, y = data.load_arrays(val, size)
    logits = model.predict(x, batch_size=64, verbose=0).astype(np.float64)
    temperature, bias = fit(logits, y, args.priors)
    probs = calibrated(logits, temperature, np.array(bias))
    args.out.mkdir(parents=True, exist_ok=True)
    model.save(args.out / "model.keras")
    meta = {
        "name": first["name"], "version": args.version, "manufacturer": first.get("manufacturer", "ctai"),
        "architecture": f"mean of {len(members(model))} x {first['architecture'].split(' x ', 1)[-1]}",
        "classes": first["classes"], "input_size": size, "temperature": temperature, "bias": bias,
        "priors": args.priors,
    }
    (args.out / "model.json").write_text(json.dumps(meta, indent=2) + "\n")
    args.work.mkdir(parents=True, exist_ok=True)
    np.savez(args.work / "val_predictions.npz", y=y, probs=probs)
    report = {"members": [str(m) for m in args.members], "temperature": temperature, "bias": bias,
              "validation_uncalibrated": metrics.compute(y, softmax(logits)),
              "validation": metrics.compute(y, probs)}
    (args.work / "run.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2), flush=True)


if __name__ == "__main__":
    main()
