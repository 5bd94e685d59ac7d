#!/usr/bin/env bash
# Device call for issue 5, item 2: training tokens/s and MFU of pgolf's pr1855 preset against record #1855's own
# train_gpt.py at equal model (786,432 tokens/step = 8 micro-steps of 48 x 2048, SP8192, loops on at 35%) on one
# GPU, on the proxy corpus. Record first, then pgolf, each capped at S training seconds, each with a wall limit
# taken from what is left of BUDGET; their JSONs are merged into $OUT/throughput_issue5.json.
#
#   carry: .whl .carry .peers      command: bash benchmarks/issue5_throughput.sh
#   needs: .carry/proxy_docs, .carry/tok/proxy_sp8192.model (data/proxy_sp8192/tokenizer.model),
#          .peers/pr1855_train_gpt.py (git -C /work/.mirror/openai+parameter-golf/repo show HEAD:records/
#          track_10min_16mb/2026-04-27_SP8192_LQER_SparseGate_BOSSmearFix_9HpStack_1.0611/train_gpt.py)
#   env:   S=60 training seconds each | BUDGET=570 wall seconds for the whole call | MODE=both|record|pgolf
#          PGOLF_SETS="--set model.fused_ce=false ..." extra pgolf overrides | PRESET=pr1855 | DATA=data/proxy_sp8192
#          PROFILE=N: also profile N steps of each run (the record through benchmarks/profile_script.py), same window
#          after warm-up; the JSON then holds GPU ms per step by kernel kind for both (a diagnosis, not a measurement)
#          PROFILE_SKIP=K: the window starts K timed steps after warm-up (default 10; e.g. 30 at S=50 is past the
#          loop switch at 35%, to profile the looped layers)
#          SKIP_SETUP=1: do not source device_env.sh (a local dry run:
#          OUT=/tmp/o SKIP_SETUP=1 PRESET=tiny DATA=data/demo_sp1024 S=3 bash benchmarks/issue5_throughput.sh)
#   two calls instead of one (advised since pr1855 uses attn_backend=varlen: pgolf primes one training graph per
#   cu_seqlens bucket and loop state, and one eval graph per bucket; and needed on a machine whose compile caches
#   are cold: there the record took 228 s to its first step and pgolf 139 s to prime its first loop state, so
#   pgolf ran out of its 260 s, throughput_issue5_mb64_pgolf_timeout_h100.json): MODE=record, then MODE=pgolf on
#   the same warm machine, then locally
#          python3 benchmarks/throughput.py --merge throughput_record.json throughput_pgolf.json --out merged.json
#   the record's run on one H100 (torch 2.11) is kept in benchmarks/results/throughput_record_h100.json: a pgolf
#   change needs only MODE=pgolf, merged against that file
#   time on one H100 (estimates, not measured): setup 30-60 s (wheels, proxy sp8192 encoded from the carried docs);
#   record 200-280 s (start-up ~15 s, two compiled graphs for its one cu_seqlens bucket, loops off/on, ~60-90 s
#   each, 2 x 5 priming steps, S s of training); pgolf 220-300 s (start-up, compiled training graphs for loops
#   off/on and one eval graph each, 2 x 5 priming steps, S s of training, stopped once training ends). Each JSON
#   keeps "marks": the wall second at which the run printed its first step and its end of training.
set -uo pipefail
T0=$SECONDS
S=${S:-60}
BUDGET=${BUDGET:-570}
MODE=${MODE:-both}
PRESET=${PRESET:-pr1855}
DATA=${DATA:-data/proxy_sp8192}
RECORD_SCRIPT=${RECORD_SCRIPT:-.peers/pr1855_train_gpt.py}
read -r -a PGOLF_ARGS <<< "${PGOLF_SETS:-}"
left() { echo $(( BUDGET - (SECONDS - T0) )); }
say() { echo "=== $* (t=$((SECONDS - T0))s, $(left)s left)"; }

if [ "$MODE" != pgolf ] && [ ! -f "$RECORD_SCRIPT" ]; then echo "missing $RECORD_SCRIPT (see the header)"; exit 1; fi
if [ "${SKIP_SETUP:-0}" != 1 ]; then
  source benchmarks/device_env.sh sp8192 || exit 1
  nvidia-smi --query-gpu=name,clocks.sm,memory.total --format=csv,noheader
fi
say "setup done"
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
W=runs/issue5_throughput
mkdir -p "$W"
COMMON=(--data "$DATA" --seconds "$S" --warmup-steps 5 --log-every 5 --workdir "$W" --profile-steps "${PROFILE:-0}"
        --profile-skip "${PROFILE_SKIP:-10}")
rc=0

if [ "$MODE" != pgolf ]; then
  # leave pgolf S + 210 s (start-up, two compiled training graphs, two eval graphs, 2 x 5 priming steps)
  reserve=10
  [ "$MODE" = both ] && reserve=$(( S + 210 ))
  limit=$(( $(left) - reserve ))
  say "record, wall limit ${limit}s"
  python3 benchmarks/throughput.py --record "$RECORD_SCRIPT" "${COMMON[@]}" --record-timeout "$limit" \
      --out "$OUT/throughput_record.json" 2>&1 | tail -30
  rc=$(( rc || PIPESTATUS[0] ))
  cp "$W/record_stdout.log" "$OUT/" 2>/dev/null
  cp "$W/record_profile/profile.json" "$OUT/profile_record.json" 2>/dev/null
fi

if [ "$MODE" != record ]; then
  limit=$(( $(left) - 15 ))
  say "pgolf $PRESET, wall limit ${limit}s"
  python3 benchmarks/throughput.py --pgolf "$PRESET" "${PGOLF_ARGS[@]}" "${COMMON[@]}" --pgolf-timeout "$limit" \
      --stop-after-training --out "$OUT/throughput_pgolf.json" 2>&1 | tail -30
  rc=$(( rc || PIPESTATUS[0] ))
  cp "$W/pgolf_stdout.log" "$OUT/" 2>/dev/null
  run=$(ls -d runs/throughput-"$PRESET"-* 2>/dev/null | tail -1)
  [ -n "$run" ] && cp "$run/train.log" "$OUT/pgolf_train.log" && cp "$run/config.json" "$OUT/pgolf_config.json"
  [ -n "$run" ] && cp "$run/profile.json" "$OUT/profile_pgolf.json" 2>/dev/null
fi

if [ "$MODE" = both ] && [ -f "$OUT/throughput_record.json" ] && [ -f "$OUT/throughput_pgolf.json" ]; then
  python3 benchmarks/throughput.py --merge "$OUT/throughput_record.json" "$OUT/throughput_pgolf.json" \
      --out "$OUT/throughput_issue5.json" 2>&1 | tail -14
fi
say "done"
exit $rc
