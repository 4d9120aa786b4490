#!/usr/bin/env bash
# GPU run 6, call 3: split-K and cuBLAS under the concurrent schedule, against the defaults, same call.
set -u
export PYTHONUNBUFFERED=1
R=$PWD
W=/tmp/o; mkdir -p $W
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .device/*.whl || exit 1
export PYTHONPATH=/tmp/site
D=$R/.device/data
start=$(date +%s)
left() { echo $(( ${BUDGET:-500} - ($(date +%s) - start) )); }
stage() {  # name timeout dir module flags...
  local name=$1 t=$2 dir=$3 mod=$4; shift 4
  local l=$(left)
  if [ $l -lt 30 ]; then echo "SKIP $name (no time)"; return; fi
  [ $t -gt $l ] && t=$l
  echo "=== $name (timeout $t s) at $(( $(date +%s) - start )) s: $mod $*"
  (cd $dir && timeout $t python3 -m experiments.$mod --data_dir=$D --json=$W/$name.json "$@" ${EXTRA:-} > $W/$name.log 2>&1)
  echo "=== $name rc=$? at $(( $(date +%s) - start )) s"
  grep "^|\|^#\|identical\|differ\|Error" $W/$name.log | grep -v "^|---" | cut -c1-260 | tail -8
  tar czf $OUT/gpu6b.tgz -C $W .
}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
SK=--xla_option=xla_gpu_experimental_force_split_k=0
CB=--xla_option=xla_gpu_enable_triton_gemm=false
stage b_default 70 $R benchmark --repeats=3 --methods=backprop,sal --sweep=2
stage b_splitk 70 $R benchmark --repeats=3 --methods=backprop,sal --sweep=2 $SK
stage b_cublas 70 $R benchmark --repeats=3 --methods=backprop,sal --sweep=2 $CB
stage b_sweep64 60 $R benchmark --repeats=3 --methods=sal --sweep=64
stage b_splitk64 60 $R benchmark --repeats=3 --methods=sal --sweep=64 $SK
echo "done at $(( $(date +%s) - start )) s"
