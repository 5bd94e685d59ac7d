#!/usr/bin/env bash
# Device call on a machine of several GPUs (kind nvidia-h200-x2): pgolf under NCCL. Jobs, in order:
#   tests  pytest -m gpu tests/test_gpu_ddp.py (2 ranks train as 1 GPU, compiled and under CUDA graphs; the pipeline)
#   run    a preset on the proxy through `torchrun --nproc_per_node=N -m pgolf train`, end to end (training, export
#          on rank 0, evaluation over the ranks); its config, log and summary are copied to $OUT/<run id>_*
#
#   carry: .whl .carry      command: JOBS="tests run" S=60 bash benchmarks/multi_gpu_device.sh
#   env:   S=60 training seconds | PRESET=pr1855 | NPROC=all GPUs | RUN_ID=ddp<N>_<preset> | LIMIT=480 wall seconds
#          for the run | PGOLF_SETS="--set model.attn_backend=fa4 ..." (fa4: unpack first, fa4_wheels.sh)
#          TORCH_LOGS=recompiles: dynamo names the guard behind a "graph(s) compiled inside the clock" warning
#          SKIP_SETUP=1 DATA=data/demo_sp1024: a local dry run on CPU (gloo), e.g.
#          OUT=/tmp/o SKIP_SETUP=1 JOBS=run PRESET=tiny DATA=data/demo_sp1024 NPROC=2 S=5 \
#            PGOLF_SETS="--set train.micro_batch_tokens=4096" bash benchmarks/multi_gpu_device.sh
set -uo pipefail
S=${S:-60}
PRESET=${PRESET:-pr1855}
DATA=${DATA:-data/proxy_sp8192}
if [ "${SKIP_SETUP:-0}" != 1 ]; then
  source benchmarks/device_env.sh sp8192 || exit 1
  nvidia-smi --query-gpu=name,clocks.sm,memory.total --format=csv,noheader
  NPROC=${NPROC:-$(nvidia-smi -L | wc -l)}
fi
NPROC=${NPROC:-2}
read -r -a SETS <<< "${PGOLF_SETS:-}"
rc=0
for job in ${JOBS:-tests run}; do
  echo "=== $job ($(date +%T))"
  case "$job" in
    tests)
      python3 -m pytest -q -m gpu -p no:cacheprovider tests/test_gpu_ddp.py > "$OUT/gpu_ddp_tests.log" 2>&1
      rc=$(( rc || $? )); tail -5 "$OUT/gpu_ddp_tests.log" ;;
    run)
      id=${RUN_ID:-ddp${NPROC}_${PRESET}}
      corpus=(); case "$(basename "$DATA")" in proxy_*) corpus=(--set data.corpus=proxy) ;; esac
      timeout "${LIMIT:-480}" python3 -m torch.distributed.run --standalone --nproc_per_node="$NPROC" -m pgolf train \
          --preset "$PRESET" --run-id "$id" --set "data.path=$DATA" "${corpus[@]}" --set "train.wallclock_s=$S" \
          --set train.log_every=10 "${SETS[@]}" > "$OUT/${id}_stdout.log" 2>&1
      rc=$(( rc || $? ))
      grep -E "^(stopped|prequant|roundtrip|bytes|summary|INVALID|warning:|pgolf: error)|Error" "$OUT/${id}_stdout.log" \
        | tail -12
      grep -E "^step:" "$OUT/${id}_stdout.log" | tail -3
      for f in config.json train.log summary.json; do
        [ -f "runs/$id/$f" ] && cp "runs/$id/$f" "$OUT/${id}_$f"
      done ;;
    *) echo "unknown job $job"; rc=1 ;;
  esac
done
echo "=== done ($(date +%T))"
exit $rc
