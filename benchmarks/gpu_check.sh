#!/usr/bin/env bash
# GPU check of issue 10 (items 6 and 7): about 4 minutes on one GPU, 5.5 at most.
#
# Run from the repository root with the package importable, e.g.
#   OUT=/tmp/gpu_check PYTHONPATH=. bash benchmarks/gpu_check.sh
# on a machine with JAX (CUDA), PyTorch (CUDA), optax, flax, chex and scikit-learn.
# Writes under $OUT (default runs/gpu_check/<UTC time>):
#   env.txt          nvidia-smi, uptime, versions, the devices JAX and PyTorch see
#   bench_sweep.md   runs/s of the vmapped sweep vs sequential jitted scans vs a Python loop
#   peers.md         weightax (JAX on the GPU) vs PyTorch on cuda: loss-scale runs,
#                    MultiDigits MGDA, focal and GHM-C forward+backward (peers_<part>.json:
#                    every timing)
#   log.txt          everything printed
# Settings are reduced to fit the time (they are printed in the tables): the
# loss-scale subset is 32 runs x 3000 steps (PyTorch times 2 of them), MultiDigits
# runs 500 steps x 3 seeds. TINY=1 shrinks everything further (a smoke test, on CPU too);
# PY=python3.12 picks the interpreter; SWEEP_TIMEOUT, LS_TIMEOUT, MD_TIMEOUT and
# LOSS_TIMEOUT (seconds; default 100, 100, 80, 50) bound the four runs.
set -uo pipefail
PY=${PY:-python}
OUT=${OUT:-runs/gpu_check/$(date -u +%Y%m%d-%H%M%S)}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
export XLA_PYTHON_CLIENT_PREALLOCATE=false  # JAX and PyTorch share the GPU
TORCH_DEVICE=${TORCH_DEVICE:-cuda}

if [ "${TINY:-0}" = 1 ]; then
  SWEEP_ARGS="--num-w 2 --seeds 2 --steps 50 --reps 1"
  LS_ARGS="--reps 1 --ls-num-w 2 --ls-seeds 2 --ls-steps 50 --ls-torch-runs 1"
  MD_ARGS="--md-seeds 2 --md-steps 20 --md-eval-every 10 --md-quick --md-reps 1"
  LOSS_ARGS="--loss-batches 256 --loss-reps 3"
else
  SWEEP_ARGS="--reps 2"
  LS_ARGS="--reps 2 --ls-torch-runs 2 --ls-chunk-size 32"
  MD_ARGS="--md-seeds 3 --md-steps 500 --md-eval-every 100 --md-reps 1"
  LOSS_ARGS="--loss-batches 4096,65536,262144 --loss-reps 20"
fi

{
  date -u; uptime; nvidia-smi || true
  "$PY" -c "import jax, torch; print('jax', jax.__version__, jax.devices());
print('torch', torch.__version__, torch.cuda.is_available() and torch.cuda.get_device_name(0))"
} > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt"

status=0
echo "== bench_sweep (load average: $(cut -d' ' -f1-3 /proc/loadavg)) =="
# shellcheck disable=SC2086
timeout "${SWEEP_TIMEOUT:-100}" "$PY" benchmarks/bench_sweep.py $SWEEP_ARGS --out "$OUT/bench_sweep.md" \
  2>&1 | tee "$OUT/log.txt" || status=1

# One process per part, each with its own time limit, so a slow part cannot take the others.
: > "$OUT/peers.md"
for part in loss_scale multidigits losses; do
  case $part in
    loss_scale) args=$LS_ARGS; limit=${LS_TIMEOUT:-100} ;;
    multidigits) args=$MD_ARGS; limit=${MD_TIMEOUT:-80} ;;
    losses) args=$LOSS_ARGS; limit=${LOSS_TIMEOUT:-50} ;;
  esac
  echo "== bench_peers $part (load average: $(cut -d' ' -f1-3 /proc/loadavg)) =="
  # shellcheck disable=SC2086
  timeout "$limit" "$PY" benchmarks/bench_peers.py --parts "$part" \
    --torch-device "$TORCH_DEVICE" $args --out "$OUT/tmp_$part" 2>&1 | tee -a "$OUT/log.txt" \
    || status=1
  cat "$OUT/tmp_$part/results.md" >> "$OUT/peers.md" 2>/dev/null
  cp "$OUT/tmp_$part/results.json" "$OUT/peers_$part.json" 2>/dev/null
  rm -rf "$OUT/tmp_$part"
done

echo "== done (load average: $(cut -d' ' -f1-3 /proc/loadavg)); outputs in $OUT; status $status =="
exit $status
