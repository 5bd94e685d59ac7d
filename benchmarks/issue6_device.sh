#!/usr/bin/env bash
# Device call for issue 6 (compression): GPU tests of the quant modules, a 90 s proxy-track baseline run
# (its model_fp32.pt is the float model every scheme starts from), then the scheme table and inspect chart.
#
#   carry: .whl .carry      command: bash benchmarks/issue6_device.sh
set -uo pipefail
source benchmarks/device_env.sh sp1024 || exit 1
nvidia-smi --query-gpu=name,memory.total --format=csv
python3 -m pytest -q -m gpu -p no:cacheprovider tests/test_quant_gptq.py tests/test_quant_export.py 2>&1 | tail -3
python3 -m pgolf train --preset baseline --proxy --run-id quant-src --set data.path=data/proxy_sp1024 \
    2>&1 | tail -8
python3 benchmarks/quant_table.py --run runs/quant-src --out "$OUT/quant_table_proxy.json"
rc=$?
cp runs/quant-src/summary.json "$OUT/quant-src_summary.json" 2>/dev/null
cp runs/quant-src/train.log "$OUT/quant-src_train.log" 2>/dev/null
exit $rc
