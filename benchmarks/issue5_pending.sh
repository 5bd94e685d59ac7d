#!/usr/bin/env bash
# One device call for what the 2026-12-04 session could not time (no device time left), each step time-boxed:
#   1. GPU tests of model.fused_head_ce (tests/test_fused_head_ce.py: the one-sweep Triton kernel);
#   2. the head + loss micro-benchmark at one pr1855 micro-batch (131,072 x 8192): fused_ce's two kernels against
#      fused_head_ce's one (fused_ce_bench.py);
#   3. pr1855's micro-step with fused_ce against fused_head_ce (model_step_bench.py, plain phase, the loop's
#      compile options; attention backend from ATTN, default varlen since fa4 needs a call of its own);
#   4. one export of the initialized pr1855 with and without quant.pergroup_split_bytes (export_time.py, GPTQ on).
#
#   carry: .whl .carry      command: bash benchmarks/issue5_pending.sh           (about 7 minutes on one H100)
#   env:   STEPS="1 2 3 4" | ATTN=varlen | PRESET=pr1855 | DATA=data/proxy_sp8192 | ROWS=131072
#          SKIP_SETUP=1: do not source device_env.sh (a CPU dry run:
#          OUT=/tmp/o SKIP_SETUP=1 PRESET=tiny DATA=data/demo_sp1024 ROWS=256 STEPS="2 3 4" bash benchmarks/issue5_pending.sh)
# Every result lands in $OUT; a step that fails or times out does not stop the next.
set -uo pipefail
OUT="${OUT:?set OUT}"
STEPS="${STEPS:-1 2 3 4}" ATTN="${ATTN:-varlen}" PRESET="${PRESET:-pr1855}" DATA="${DATA:-data/proxy_sp8192}"
ROWS="${ROWS:-131072}"
mkdir -p "$OUT"
if [ -z "${SKIP_SETUP:-}" ]; then
  source benchmarks/device_env.sh sp8192 > "$OUT/setup.log" 2>&1 || { tail -5 "$OUT/setup.log"; exit 1; }
fi
DEVICE=$(python3 -c "import torch; print('cuda' if torch.cuda.is_available() else 'cpu')")
rc=0
step() { case " $STEPS " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }
run() {  # run NAME SECONDS CMD...: output to $OUT/NAME.log, its tail printed, rc kept
  local name=$1 secs=$2; shift 2
  echo "=== $name (limit ${secs}s)"
  timeout "$secs" "$@" > "$OUT/$name.log" 2>&1
  local r=$?
  grep -v "^W1\|Warning\|warn" "$OUT/$name.log" | tail -8
  [ $r -eq 0 ] || { echo "$name: rc $r"; rc=1; }
}
if step 1; then
  run fused_head_ce_gputests 120 python3 -m pytest -q -m gpu -p no:cacheprovider tests/test_fused_head_ce.py
fi
if step 2; then
  run fused_head_ce_bench 120 python3 benchmarks/fused_ce_bench.py --device "$DEVICE" --rows "$ROWS" --vocab 8192 \
    --variants fused fused_compiled head --iters 20 --out "$OUT/fused_head_ce_bench.json"
fi
if step 3; then
  run model_step_fused_head_ce 300 python3 benchmarks/model_step_bench.py --preset "$PRESET" --data "$DATA" \
    --device "$DEVICE" --progress 0.0 --set "model.attn_backend=$ATTN" --variant fused_ce:model.fused_ce=true \
    --variant fused_head_ce:model.fused_head_ce=true --warmup 3 --iters 12 --kernels 2 --top 16 \
    --out "$OUT/model_step_fused_head_ce.json"
fi
if step 4; then
  for split in 0 3000000; do
    run "export_time_split$split" 150 python3 benchmarks/export_time.py --preset "$PRESET" --data "$DATA" \
      --set "quant.pergroup_split_bytes=$split" --out "$OUT/export_time_split$split.json"
  done
fi
exit $rc
