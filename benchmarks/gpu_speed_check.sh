#!/usr/bin/env bash
# The GPU rows of RESULTS.md's speed table, in one call: the library's
# defaults, then the opt-in bf16 products and storage. Rows within one call
# come from the same machine, so their ratios compare.
#
#   [CALL_TIMEOUT=S] [ONLY="NAME ..."] bash benchmarks/gpu_speed_check.sh OUT_DIR [DATA_DIR] [benchmark flags]
#
# CALL_TIMEOUT: seconds after which one call is stopped (default: none).
# ONLY: the calls to make, by name (default: all).
# Writes OUT_DIR/<name>.md (the table), <name>.json (the rows), <name>.log.
# A call that fails does not stop the others; the exit status says so.
set -euo pipefail
here=$(dirname "$(realpath "$0")")
out=$(realpath -m "${1:?usage: gpu_speed_check.sh OUT_DIR [DATA_DIR] [benchmark flags]}")
data=$(realpath -m "${2:-../shared/datasets}")
shift $(( $# >= 2 ? 2 : 1 ))
mkdir -p "$out"
status=0

bench() {  # name [benchmark flags]
  local name=$1
  shift
  if [[ -n "${ONLY:-}" && " $ONLY " != *" $name "* ]]; then
    return 0
  fi
  echo "== $name: $* (at ${SECONDS} s)"
  timeout "${CALL_TIMEOUT:-0}" python3 "$here/benchmark.py" --repeats=3 \
      --data_dir="$data" --json="$out/$name.json" "$@" \
      2>"$out/$name.log" | tee "$out/$name.md"
}

# One model and a sweep of 16: SAL against backprop, scan against the loop.
bench default --methods=backprop,sal "$@" || status=1
# 64 configurations, each its own data order (seeds) and one order for all.
bench sweep64 --methods=sal --sweep=64 "$@" || status=1
bench sweep64_shared --methods=sal --sweep=64 --sweep_order=shared "$@" \
    || status=1
# Products with bfloat16 operands and float32 sums; then G and the momentum
# stored in bfloat16 too.
bf16=--precision=BF16_BF16_F32
bench bf16 --methods=backprop,sal --sweep=64 "$bf16" "$@" || status=1
storage=(--update_dtype=bfloat16 --momentum_dtype=bfloat16)
bench bf16_storage --methods=backprop,sal --sweep=64 "$bf16" "${storage[@]}" \
    "$@" || status=1
# SAL's wider feedback streams (ratio sqrt5, sqrt8).
bench ratios --methods=sal_sqrt5,sal_sqrt8 "$@" || status=1
# The other methods compile and run.
bench methods_quick --methods=sgd,fa,wm,kp --quick "$@" || status=1
echo "== done (at ${SECONDS} s)"
exit "$status"
