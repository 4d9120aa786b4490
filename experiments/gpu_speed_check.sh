#!/usr/bin/env bash
# The speed measurements RESULTS.md still lacks, as one run on a GPU machine
# (four benchmark calls; not yet timed there). Each row of a comparison comes
# from the same machine in the same call, so the ratios are comparable.
#
#   bash experiments/gpu_speed_check.sh OUT_DIR [DATA_DIR] [extra benchmark flags]
#
# Writes OUT_DIR/<name>.md (the table), <name>.json (the rows) and <name>.log.
# A comparison that fails does not stop the others; the exit status says so.
set -euo pipefail
out=${1:?usage: gpu_speed_check.sh OUT_DIR [DATA_DIR] [benchmark flags]}
data=${2:-../shared/datasets}
shift $(( $# >= 2 ? 2 : 1 ))
mkdir -p "$out"
status=0

bench() {
  local name=$1
  shift
  echo "== $name: $*"
  python3 -m experiments.benchmark --data_dir="$data" --repeats=3 \
      --json="$out/$name.json" "$@" 2>"$out/$name.log" | tee "$out/$name.md"
}

# Baseline: the single-model rows the targets compare.
bench default --methods=backprop,sal "$@" || status=1
# 64 configurations, with and without the batched rule products: XLA's own
# estimate (CPU compile) has the batched form moving twice the bytes per step.
bench sweep64 --methods=sal --sweep=64 "$@" || status=1
bench sweep64_per_matrix --methods=sal --sweep=64 --batched=off "$@" \
    || status=1
# One model with every single-model knob on at once.
XLA_FLAGS="${XLA_FLAGS:-} --xla_gpu_experimental_force_split_k=1" \
    bench single_knobs --methods=backprop,sal --flatten --unroll=4 "$@" \
    || status=1
exit "$status"
