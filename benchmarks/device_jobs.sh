#!/usr/bin/env bash
# One device call, several jobs in order; results land in $OUT.
#
#   bash benchmarks/device_jobs.sh gputests parity:250 ab:base,mlp3
#
# gputests            pytest -m gpu on the model/attention tests
# parity:<N>          pgolf baseline vs the official train_gpt.py, both capped at N iterations (same LR schedule)
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
      python3 -m pytest -q -m gpu -p no:cacheprovider tests/test_attention.py tests/test_model_techniques.py \
        > "$OUT/gputests.log" 2>&1; tail -4 "$OUT/gputests.log" ;;
    parity:*)
      python3 benchmarks/peer_baseline.py --peer .peers/baseline_train_gpt.py --data data/proxy_sp1024 \
        --iterations "${job#parity:}" --val-every 50 --out "$OUT/parity_iterations.json" 2>&1 | tail -4 ;;
    ab:*)
      python3 benchmarks/ab_proxy.py --suite issue4 --data data/proxy_sp1024 --only "${job#ab:}" \
        --out "$OUT/ab_$n.json" 2>&1 | grep -E "^(variant|base|mlp3|leaky|xsa|partial|smear|parallel|loops|all|Traceback|[A-Za-z]*Error)" ;;
    *) echo "unknown job $job" ;;
  esac
done
echo "=== done $(date +%T)"
