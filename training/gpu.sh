#!/usr/bin/env bash
# Issue 11's recipe run on a lent GPU machine (one H100, JAX, no TensorFlow), as one command:
#   1. trains six ResNet-18 width-32 members at 160 px in parallel, each with the shift recipe
#      (margins trimmed, random resized crops over 35-100 % of the area, intensity augmentation)
#      to the end of a 20-epoch schedule, varied one change at a time: two seeds as they are,
#      label smoothing 0.1, mixup 0.2, and two seeds with wider framing (crops over 25-100 %,
#      aspect 0.6-1.67);
#   2. runs the shift benchmark on every member and saves each member's raw logits under every
#      shift (benchmarks/ensembles.py combines them into candidate ensembles afterwards);
#   3. packs logs and reports (results.tgz) and the float16 weights (weights.tar.NN, 15 MB
#      pieces) into $OUT, within the machine's transfer limits.
# The 3.0.0 GPU members (m21-m24) came from this script at commit 4e0971a; 5.0.0's and issue 32's
# black-corner members: the RUNS in docs/model-experiments.md.
# Prepare with scripts/gpu-prepare.sh. Back here: cat weights.tar.* | tar x gives half/<run>/,
# model folders with float16 weights that ctai and training.ensemble load as they are.
set -uo pipefail
OUT=${OUT:-/tmp/gpu-out} BUDGET=${BUDGET:-500} TRAIN_MINUTES=${TRAIN_MINUTES:-5.4} EPOCHS=${EPOCHS:-20}
W=${W:-/tmp/gpu-work} DATA=${DATA:-.gpu/data} WORKERS=${WORKERS:-3}
deadline=$(( $(date +%s) + BUDGET ))
left() { echo $(( deadline - $(date +%s) - 30 )); }  # 30 s kept for packing
mkdir -p "$OUT" "$W"
export PYTHONPATH=/tmp/site:$PWD KERAS_BACKEND=jax PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false
python3 -c "import keras, pydicom, highdicom" 2>/dev/null ||
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .gpu/whl/*.whl || exit 1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$W/gpu.txt" 2>&1
nproc >> "$W/gpu.txt"

base=(--data "$DATA" --depth 18 --width 32 --size 160 --batch 32 --epochs "$EPOCHS" --patience 1000
      --crop-scale 0.35 1 --intensity --workers "$WORKERS" --time-limit "$TRAIN_MINUTES" --version 4.0.0)
declare -A runs=(
  [b41]="--seed 41" [b42]="--seed 42"
  [ls41]="--seed 41 --label-smoothing 0.1" [mx41]="--seed 41 --mixup 0.2"
  [ar41]="--seed 41 --crop-scale 0.25 1 --aspect 0.6 1.67" [ar42]="--seed 42 --crop-scale 0.25 1 --aspect 0.6 1.67"
)
[ -n "${RUNS:-}" ] && eval "runs=($RUNS)"  # another set of runs, written like the one above
t0=$(date +%s)
for run in "${!runs[@]}"; do
  # shellcheck disable=SC2086  # the run's options are words
  timeout "$(left)" python3 -m training.train "${base[@]}" ${runs[$run]} --out "$W/$run/export" --work "$W/$run" \
    > "$W/$run.log" 2>&1 &
done
wait
echo "training wall time: $(( $(date +%s) - t0 )) s" >> "$W/gpu.txt"

done_runs=$(for run in "${!runs[@]}"; do [ -f "$W/$run/export/model.keras" ] && echo "$run"; done | sort)
half=$(( ($(echo "$done_runs" | wc -w) + 1) / 2 ))
i=0
for group in "$(echo "$done_runs" | head -n "$half")" "$(echo "$done_runs" | tail -n +$(( half + 1 )))"; do
  i=$(( i + 1 )); models=(); for run in $group; do models+=(--model "$W/$run/export"); done
  [ ${#models[@]} -gt 0 ] && timeout "$(left)" python3 benchmarks/robustness.py --data "$DATA" "${models[@]}" \
    --json "$W/bench$i.json" --member-logits "$W/logits$i.npz" > "$W/bench$i.txt" 2>&1 &
done
wait

mkdir -p "$W/half"
for run in $done_runs; do
  cp -r "$W/$run/export" "$W/half/$run" && python3 -m training.half "$W/half/$run" &
done
wait
tar czf "$OUT/results.tgz" -C "$W" --exclude='*.keras' --exclude=half --exclude=backup .
tar cf - -C "$W" half | split -b 15m -d - "$OUT/weights.tar."
ls -la "$OUT"
cat "$W/gpu.txt"; tail -n 3 "$W"/*.log; grep -h -A2 "worst case" "$W"/bench*.txt
