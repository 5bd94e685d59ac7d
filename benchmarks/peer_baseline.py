"""Side-by-side: pgolf's `baseline` preset and the official naive baseline ``train_gpt.py``, same shards,
same wallclock cap, same GPU, one after the other. Writes one JSON with both round-trip BPBs and tokens/s.

    source benchmarks/device_env.sh sp1024
    python3 benchmarks/peer_baseline.py --peer .peers/baseline_train_gpt.py --data data/proxy_sp1024 \
        --wallclock 90 --val-every 50 --out benchmarks/results/proxy_baseline.json

The official script is read from the path given (never copied into this project). It is run from a
scratch folder with DATA_PATH / TOKENIZER_PATH / VOCAB_SIZE / MAX_WALLCLOCK_SECONDS / VAL_LOSS_EVERY.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

STEP_VAL = re.compile(r"step:(\d+)/\d+ val_loss:([\d.]+) val_bpb:([\d.]+) train_time:(\d+)ms")
STEP_TRAIN = re.compile(r"step:(\d+)/\d+ train_loss:[\d.naninf]+ train_time:(\d+)ms")
FINAL = re.compile(r"final_int8_zlib_roundtrip_exact val_loss:([\d.]+) val_bpb:([\d.]+)")
TOTAL = re.compile(r"Total submission size int8\+zlib: (\d+) bytes")
PEAK = re.compile(r"peak memory allocated: (\d+) MiB")


def run_pgolf(data: Path, wallclock: float, val_every: int, run_id: str, extra: list[str], iterations: int = 20000) -> dict:
    cmd = [sys.executable, "-m", "pgolf", "train", "--preset", "baseline", "--run-id", run_id,
           "--set", f"data.path={data}", "--set", "data.corpus=proxy", "--set", f"train.wallclock_s={wallclock}",
           "--set", f"train.iterations={iterations}",
           "--set", f"train.val_every={val_every}"] + [a for s in extra for a in ("--set", s)]
    print("+", " ".join(cmd), flush=True)
    t0 = time.time()
    subprocess.run(cmd, check=True)
    summary = json.loads((Path("runs") / run_id / "summary.json").read_text())
    summary["wall_s_outer"] = time.time() - t0
    return summary


def parse_peer_log(text: str, batch_tokens: int) -> dict:
    vals = [{"step": int(s), "val_loss": float(l), "val_bpb": float(b), "train_time_s": int(t) / 1000}
            for s, l, b, t in STEP_VAL.findall(text)]
    steps = [(int(s), int(t)) for s, t in STEP_TRAIN.findall(text)]
    last_step, last_ms = steps[-1] if steps else (0, 0)
    if vals and vals[-1]["step"] >= last_step:
        last_step, last_ms = vals[-1]["step"], int(vals[-1]["train_time_s"] * 1000)
    final = FINAL.search(text)
    total = TOTAL.search(text)
    peak = PEAK.search(text)
    return {
        "steps": last_step,
        "train_time_s": last_ms / 1000,
        "tokens_per_s": last_step * batch_tokens / (last_ms / 1000) if last_ms else None,
        "val_bpb_roundtrip": float(final.group(2)) if final else None,
        "val_loss_roundtrip": float(final.group(1)) if final else None,
        "val_bpb_prequant": vals[-1]["val_bpb"] if vals else None,
        "bytes_total": int(total.group(1)) if total else None,
        "peak_mem_mib": int(peak.group(1)) if peak else None,
        "curve": vals,
    }


def run_peer(script: Path, data: Path, wallclock: float, val_every: int, workdir: Path, iterations: int = 20000) -> dict:
    workdir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, DATA_PATH=str(data.resolve()), TOKENIZER_PATH=str((data / "tokenizer.model").resolve()),
               VOCAB_SIZE="1024", MAX_WALLCLOCK_SECONDS=str(wallclock), VAL_LOSS_EVERY=str(val_every),
               ITERATIONS=str(iterations),
               RUN_ID="peer", TRAIN_LOG_EVERY="50")
    print(f"+ (cd {workdir}) python3 {script}", flush=True)
    t0 = time.time()
    proc = subprocess.run([sys.executable, str(script.resolve())], cwd=workdir, env=env, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    (workdir / "stdout.log").write_text(proc.stdout)
    print(proc.stdout[-3000:], flush=True)
    if proc.returncode != 0:
        raise SystemExit(f"peer script failed with exit code {proc.returncode}")
    out = parse_peer_log(proc.stdout, batch_tokens=524_288)
    out["wall_s_outer"] = time.time() - t0
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--peer", type=Path, required=True, help="path to the official train_gpt.py")
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--wallclock", type=float, default=90.0)
    ap.add_argument("--iterations", type=int, default=0,
                    help="cap both runs at this many steps instead of the wallclock (0 = wallclock cap): both then "
                         "use the iteration-based warmdown, so the LR schedule is identical step for step")
    ap.add_argument("--val-every", type=int, default=50)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--set", action="append", default=[], help="extra pgolf overrides")
    args = ap.parse_args()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    wallclock, iterations = (0.0, args.iterations) if args.iterations else (args.wallclock, 20000)
    ours = run_pgolf(args.data, wallclock, args.val_every, f"peer-baseline-{stamp}", args.set, iterations)
    theirs = run_peer(args.peer, args.data, wallclock, args.val_every, Path("runs") / f"peer-official-{stamp}",
                      iterations)
    result = {
        "what": "pgolf baseline vs official naive baseline train_gpt.py, same shards/cap/GPU",
        "data": str(args.data), "wallclock_s": wallclock, "iterations": iterations, "device": ours.get("device"),
        "pgolf": {"run_dir": ours["run_dir"], "steps": ours["steps"], "train_time_s": ours["train_time_s"],
                  "tokens_per_s": ours["tokens_per_s"], "val_bpb_prequant": ours["val_bpb"]["prequant"],
                  "val_bpb_roundtrip": ours["val_bpb"]["roundtrip"], "bytes_total": ours["bytes"]["total"],
                  "epochs": ours["epochs"], "mfu": ours["mfu"], "peak_mem_bytes": ours["peak_mem_bytes"],
                  "curve": [p for p in ours["curve"] if "val_bpb" in p]},
        "official": theirs,
    }
    if theirs["val_bpb_roundtrip"] and theirs["tokens_per_s"]:
        result["bpb_diff_pgolf_minus_official"] = ours["val_bpb"]["roundtrip"] - theirs["val_bpb_roundtrip"]
        result["tokens_per_s_ratio_pgolf_over_official"] = ours["tokens_per_s"] / theirs["tokens_per_s"]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k not in ("pgolf", "official")}, indent=2))
    print(f"pgolf    bpb {result['pgolf']['val_bpb_roundtrip']:.4f} tok/s {result['pgolf']['tokens_per_s']:,.0f} "
          f"steps {result['pgolf']['steps']}")
    print(f"official bpb {theirs['val_bpb_roundtrip']} tok/s {theirs['tokens_per_s']} steps {theirs['steps']}")


if __name__ == "__main__":
    main()
