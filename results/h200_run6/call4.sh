#!/usr/bin/env bash
# GPU run 6, call 4: the int8 batch against the float32 one, one SAL model, same call.
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
  tar czf $OUT/gpu6c.tgz -C $W .
}
O=$R/.device/alt2
stage c_int8 45 $R benchmark --repeats=3 --methods=sal --sweep=2
stage c_float 45 $O benchmark --repeats=3 --methods=sal --sweep=2
stage c_int8_again 45 $R benchmark --repeats=3 --methods=sal --sweep=2
echo "done at $(( $(date +%s) - start )) s"
