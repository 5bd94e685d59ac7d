#!/usr/bin/env bash
# Device call for issue 5: where pgolf's looped phase loses time against record #1855. model_step_bench.py times
# one compiled pr1855 micro-step (98,304 tokens, forward + backward, real proxy batches) looped (progress 1.0) and
# plain (progress 0.0): this checkout with mix-order reduction on (the preset) and off, and, with OLD_SRC, another
# checkout with the preset, so a change of model code is measured on one GPU in one call.
#
#   carry: .whl .carry      command: bash benchmarks/issue5_looped_ab.sh
#   env:   OLD_SRC=.carry/old/src: also that checkout (prepare: mkdir -p .carry/old && git archive 2df3e56 src |
#          tar -x -C .carry/old) | KERNELS=3 profiled steps per variant (0: none) | ITERS=10 timed micro-steps
#          MORE="fa4:model.attn_backend=fa4 ..." extra variants of this checkout, at both progresses
#          VARIANTS="..." replaces the two default variants (base, no_mix_order) | PROGRESS="1.0 0.0" which to run
#          FULL=1: time the loop's whole step (model_step_bench.py --full-step: 8 micro-steps, clip, optimizers, EMA)
#          SETS="key=value ...": settings for every variant of both checkouts (e.g. model.attn_backend=fa4)
#   time on one H100 (estimate): setup ~30 s, then ~80 s per compiled variant (4, +2 per MORE, +2 with OLD_SRC)
set -uo pipefail
source benchmarks/device_env.sh sp8192 || exit 1
OLD_SRC=${OLD_SRC:-}
COMMON=(--preset pr1855 --data data/proxy_sp8192 --iters "${ITERS:-10}" --kernels "${KERNELS:-3}" ${FULL:+--full-step})
for kv in ${SETS:-}; do COMMON+=(--set "$kv"); done  # e.g. SETS="model.attn_backend=fa4": every variant, OLD_SRC too
rc=0
for prog in ${PROGRESS:-1.0 0.0}; do
  variants=()
  for v in ${VARIANTS:-base no_mix_order:train.mix_order_reduction=false} ${MORE:-}; do variants+=(--variant "$v"); done
  echo "=== this checkout, progress $prog ($(date +%T))"
  python3 benchmarks/model_step_bench.py "${COMMON[@]}" --progress "$prog" "${variants[@]}" \
      --out "$OUT/model_step_progress${prog}.json" 2>&1 | grep -v "^USDT" | tail -8
  rc=$(( rc || PIPESTATUS[0] ))
  if [ -n "$OLD_SRC" ]; then  # model_step_bench.py refuses a folder without a pgolf package
    echo "=== $OLD_SRC, progress $prog ($(date +%T))"
    PGOLF_SRC="$(cd "$OLD_SRC" && pwd)" python3 benchmarks/model_step_bench.py "${COMMON[@]}" --progress "$prog" \
        --variant old_base --out "$OUT/model_step_progress${prog}_old.json" 2>&1 | grep -v "^USDT" | tail -3
    rc=$(( rc || PIPESTATUS[0] ))
  fi
done
echo "=== done ($(date +%T))"
exit $rc
