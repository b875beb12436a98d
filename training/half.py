"""Convert a model folder between ``model.keras`` and float16 weights (``model.f16.npz``, see
``ctai.model.storage``): for the shipped artifact's 50 MB budget, and for moving trained models
through a lent GPU machine's transfer limits (16 MB a file). ``model.json`` is kept.

    python -m training.half DIR [--to float16|keras]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ctai.model.storage import FLOAT16_FILE, KERAS_FILE, load_network, save_float16


def convert(folder: Path, to: str) -> None:
    model = load_network(folder)
    if to == "float16":
        save_float16(model, folder)
        (folder / KERAS_FILE).unlink()
    else:
        model.save(folder / KERAS_FILE)
        (folder / FLOAT16_FILE).unlink()


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folder", type=Path, help="a model folder (model.json and model.keras or model.f16.npz)")
    p.add_argument("--to", choices=("float16", "keras"), default="float16")
    args = p.parse_args(argv)
    convert(args.folder, args.to)


if __name__ == "__main__":
    main()
