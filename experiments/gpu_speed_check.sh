#!/usr/bin/env bash
# The speed comparisons of GPU run 4, as one call to a GPU machine (nine
# benchmark calls; 314 s on an H200). Each comparison's rows come from
# the same machine in the same call, so their ratios are comparable.
#
#   [BASELINE=DIR] [CALL_TIMEOUT=S] bash experiments/gpu_speed_check.sh OUT_DIR [DATA_DIR] [benchmark flags]
#
# BASELINE: a copy of the code GPU run 3 timed, made with
#   mkdir -p DIR && git archive c17079f | tar -x -C DIR
# Its two comparisons are timed from there; without BASELINE they are skipped.
# CALL_TIMEOUT: seconds after which one benchmark call is stopped (default: none).
# Writes OUT_DIR/<name>.md (the table), <name>.json (the rows) and <name>.log.
# A comparison that fails does not stop the others; the exit status says so.
set -euo pipefail
out=$(realpath -m "${1:?usage: gpu_speed_check.sh OUT_DIR [DATA_DIR] [benchmark flags]}")
data=$(realpath -m "${2:-../shared/datasets}")
shift $(( $# >= 2 ? 2 : 1 ))
mkdir -p "$out"
status=0

bench() {  # name [benchmark flags]: this tree's benchmark
  local name=$1
  shift
  echo "== $name: $* (at ${SECONDS} s)"
  timeout "${CALL_TIMEOUT:-0}" python3 -m experiments.benchmark \
      --data_dir="$data" --repeats=3 --json="$out/$name.json" "$@" \
      2>"$out/$name.log" | tee "$out/$name.md"
}

bench_baseline() {  # name [benchmark flags]: bench in the BASELINE tree
  if [[ -z "${BASELINE:-}" ]]; then
    echo "== $1: skipped (no BASELINE)"
    return 0
  fi
  echo "== $1 from BASELINE=$BASELINE"
  (cd "$BASELINE" && export PYTHONPATH="$BASELINE${PYTHONPATH:+:$PYTHONPATH}" \
      && bench "$@")
}

# The library's defaults against the code GPU run 3 timed, same machine. In
# XLA:GPU's compile for an H100 one SAL step went from 58 kernels moving
# 76.3 MB to 35 moving 42.7 MB; backprop from 35 / 40.1 to 26 / 15.0.
bench default --methods=backprop,sal "$@" || status=1
bench_baseline before --methods=backprop,sal "$@" || status=1
# 64 configurations, both ways: 2.75 GB per step then, 1.88 GB now.
bench sweep64 --methods=sal --sweep=64 "$@" || status=1
bench_baseline sweep64_before --methods=sal --sweep=64 "$@" || status=1
# One model, four steps per iteration of the compiled loop.
bench single_unroll4 --methods=backprop,sal --unroll=4 "$@" || status=1
# One model with per-matrix rule products: 55 kernels moving 30.9 MB in the
# H100 compile, against 35 and 42.7 batched.
bench single_per_matrix --methods=sal --batched=off "$@" || status=1
# Compiles, briefly runs: the vmapped sweeps of sgd, fa and kp with per-matrix
# products, whose 784-wide product the CUDA plugin cannot tile without a GPU
# to autotune on (experiments/gpu_program.py).
bench methods_quick --methods=sgd,fa,kp --quick || status=1
# Last, as they may fail: XLA's experimental second gemm-fusion pass, which
# fuses the copies that stack the batched products' operands into the
# products (H100 compile of one SAL step: 27 kernels moving 29.9 MB, against
# 35 and 42.7; backprop 22 against 26). Without a GPU to autotune on, the
# plugin cannot tile a sweep's products with it, so the sweep of 64 is tried
# here only, where autotuning may find tiles.
v2=--xla_option=xla_gpu_experimental_gemm_fusion_v2=true
bench single_gemm_fusion_v2 --methods=backprop,sal --unroll=4 "$v2" "$@" \
    || status=1
bench sweep64_gemm_fusion_v2 --methods=sal --sweep=64 "$v2" "$@" || status=1
echo "== done (at ${SECONDS} s)"
exit "$status"
