#!/usr/bin/env bash
# The speed measurements RESULTS.md still lacks, as one run on a GPU machine
# (nine benchmark calls; not yet timed there). Each row of a comparison comes
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

# The library's defaults against the ones GPU run 3 measured (batched rule
# products in every program, XLA's own compiler options), same machine.
bench default --methods=backprop,sal "$@" || status=1
bench before --methods=backprop,sal --batched=on --xla_options=xla "$@" \
    || status=1
# 64 configurations, both ways: XLA:GPU's compile for an H100 has the old
# program moving 2.75 GB per step and the new one 1.88 GB, in 44 kernels.
bench sweep64 --methods=sal --sweep=64 "$@" || status=1
bench sweep64_before --methods=sal --sweep=64 --batched=on --xla_options=xla \
    "$@" || status=1
# One model with the remaining single-model knobs on (37 kernels per SAL
# step in the H100 compile; backprop's default had 35 in GPU run 3).
bench single_knobs --methods=backprop,sal --flatten --unroll=4 "$@" \
    || status=1
# One model with per-matrix rule products: 53 kernels moving 30.9 MB per step
# in the H100 compile, against 48 and 58.0 batched. Undecided until timed.
bench single_per_matrix --methods=sal --batched=off "$@" || status=1
# Compiles, briefly runs: the vmapped sweeps of sgd, fa and kp with per-matrix
# products, whose 784-wide product the CUDA plugin cannot tile without a GPU
# to autotune on (experiments/gpu_program.py).
bench methods_quick --methods=sgd,fa,kp --quick || status=1
# Last, as they may fail: XLA's experimental second gemm-fusion pass, which
# fuses the copies that stack the batched products' operands into the
# products (H100 compile of one SAL step: 41 kernels moving 44.4 MB, against
# 48 and 58.0; backprop 22 against 25). Without a GPU to autotune on, the
# plugin cannot tile a sweep's products with it, and with --flatten it aborts
# XLA 0.10.2's compiler, so it runs without flatten, and for 64 members only
# here, where autotuning may find tiles.
v2=--xla_option=xla_gpu_experimental_gemm_fusion_v2=true
bench single_gemm_fusion_v2 --methods=backprop,sal --unroll=4 "$v2" "$@" \
    || status=1
bench sweep64_gemm_fusion_v2 --methods=sal --sweep=64 "$v2" "$@" || status=1
exit "$status"
