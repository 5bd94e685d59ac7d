#!/usr/bin/env bash
# One device call, several jobs in order; results land in $OUT.
#
#   bash benchmarks/device_jobs.sh gputests ab:base,mlp3 baseline_bf16rope quant:<run_dir>
#
# gputests            pytest -m gpu on the model/attention tests
# baseline_bf16rope   pgolf baseline at the official settings with the official's bf16 RoPE tables (90 s)
# ab:<variants>       benchmarks/ab_proxy.py --suite issue4 --only <variants>
set -uo pipefail
source benchmarks/device_env.sh sp1024 || exit 1
nvidia-smi --query-gpu=name,clocks.sm --format=csv,noheader
n=0
for job in "$@"; do
  n=$((n + 1))
  echo "=== job $n: $job ($(date +%T))"
  case "$job" in
    gputests)
      python3 -m pytest -q -m gpu -p no:cacheprovider tests/test_attention.py tests/test_model_techniques.py 2>&1 | tail -4 ;;
    baseline_bf16rope)
      python3 -m pgolf train --preset baseline --run-id baseline-bf16rope --set data.path=data/proxy_sp1024 \
        --set data.corpus=proxy --set train.wallclock_s=90 --set train.val_every=50 --set model.rope_bf16_tables=true \
        2>&1 | grep -v "^step:[0-9]*/" | tail -12
      cp runs/baseline-bf16rope/summary.json "$OUT/baseline-bf16rope_summary.json" ;;
    ab:*)
      python3 benchmarks/ab_proxy.py --suite issue4 --data data/proxy_sp1024 --only "${job#ab:}" \
        --out "$OUT/ab_$n.json" 2>&1 | grep -E "^(variant|base|mlp3|leaky|xsa|partial|smear|parallel|loops|all|Traceback|[A-Za-z]*Error)" ;;
    *) echo "unknown job $job" ;;
  esac
done
echo "=== done $(date +%T)"
