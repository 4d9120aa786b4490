#!/usr/bin/env bash
# GPU run 6: the library's defaults (int8 batch, own sweep orders) and the untimed candidates, one call.
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
  tar czf $OUT/gpu6.tgz -C $W .
}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import jax; print(jax.__version__, jax.devices())"
A=$R/.device/alt
LHS=--xla_option=xla_gpu_command_buffer_scheduling_mode=LHS
stage default 80 $R benchmark --repeats=3 --methods=backprop,sal
stage sweep64 70 $R benchmark --repeats=3 --methods=sal --sweep=64
stage identical 70 $R option_check --methods=backprop,sal $LHS
stage labels_epoch 80 $A benchmark --repeats=3 --methods=backprop,sal
stage per_matrix 80 $R benchmark --repeats=3 --methods=sal,sal_sqrt8 --batched=off --sweep=2
stage labels_epoch64 70 $A benchmark --repeats=3 --methods=sal --sweep=64
stage combo 80 $A benchmark --repeats=3 --methods=backprop,sal --batched=off --unroll=4 --sweep=2
stage ratios 80 $R benchmark --repeats=3 --methods=sal_sqrt5,sal_sqrt8
stage graph_loop 90 $R benchmark --repeats=3 --methods=backprop,sal --sweep=2 --xla_option=xla_gpu_enable_command_buffer=FUSION,CUBLAS,CUBLASLT,CUSTOM_CALL,CUDNN,DYNAMIC_SLICE_FUSION,CONDITIONAL,WHILE --xla_option=xla_gpu_command_buffer_unroll_loops=true
stage methods_quick 50 $R benchmark --methods=sgd,fa,kp --quick
stage sweep64_shared 60 $R benchmark --repeats=3 --methods=sal --sweep=64 --sweep_order=shared
echo "done at $(( $(date +%s) - start )) s"
