#!/usr/bin/env bash
# Device call for issue 5 (fused softcapped CE): GPU tests of model/fused_ce.py, then the micro-benchmark
# (eager / compiled / fused / fused+compiled at N = 98,304, V = 1024 and 8192) with the Triton block/warp sweep.
#
#   carry: .whl      command: bash benchmarks/issue5_device.sh
set -uo pipefail
source benchmarks/device_env.sh none || exit 1
nvidia-smi --query-gpu=name,clocks.sm --format=csv,noheader
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
python3 -m pytest -q -m gpu -p no:cacheprovider tests/test_fused_ce.py > "$OUT/fused_ce_gputests.log" 2>&1
rc=$?
tail -15 "$OUT/fused_ce_gputests.log"
python3 benchmarks/fused_ce_bench.py --sweep --out "$OUT/fused_ce_bench.json" 2>&1 | tail -30
exit $(( rc || $? ))
