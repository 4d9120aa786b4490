#!/usr/bin/env bash
# The next GPU run's speed comparisons, as one call to a GPU machine (GPU run
# 6's plan; the version GPU run 4 ran is in git history, at cd2a05b). Each
# comparison's rows come from the same machine in the same call, so their
# ratios are comparable.
#
#   [CALL_TIMEOUT=S] bash experiments/gpu_speed_check.sh OUT_DIR [DATA_DIR] [benchmark flags]
#
# CALL_TIMEOUT: seconds after which one call is stopped (default: none).
# Writes OUT_DIR/<name>.md (the table), <name>.json (the rows) and <name>.log.
# A comparison that fails does not stop the others; the exit status says so.
set -euo pipefail
out=$(realpath -m "${1:?usage: gpu_speed_check.sh OUT_DIR [DATA_DIR] [benchmark flags]}")
data=$(realpath -m "${2:-../shared/datasets}")
shift $(( $# >= 2 ? 2 : 1 ))
mkdir -p "$out"
status=0

run() {  # name module [flags]: one call of an experiments module
  local name=$1 module=$2
  shift 2
  echo "== $name: $* (at ${SECONDS} s)"
  timeout "${CALL_TIMEOUT:-0}" python3 -m "experiments.$module" \
      --data_dir="$data" --json="$out/$name.json" "$@" \
      2>"$out/$name.log" | tee "$out/$name.md"
}
bench() {  # name [benchmark flags]
  local name=$1
  shift
  run "$name" benchmark --repeats=3 "$@"
}

# XLA's default command-buffer schedule (LHS), which the library's options
# replace with CONCURRENT (sal_jax/xla_options.py; GPU run 5: SAL's epoch
# 20.6 -> 17.5 ms, a sweep of 64 190.3 -> 170.5 ms).
lhs=--xla_option=xla_gpu_command_buffer_scheduling_mode=LHS
# First, whether the concurrent schedule trains exactly what LHS trains
# (one epoch, one model and a sweep; the weights must be identical).
run schedule_identical option_check --methods=backprop,sal "$lhs" "$@" \
    || status=1
bench default --methods=backprop,sal "$@" || status=1
bench default_lhs --methods=backprop,sal "$lhs" "$@" || status=1
bench sweep64 --methods=sal --sweep=64 "$@" || status=1
bench sweep64_lhs --methods=sal --sweep=64 "$lhs" "$@" || status=1
# One model with a product per rule matrix: 29.9 ms against 20.9 batched in
# GPU run 4, one kernel at a time; run concurrently, the unbatched products
# need no stacking copies and the top levels' need not wait for the bottom's
# (longest chain 17 kernels against 18: experiments/gpu_program.py). Also at
# ratio sqrt8, which the same default decides; sweeps of 2, as sweeps are
# per matrix already.
bench single_per_matrix --methods=sal,sal_sqrt8 --batched=off --sweep=2 "$@" \
    || status=1
# A grid on one seed: all members read one data order.
bench sweep64_shared --methods=sal --sweep=64 --sweep_order=shared "$@" \
    || status=1
# SAL's wider feedback streams (ratio sqrt5, sqrt8).
bench ratios --methods=sal_sqrt5,sal_sqrt8 "$@" || status=1
# Compiles, briefly runs: the vmapped sweeps of sgd, fa and kp with per-matrix
# products (compiled without a GPU only with each member's own batch:
# experiments/gpu_program.py).
bench methods_quick --methods=sgd,fa,kp --quick || status=1
# Last, as it may fail or compile slowly: the whole scanned loop as one CUDA
# graph, its 234 steps unrolled into it (no graph launch per step). Tried in
# GPU run 1 without unrolling, one kernel at a time: much slower.
graph=FUSION,CUBLAS,CUBLASLT,CUSTOM_CALL,CUDNN,DYNAMIC_SLICE_FUSION,CONDITIONAL
bench single_graph_loop --methods=backprop,sal \
    --xla_option=xla_gpu_enable_command_buffer=$graph,WHILE \
    --xla_option=xla_gpu_command_buffer_unroll_loops=true "$@" || status=1
echo "== done (at ${SECONDS} s)"
exit "$status"
