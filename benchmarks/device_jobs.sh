#!/usr/bin/env bash
# One device call, several jobs in order; results land in $OUT.
#
#   bash benchmarks/device_jobs.sh gputests parity:250 ab:base,mlp3
#
# gputests            pytest -m gpu on the model/attention tests and tests/test_gpu.py
# pytest:<node id>    one test, synchronous CUDA launches (tracebacks point at the failing kernel)
# diag[:<cases>]      benchmarks/diag_doc_isolated.py: which attention setting faults under inductor
# parity:<N>          pgolf baseline vs the official train_gpt.py, both capped at N iterations (same LR schedule)
# ab:<variants>       benchmarks/ab_proxy.py --suite issue4 --only <variants> (ab5: the same for --suite issue5)
# quant:<variant>:<schemes>  benchmarks/quant_table.py on the newest runs/ab-<variant>-* model
# fusedce              GPU tests of model/fused_ce.py and benchmarks/fused_ce_bench.py --sweep
# fusedmlp             GPU tests of model/fused_mlp.py and benchmarks/fused_mlp_bench.py --sweep (#1855's MLP, one
#                      micro-batch; with the record's own kernel when .peers/pr1855_train_gpt.py is carried)
# fa4                  GPU tests of model/attn_fa4.py and varlen_attn_bench.py fa2_varlen vs fa4 and its forward
#                      options (on data/proxy_sp8192 when built, e.g. after data:sp8192); needs .fa4site from an
#                      earlier call (fa4_wheels.sh)
# fa4pad:<n,n,...>     varlen_attn_bench.py fa2_varlen vs fa4 at each count of padded offsets (--pad-to)
# data:<tokenizer>     also build data/proxy_<tokenizer> (e.g. sp8192, from .carry/tok/proxy_sp8192.model)
# profile:<preset>[:<tokenizer>]  40 s proxy run with train.profile_steps=20 -> $OUT/profile_<preset>.json
set -uo pipefail
source benchmarks/device_env.sh sp1024 || exit 1
nvidia-smi --query-gpu=name,clocks.sm --format=csv,noheader
n=0
for job in "$@"; do
  n=$((n + 1))
  echo "=== job $n: $job ($(date +%T))"
  case "$job" in
    gputests)
      python3 -m pytest -q -m gpu -p no:cacheprovider tests/test_attention.py tests/test_model_techniques.py tests/test_gpu.py \
        > "$OUT/gputests.log" 2>&1; tail -4 "$OUT/gputests.log" ;;
    pytest:*)
      CUDA_LAUNCH_BLOCKING=1 python3 -m pytest -q -x -m gpu -p no:cacheprovider -p no:logging "${job#pytest:}" 2>&1 \
        | grep -v "^DEBUG" | tail -60 ;;
    diag|diag:*)  # diag:<case,case,...> runs those cases, 8 at a time (each its own process and CUDA context)
      cases=""; [ "$job" != diag ] && cases="--cases ${job#diag:}"
      python3 benchmarks/diag_doc_isolated.py $cases --jobs 8 --out "$OUT/diag_$n.json" ;;
    parity:*)
      python3 benchmarks/peer_baseline.py --peer .peers/baseline_train_gpt.py --data data/proxy_sp1024 \
        --iterations "${job#parity:}" --val-every 50 --out "$OUT/parity_iterations.json" 2>&1 | tail -4 ;;
    ab:*|ab5:*)
      suite=issue4; [ "${job%%:*}" = ab5 ] && suite=issue5
      python3 benchmarks/ab_proxy.py --suite "$suite" --data data/proxy_sp1024 --only "${job#*:}" \
        --out "$OUT/ab_$n.json" 2>&1 | grep -E "^(variant|base|mlp3|leaky|xsa|partial|smear|parallel|loops|all|optim|cudnn|fused|max|doc|Traceback|[A-Za-z]*Error)" ;;
    quant:*)
      spec="${job#quant:}"; src=$(ls -d runs/ab-"${spec%%:*}"-* | tail -1)
      python3 benchmarks/quant_table.py --run "$src" --schemes "${spec#*:}" --out "$OUT/quant_$n.json" 2>&1 \
        | grep -E "^(\||prequant|calibration|Traceback|[A-Za-z]*Error)" ;;
    fusedce)
      python3 -m pytest -q -m gpu -p no:cacheprovider tests/test_fused_ce.py > "$OUT/fused_ce_gputests.log" 2>&1
      tail -3 "$OUT/fused_ce_gputests.log"
      python3 benchmarks/fused_ce_bench.py --sweep --out "$OUT/fused_ce_bench.json" 2>&1 | tail -12 ;;
    fusedmlp)
      python3 -m pytest -q -m gpu -p no:cacheprovider tests/test_fused_mlp.py > "$OUT/fused_mlp_gputests.log" 2>&1
      tail -3 "$OUT/fused_mlp_gputests.log"
      rec=(); [ -f .peers/pr1855_train_gpt.py ] && rec=(--record-script .peers/pr1855_train_gpt.py)
      python3 benchmarks/fused_mlp_bench.py --sweep --kernels 5 "${rec[@]}" --out "$OUT/fused_mlp_bench.json" 2>&1 | tail -16 ;;
    fa4)
      python3 -c "import flash_attn.cute.interface as m; print('flash_attn.cute from', m.__file__)" 2>&1 | tail -2
      python3 -m pytest -q -m gpu -p no:cacheprovider tests/test_attn_fa4.py > "$OUT/fa4_gputests.log" 2>&1
      tail -3 "$OUT/fa4_gputests.log"
      d=data/proxy_sp1024; [ -d data/proxy_sp8192 ] && d=data/proxy_sp8192
      python3 benchmarks/varlen_attn_bench.py --data "$d" --out "$OUT/varlen_attn_bench_fa4.json" \
        --variants fa2_varlen fa4 fa4_bwd_repeat fa4_tile128 fa4_nopack fa4_tile128_nopack 2>&1 | tail -8 ;;
    fa4pad:*)  # fa4pad:2048,512,320: the same at each count of padded offsets (pgolf pads 48 x 2048 proxy batches
      #           to 512 = 64 * 2^3, where at most 278 are needed; FA4 sizes its backward buffers by the count)
      d=data/proxy_sp1024; [ -d data/proxy_sp8192 ] && d=data/proxy_sp8192
      for pad in $(echo "${job#fa4pad:}" | tr , ' '); do
        echo "--pad-to $pad"
        python3 benchmarks/varlen_attn_bench.py --data "$d" --pad-to "$pad" --out "$OUT/varlen_attn_bench_pad$pad.json" \
          --variants fa2_varlen fa4 2>&1 | grep -E "^(fa2_varlen|fa4) |Error"
      done ;;
    data:*)
      tok="${job#data:}"
      python3 -m pgolf data build --corpus proxy --tokenizer "$tok" --docs-dir .carry/proxy_docs \
        --tokenizer-path ".carry/tok/proxy_${tok}.model" 2>&1 | tail -2 ;;
    profile:*)
      spec="${job#profile:}"; preset="${spec%%:*}"; tok=sp1024; [ "$spec" != "$preset" ] && tok="${spec#*:}"
      python3 -m pgolf train --preset "$preset" --proxy --run-id "profile-$preset" --set "data.path=data/proxy_$tok" \
        --set train.wallclock_s=40 --set train.profile_steps=20 2>&1 | grep -E "^(warmup|stopped|Traceback|[A-Za-z]*Error)"
      cp "runs/profile-$preset/profile.json" "$OUT/profile_$preset.json" 2>/dev/null
      python3 -c "import json,sys; r=json.load(open(sys.argv[1])); print(round(r['total_ms_per_step'],2), 'ms/step', \
        {k: round(v['share'], 3) for k, v in r['kinds'].items()})" "$OUT/profile_$preset.json" ;;
    *) echo "unknown job $job" ;;
  esac
done
echo "=== done $(date +%T)"
