#!/usr/bin/env bash
# Every figure only a GPU gives, in one call that logs under one folder (<= 8 min on an H100):
#   bench/gpu.sh LOGDIR           the GPU run
#   bench/gpu.sh LOGDIR --quick   the same steps on tiny settings (CPU, ~1 min: the tests run it)
# Steps (one log each, LOGDIR/<step>.log; figures also in LOGDIR/train-*.json; one line per step
# in LOGDIR/summary.log; a failing step is reported and the next one still runs):
#   device          nvidia-smi and torch's view of the GPU
#   train-eager     bench_train: B7 at the profile's 240 px, batch 96, bf16 (loop / step / loader)
#   train-compile   the same with train.compile=true
#   train-fp16      the same, eager, with train.amp=fp16 and its GradScaler (what a T4 runs)
#   predict-b7      bench_predict: 1 and 5 B7 fold models, the b7 profile's predictor, 12 videos
#   predict-t4like  5 B7 models with the Kaggle kernel's GPU plan: fp16, 3 workers, MTCNN on the
#                   GPU, on 4 CPU cores (Kaggle's T4 x2 machine has 4); the GPU itself is not a T4
# PY (default .venv/bin/python) runs the benches; STEP_TIMEOUT (default 300 s) bounds each step, so
# one hung step (a compile) cannot use up a lent GPU's minutes; `make bench-gpu BENCH_LOG=folder`
# calls this script.
set -u
LOG=${1:?usage: bench/gpu.sh LOGDIR [--quick]}
QUICK=${2:-}
PY=${PY:-.venv/bin/python}
STEP_TIMEOUT=${STEP_TIMEOUT:-300}
HERE=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$LOG"
LOG=$(cd "$LOG" && pwd)
: > "$LOG/summary.log"
FAILED=0

step() {  # step NAME COMMAND...: run it, its output to LOG/NAME.log, one summary line
  local name=$1 started code
  shift
  started=$(date +%s)
  echo "== $name: $*" > "$LOG/$name.log"
  timeout "$STEP_TIMEOUT" "$@" >> "$LOG/$name.log" 2>&1
  code=$?
  if [ "$code" -eq 0 ]; then
    echo "$name: ok in $(( $(date +%s) - started )) s" | tee -a "$LOG/summary.log"
  else
    FAILED=1
    echo "$name: FAILED (exit $code$([ "$code" -eq 124 ] && echo ", over STEP_TIMEOUT=$STEP_TIMEOUT s")) in" \
      "$(( $(date +%s) - started )) s; see $LOG/$name.log" | tee -a "$LOG/summary.log"
  fi
}

if [ "$QUICK" = "--quick" ]; then
  # tiny settings so the script itself is tested on a CPU; compile is switched off inside torch
  # (TORCHDYNAMO_DISABLE=1): torch.compile of even a tiny model takes minutes on a CPU
  TRAIN=(--profiles smoke --batches smoke=4 --steps 1 --warm 1 --set model.arch=tiny-cnn --set train.size=32
         --set train.loader_workers=1)
  NOCOMPILE=(env TORCHDYNAMO_DISABLE=1)
  PREDICT=(--archs tiny-cnn --size 32 --videos 2 --frames 2 --workers 1 --device cpu --out "$LOG/predict"
           --synth videos=2 --synth width=320 --synth height=240 --synth seconds=1 --synth fps=10)
  T4=(--set predict.fp16=true)
  CORES=""
else
  TRAIN=(--profiles b7 --batches b7=96 --steps 20 --warm 5)
  NOCOMPILE=()
  PREDICT=(--archs efficientnet-b7 --videos 12 --frames 32)
  T4=(--workers 3 --set predict.fp16=true --set predict.detect_device=cuda)
  CORES="0-3"
fi

step device "$PY" -c "import subprocess, shutil, torch
smi = shutil.which('nvidia-smi')
print(subprocess.run([smi], capture_output=True, text=True).stdout if smi else 'no nvidia-smi')
print('torch', torch.__version__, 'cuda', torch.version.cuda, 'available', torch.cuda.is_available())
print(torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU: CPU figures only')"
step train-eager "$PY" "$HERE/bench_train.py" "${TRAIN[@]}" --out "$LOG/train-eager.json"
step train-compile "${NOCOMPILE[@]}" "$PY" "$HERE/bench_train.py" "${TRAIN[@]}" --set train.compile=true \
  --out "$LOG/train-compile.json"
step train-fp16 "$PY" "$HERE/bench_train.py" "${TRAIN[@]}" --set train.amp=fp16 --out "$LOG/train-fp16.json"
step predict-b7 "$PY" "$HERE/bench_predict.py" "${PREDICT[@]}" --models 1,5
if [ -n "$CORES" ] && command -v taskset > /dev/null; then
  step predict-t4like taskset -c "$CORES" "$PY" "$HERE/bench_predict.py" "${PREDICT[@]}" --models 5 "${T4[@]}"
else
  step predict-t4like "$PY" "$HERE/bench_predict.py" "${PREDICT[@]}" --models 5 "${T4[@]}"
fi
echo "logs and figures: $LOG" | tee -a "$LOG/summary.log"
exit "$FAILED"
