#!/usr/bin/env bash
# Device call for the foundation issue: GPU tests, then the proxy track (90 s) of pgolf `baseline`
# and the official naive baseline train_gpt.py on the same shards, one after the other.
#
#   carry: .whl .carry .peers    command: bash benchmarks/issue3_device.sh
set -uo pipefail
source benchmarks/device_env.sh sp1024 || exit 1
nvidia-smi --query-gpu=name,memory.total,clocks.sm --format=csv
python3 -m pytest -q -m gpu -p no:cacheprovider tests/test_gpu.py 2>&1 | tail -5
python3 benchmarks/peer_baseline.py --peer .peers/baseline_train_gpt.py --data data/proxy_sp1024 \
    --wallclock 90 --val-every 50 --out "$OUT/proxy_baseline.json"
rc=$?
for d in runs/peer-*; do
  [ -f "$d/summary.json" ] && cp "$d/summary.json" "$OUT/$(basename "$d")_summary.json"
  [ -f "$d/train.log" ] && cp "$d/train.log" "$OUT/$(basename "$d")_train.log"
  [ -f "$d/stdout.log" ] && cp "$d/stdout.log" "$OUT/$(basename "$d")_stdout.log"
done
cp data/proxy_sp1024/manifest.json "$OUT/proxy_sp1024_manifest.json"
exit $rc
