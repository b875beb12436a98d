#!/usr/bin/env bash
# Fill the git-ignored .gpu/ folder that the lent GPU machine needs, which has JAX but no
# TensorFlow, no Keras and no network: the wheels that ctai's training path and pipeline import
# and the machine lacks, and the training images when a data folder is given.
#
#     bash scripts/gpu-prepare.sh ../shared/data/chest_xray/train   # training (training/gpu.sh)
#     bash scripts/gpu-prepare.sh                                   # the wheels only (benchmarks/gpu_product.py)
#
# For training, move ctai/model/artifact/model.f16.npz aside for the device call only (45 MB; the
# transfer limit is 64 MiB), carry .gpu, and run `bash training/gpu.sh`. For the benchmark, carry
# .gpu (the model travels: it is what is measured) and run the command in its docstring.
set -euo pipefail
cd "$(dirname "$0")/.."
data=${1:-}
rm -rf .gpu && mkdir -p .gpu/whl
[ -z "$data" ] || cp -r "$data" .gpu/data
# No decoders of compressed DICOM (8 MB of wheels): the benchmark's files and the training
# pictures need none, and the model and the wheels must fit the transfer limit together.
for spec in keras==3.15.1 namex==0.1.0 optree==0.20.0 pydicom==3.0.2 highdicom==0.28.2 pluggy==1.7.0 \
            tqdm==4.70.1; do
  .venv/bin/python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_31_x86_64 --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .gpu/whl "$spec"
done
du -sh .gpu
