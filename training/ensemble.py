"""Combine several trained ResNets into one model (the mean of their logits), then calibrate it.

Members differ only in their seed (initial weights, shuffling, augmentation); averaging them
lowers the variance of a single run (Lakshminarayanan et al. 2017, "Simple and Scalable
Predictive Uncertainty Estimation using Deep Ensembles"). The result is one ``model.keras``
that ``ctai`` loads like any other.

    python -m training.ensemble --members training-work-a/export training-work-b/export \\
        --data ../shared/data/chest_xray/train --out ctai/model/artifact --work training-work-ensemble

With ``--split-members``, the model has two stages (``ctai.model.heads.TwoStage``): p(normal)
from the mean of ``--members``, the rest split between bacterial and viral as the mean of
``--split-members`` splits it. A folder named in both joins once.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from ctai import evaluation
from ctai.model.backend import members
from ctai.model.heads import TwoStage
from ctai.model.preprocess import PREPROCESSING
from ctai.model.storage import load_network
from training import calibrate, data
from training.calibrate import calibrated, fit, softmax


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--members", type=Path, nargs="+", required=True,
                   help="model folders (model.json, and model.keras or model.f16.npz) written by training.train "
                        "(or by this command: an ensemble's members join one by one)")
    p.add_argument("--split-members", type=Path, nargs="+",
                   help="model folders whose mean splits pneumonia into bacterial and viral (default: --members)")
    p.add_argument("--data", type=Path, required=True, help="folder with NORMAL/ and PNEUMONIA/")
    p.add_argument("--out", type=Path, required=True, help="where to write model.keras and model.json")
    p.add_argument("--work", type=Path, default=Path("training-work-ensemble"), help="validation predictions")
    data.add_split_arguments(p)
    calibrate.add_arguments(p)
    p.add_argument("--version", required=True)
    return p.parse_args(argv)


def combine(folders: list[Path], split: list[Path] | None = None):
    """One Keras model whose logits are the mean of the members' logits, or with ``split``, two
    stages (``TwoStage``) over the members of ``folders`` and of ``split``."""
    import keras

    unique = list(dict.fromkeys(folders + (split or [])))
    metas = [json.loads((f / "model.json").read_text()) for f in unique]
    sizes = {m["input_size"] for m in metas}
    if len(sizes) != 1:
        raise ValueError(f"members have different input sizes {sorted(sizes)}")
    size = sizes.pop()
    inputs = keras.Input((size, size, 1), name="image")
    networks = {folder: members(_flat(load_network(folder), folder)) for folder in unique}
    indices, outputs = {}, []
    for folder, nets in networks.items():
        indices[folder] = list(range(len(outputs), len(outputs) + len(nets)))
        outputs += [keras.Model(n.input, n.output, name=f"member{len(outputs) + i}")(inputs)
                    for i, n in enumerate(nets)]
    if split:
        head = TwoStage([i for f in folders for i in indices[f]], [i for f in split for i in indices[f]],
                        name="logits")
    else:
        head = keras.layers.Average(name="logits")
    return keras.Model(inputs, head(outputs), name=f"ensemble{len(outputs)}_{size}px"), metas[0]


def _flat(network, folder: Path):
    """``network``, if its members can join another ensemble one by one (not two stages)."""
    if any(isinstance(layer, TwoStage) for layer in network.layers):
        raise ValueError(f"{folder} has two stages: name its member folders instead")
    return network


def architecture(model, first: dict) -> str:
    """``model.json``'s description of the ensemble ``model``; ``first`` is a member's."""
    member = first["architecture"].split(" x ", 1)[-1]
    head = model.get_layer("logits")
    if not isinstance(head, TwoStage):
        return f"mean of {len(members(model))} x {member}"
    return (f"two stages over {len(members(model))} x {member}: p(normal) from the mean of {len(head.normal)}, "
            f"bacterial vs viral from the mean of {len(head.split)}")


def main(argv=None) -> None:
    args = parse_args(argv)
    model, first = combine(args.members, args.split_members)
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
        "architecture": architecture(model, first),
        "classes": first["classes"], "input_size": size, "temperature": temperature, "bias": bias,
        "priors": args.priors, "preprocessing": first.get("preprocessing", PREPROCESSING),
    }
    (args.out / "model.json").write_text(json.dumps(meta, indent=2) + "\n")
    args.work.mkdir(parents=True, exist_ok=True)
    np.savez(args.work / "val_predictions.npz", y=y, probs=probs)
    report = {"members": [str(m) for m in args.members],
              "split_members": [str(m) for m in args.split_members or args.members],
              "temperature": temperature, "bias": bias,
              "validation_uncalibrated": evaluation.compute(y, softmax(logits)),
              "validation": evaluation.compute(y, probs)}
    (args.work / "run.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2), flush=True)


if __name__ == "__main__":
    main()
