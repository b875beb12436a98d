"""A model folder's weights stored as float16 (half the bytes) with the model's architecture,
and turned back into a float32 ``model.keras``. For moving trained models through a lent GPU
machine's transfer limits (16 MB a file); the network runs in float32 either way.

    python -m training.half pack   DIR FILE.npz    # DIR holds model.keras and model.json
    python -m training.half unpack FILE.npz DIR
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def pack(folder: Path, target: Path) -> None:
    import keras

    model = keras.saving.load_model(folder / "model.keras", compile=False)
    weights = {f"w{i:04d}": np.asarray(w).astype(np.float16) for i, w in enumerate(model.get_weights())}
    np.savez_compressed(target, architecture=model.to_json(), meta=(folder / "model.json").read_text(), **weights)


def unpack(source: Path, folder: Path) -> None:
    import keras

    with np.load(source) as packed:
        model = keras.models.model_from_json(str(packed["architecture"]))
        model.set_weights([packed[k].astype(np.float32) for k in sorted(packed.files) if k.startswith("w")])
        meta = json.loads(str(packed["meta"]))
    folder.mkdir(parents=True, exist_ok=True)
    model.save(folder / "model.keras")
    (folder / "model.json").write_text(json.dumps(meta, indent=2) + "\n")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("action", choices=("pack", "unpack"))
    p.add_argument("source", type=Path)
    p.add_argument("target", type=Path)
    args = p.parse_args(argv)
    (pack if args.action == "pack" else unpack)(args.source, args.target)


if __name__ == "__main__":
    main()
