#!/usr/bin/env bash
# The default test suite on an accelerator (issue 10, item 7: "everything runs unchanged
# on a GPU"), prepared so that a session with a lent GPU runs it in one or two commands.
#
# Run from the repository root with the package importable, e.g.
#   OUT=/tmp/gpu_suite PYTHONPATH=. bash benchmarks/gpu_suite.sh
# on a machine with JAX for the accelerator, optax, flax, chex, scikit-learn, pytest and
# (optionally) pytest-xdist. It runs what `make test` runs (`-m 'not slow'`, the doctests
# of the package), without ruff, on JAX's default backend: tests/conftest.py then sets
# float32 products to full precision (JAX's GPU default is TF32). Tests that start their
# own processes pin them to the CPU where they say so.
#
# Settings (environment):
#   PY=python3.12        the interpreter (default: python)
#   WORKERS=8            pytest-xdist workers, one test file each at a time (default: the
#                        CPUs, at most 12; 0 or no xdist: one process)
#   SHARD=1/2            run only every 2nd test file starting with the 1st (the doctests
#                        go with shard 1), to split the suite over two commands that each
#                        fit a time limit; the summary merges the shards found under $OUT
#   SUITE_TIMEOUT=540    seconds before the run is stopped (what finished is still reported)
#   TINY=1               two small test files only (a smoke test of this script; on CPU too)
#   FILES="a.py b.py"    these test files instead of the suite (no doctests)
# Writes under $OUT (default runs/gpu_suite/<UTC time>):
#   env.txt              nvidia-smi, uptime, versions and the devices JAX sees
#   junit-<shard>.xml    pytest's report of the shard (all: the whole suite)
#   log-<shard>.txt      everything pytest printed
#   summary.md           passed / failed / errors / skipped over every shard found, and
#                        each failure with the first line of its message
# Exit status: pytest's (124 when the time ran out).
set -uo pipefail
PY=${PY:-python}
OUT=${OUT:-runs/gpu_suite/$(date -u +%Y%m%d-%H%M%S)}
cpus=$(nproc 2>/dev/null || echo 2)
WORKERS=${WORKERS:-$((cpus < 12 ? cpus : 12))}
SHARD=${SHARD:-}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
# Several test processes share the accelerator: allocate on demand, not 75% each.
export XLA_PYTHON_CLIENT_PREALLOCATE=false

{
  date -u; uptime; nvidia-smi || true
  "$PY" -c "import jax, sys; print('python', sys.version.split()[0]); print('jax', jax.__version__, jax.default_backend(), jax.devices())"
} > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt"

if [ -n "${FILES:-}" ]; then
  read -r -a files <<< "$FILES"
  doctests=()
elif [ "${TINY:-0}" = 1 ]; then
  files=(tests/test_jacobian.py tests/test_gramian_free.py)
  doctests=()
else
  mapfile -t files < <(ls tests/test_*.py | sort)
  doctests=(weightax)
fi

tag=all
if [ -n "$SHARD" ]; then
  index=${SHARD%/*}; count=${SHARD#*/}
  if ! [[ "$index" =~ ^[0-9]+$ && "$count" =~ ^[0-9]+$ ]] || [ "$index" -lt 1 ] \
      || [ "$index" -gt "$count" ]; then
    echo "gpu_suite.sh: SHARD must be i/n with 1 <= i <= n; got '$SHARD'" >&2
    exit 2
  fi
  picked=()
  for i in "${!files[@]}"; do
    if [ $((i % count)) -eq $((index - 1)) ]; then picked+=("${files[$i]}"); fi
  done
  files=("${picked[@]}")
  if [ "$index" -ne 1 ]; then doctests=(); fi
  tag="shard$index-of-$count"
fi

parallel=()
if [ "$WORKERS" -gt 0 ] && "$PY" -c "import xdist" 2>/dev/null; then
  parallel=(-n "$WORKERS" --dist loadfile)
  # As `make test`: the conftest orders the units (the long single programs first).
  if "$PY" -m pytest --help 2>/dev/null | grep -q -- --no-loadscope-reorder; then
    parallel+=(--no-loadscope-reorder)
  fi
fi
echo "== ${#files[@]} test files${doctests:+ and the doctests of ${doctests[*]}}, ${parallel[*]:-one process} (load average: $(cut -d' ' -f1-3 /proc/loadavg)) =="
# SIGINT first: pytest then stops, reports what ran and writes the junit file.
timeout -s INT -k 30 "${SUITE_TIMEOUT:-540}" "$PY" -m pytest -q -m "not slow" --doctest-modules \
  -p no:cacheprovider "${parallel[@]}" --junitxml="$OUT/junit-$tag.xml" --durations=15 \
  "${files[@]}" "${doctests[@]}" > "$OUT/log-$tag.txt" 2>&1
status=$?
tail -n 40 "$OUT/log-$tag.txt"

"$PY" benchmarks/junit_summary.py "$OUT" --title "The default suite on $("$PY" -c \
  'import jax; d = jax.devices()[0]; k = getattr(d, "device_kind", ""); print(d.platform + (f" ({k})" if k != d.platform else ""))' 2>/dev/null)" \
  > "$OUT/summary.md"
cat "$OUT/summary.md"
echo "== done (load average: $(cut -d' ' -f1-3 /proc/loadavg)); outputs in $OUT; status $status =="
exit $status
