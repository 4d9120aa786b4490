#!/usr/bin/env bash
# The speed issue's GPU rows, as one call to a GPU machine: the rows behind
# RESULTS.md's targets table with the library's defaults and with the opt-in
# bf16 products and storage (these calls took about 190 s on the H200 of GPU
# run 6, before the four bf16 calls were added). The comparisons GPU runs 4
# to 7 made are in results/h200_run*/README.md (run 4's script is in git
# history at cd2a05b; run 6's scripts and run 7's kernel are beside their
# READMEs). Each call's rows come from the same machine, so ratios within one
# call are comparable.
#
#   [CALL_TIMEOUT=S] [ONLY="NAME ..."] bash experiments/gpu_speed_check.sh OUT_DIR [DATA_DIR] [benchmark flags]
#
# CALL_TIMEOUT: seconds after which one call is stopped (default: none).
# ONLY: the calls to make, by name (default: all), for a GPU lent for minutes.
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
  if [[ -n "${ONLY:-}" && " $ONLY " != *" $name "* ]]; then
    return 0
  fi
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

# First, whether the library's concurrent command-buffer schedule trains
# exactly what XLA's default schedule (LHS) trains (one epoch, one model and a
# sweep; the weights must be identical: they were in GPU run 6).
lhs=--xla_option=xla_gpu_command_buffer_scheduling_mode=LHS
run schedule_identical option_check --methods=backprop,sal "$lhs" "$@" \
    || status=1
# One model and a sweep of 16: SAL against backprop, scan against the per-step
# loop, the sweep's gain.
bench default --methods=backprop,sal "$@" || status=1
# 64 configurations, each its own data order (seeds) and one order for all (a
# grid of hyperparameters on one seed).
bench sweep64 --methods=sal --sweep=64 "$@" || status=1
bench sweep64_shared --methods=sal --sweep=64 --sweep_order=shared "$@" \
    || status=1
# The same with the products' operands rounded to bfloat16 (BUILD.md, "Speed
# knobs"; GPU run 7 timed them 9-11% faster than TF32).
bf16=--precision=BF16_BF16_F32
bench bf16 --methods=backprop,sal --sweep=64 "$bf16" "$@" || status=1
bench bf16_shared --methods=sal --sweep=64 --sweep_order=shared "$bf16" "$@" \
    || status=1
# And with the updates G and the momentum stored in bfloat16 (BUILD.md, "Speed
# knobs"; not yet timed on a GPU: XLA's H100 compile moves 17.6% fewer bytes a
# step for SAL's sweep of 64).
storage=(--update_dtype=bfloat16 --momentum_dtype=bfloat16)
bench bf16_storage --methods=backprop,sal --sweep=64 "$bf16" "${storage[@]}" \
    "$@" || status=1
# SAL's wider feedback streams (ratio sqrt5, sqrt8).
bench ratios --methods=sal_sqrt5,sal_sqrt8 "$@" || status=1
# The same with bf16 products and storage: their sweeps of 16 move 21% fewer
# bytes, their single models 17% fewer (XLA's H100 compile), which may lift the
# sweep's gain toward 4x.
bench ratios_bf16 --methods=sal_sqrt5,sal_sqrt8 "$bf16" "${storage[@]}" "$@" \
    || status=1
# Compiles, briefly runs: the vmapped sweeps of sgd, fa and kp.
bench methods_quick --methods=sgd,fa,kp --quick || status=1
echo "== done (at ${SECONDS} s)"
exit "$status"
