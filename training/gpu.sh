#!/usr/bin/env bash
# Issue 13's run on a lent GPU machine (one H100, JAX, no TensorFlow), as one command:
#   1. trains, with the shift-robust recipe (margins trimmed, random resized crops over 35-100 %
#      of the area, intensity augmentation), ResNet-34 at 224 px (the seed system's network) and,
#      in parallel, four ResNet-18 width-32 members at 160 px (the shipped 2.0.0 architecture);
#   2. averages the four into an ensemble and calibrates it;
#   3. runs the shift benchmark on both, and measures inference speed at batch 1, 64 and 256 of
#      both and of the shipped model's architecture;
#   4. packs logs and reports (results.tgz) and the float16 weights (weights.tar.NN, 15 MB pieces)
#      into $OUT, within the machine's transfer limits.
# Prepare with scripts/gpu-prepare.sh. Back here: cat weights.tar.* | tar x gives half/<model>/,
# model folders with float16 weights that ctai and training.ensemble load as they are.
set -uo pipefail
OUT=${OUT:-/tmp/gpu-out} BUDGET=${BUDGET:-520} TRAIN_MINUTES=${TRAIN_MINUTES:-4.2}
W=${W:-/tmp/gpu-work} DATA=${DATA:-.gpu/data} REPEAT=${REPEAT:-20}
deadline=$(( $(date +%s) + BUDGET ))
left() { echo $(( deadline - $(date +%s) - 40 )); }  # 40 s kept for packing
mkdir -p "$OUT" "$W"
export PYTHONPATH=/tmp/site:$PWD KERAS_BACKEND=jax PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false
python3 -c "import keras, pydicom, highdicom" 2>/dev/null ||
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .gpu/whl/*.whl || exit 1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$W/gpu.txt" 2>&1
nproc >> "$W/gpu.txt"

recipe=(--data "$DATA" --crop-scale 0.35 1 --intensity --patience 1000 --workers 3 --time-limit "$TRAIN_MINUTES")
t0=$(date +%s)
timeout "$(left)" python3 -m training.train "${recipe[@]}" --depth 34 --width 64 --size 224 --batch 64 \
  --epochs "${R34_EPOCHS:-25}" --seed 34 --version 3.0.0 --out "$W/r34/export" --work "$W/r34" > "$W/r34.log" 2>&1 &
for seed in 21 22 23 24; do
  timeout "$(left)" python3 -m training.train "${recipe[@]}" --depth 18 --width 32 --size 160 --batch 32 \
    --epochs "${MEMBER_EPOCHS:-25}" --seed "$seed" --version 3.0.0 --out "$W/m$seed/export" --work "$W/m$seed" \
    > "$W/m$seed.log" 2>&1 &
done
wait
echo "training wall time: $(( $(date +%s) - t0 )) s" >> "$W/gpu.txt"

timeout "$(left)" python3 -m training.ensemble --members "$W"/m2?/export --data "$DATA" --out "$W/ens/export" \
  --work "$W/ens" --version 3.0.0 > "$W/ens.log" 2>&1
timeout "$(left)" python3 benchmarks/robustness.py --data "$DATA" --model "$W/r34/export" --model "$W/ens/export" \
  --json "$W/bench.json" > "$W/bench.txt" 2>&1

python3 -c "import keras; keras.models.model_from_json(open('.gpu/shipped/architecture.json').read()).save('$W/shipped.keras')" \
  && mkdir -p "$W/shipped" && mv "$W/shipped.keras" "$W/shipped/model.keras" && cp .gpu/shipped/model.json "$W/shipped/"
for model in shipped r34/export ens/export; do
  timeout "$(left)" python3 benchmarks/inference.py --model "$W/$model" --batch 1 64 256 --repeat "$REPEAT" >> "$W/inference.txt" 2>&1
done

mkdir -p "$W/half"
for model in r34 m21 m22 m23 m24; do
  [ -f "$W/$model/export/model.keras" ] && cp -r "$W/$model/export" "$W/half/$model" && python3 -m training.half "$W/half/$model" &
done
wait
tar czf "$OUT/results.tgz" -C "$W" --exclude='*.keras' --exclude=half --exclude=backup .
tar cf - -C "$W" half | split -b 15m -d - "$OUT/weights.tar."
ls -la "$OUT"
cat "$W/gpu.txt" "$W/inference.txt"; tail -n 5 "$W"/*.log; cat "$W/bench.txt" | tail -40
