"""Peak memory of ``ctai classify`` against the bare ONNX network (prints numbers, asserts nothing).

    .venv/bin/python benchmarks/memory.py --data ../shared/data/chest_xray/train [--images 360]

Builds ``--images`` DICOM radiographs in six encodings, 1024-px CRs among them (``product.dicom_set``),
converts the networks once into a data dir (``ctai prepare``), then runs, each as a process of
its own, and prints each one's peak resident set size (``wait4``'s ``ru_maxrss``):

- ``ctai classify --json --out DIR`` on the set, SR and SC made (the issue's target: <= 800 MB);
- the same with the SR and SC plugins disabled;
- the bare network: ONNX Runtime loading the converted file and running one batch of 16.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from product import ENCODINGS, dicom_set, prepared_networks

BARE_ONNX = """
import sys
import numpy as np
from ctai.model.converted import Network
network = Network(__import__("pathlib").Path(sys.argv[1]), "onnxruntime")
network(np.zeros((16, int(sys.argv[2]), int(sys.argv[2]), 1), np.float32))
"""


def peak_mb(command: list[str], env: dict[str, str]) -> float:
    """The peak resident set size of ``command``'s process, in MB (``ctai classify`` exits 1
    when the gate refused some pictures)."""
    process = subprocess.Popen(command, env={**os.environ, **env}, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE)
    _, status, usage = os.wait4(process.pid, 0)
    if os.waitstatus_to_exitcode(status) not in (0, 1):
        sys.exit(f"{' '.join(command[:4])}... failed:\n{process.stderr.read().decode()[-2000:]}")
    return usage.ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="folder of chest radiograph pictures")
    parser.add_argument("--images", type=int, default=360)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as temporary:
        work = Path(temporary)
        env = {"CTAI_DATA__DIR": str(work / "ctai-data")}
        pictures = sorted(p for p in args.data.rglob("*") if p.suffix.lower() in (".jpeg", ".jpg", ".png"))
        pictures = pictures[:: max(1, len(pictures) // args.images)][: args.images]
        (work / "set").mkdir()
        paths = dicom_set(pictures, work / "set")
        networks = prepared_networks(work / "ctai-data")
        print(f"{len(paths)} DICOM files ({', '.join(ENCODINGS)}); networks converted", flush=True)

        from ctai.model.backend import CalibratedClassifier, shipped_model_dir

        size = CalibratedClassifier(shipped_model_dir()).input_size
        [network] = [p for p in networks.glob("*-maps-*.onnx")]
        classify = [sys.executable, "-m", "ctai.cli", "classify", "--json", "--out", str(work / "out"),
                    str(work / "set")]
        runs = {
            "ctai classify (SR, SC)": (classify, env),
            "ctai classify, no SR/SC": (classify, {**env, "CTAI_PLUGINS__DISABLED": '["sr", "sc"]'}),
            "bare ONNX network": ([sys.executable, "-c", BARE_ONNX, str(network), str(size)], {}),
        }
        for name, (command, extra) in runs.items():
            print(f"{name:<26} peak RSS {peak_mb(command, extra):7.0f} MB", flush=True)


if __name__ == "__main__":
    main()
