"""Proxy-track A/B: one preset (proxy form, 90 s, one GPU) against the same preset with techniques switched on.

    source benchmarks/device_env.sh sp1024
    python3 benchmarks/ab_proxy.py --suite issue4 --data data/proxy_sp1024 --only base,mlp3 --out $OUT/ab.json

Each variant is one `pgolf train --preset <preset> --proxy --set ...` run in its own process; the JSON
lists val BPB (pre-quant, round-trip), tokens/s, steps, epochs and bytes per variant, and the deltas
against the `base` variant when it is in the same file. Runs can be split across calls with --only
and merged with --merge.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

PARALLEL_9L = ["model.parallel_start_layer=6"]
LOOPS_9L = ["model.num_loops=2", "model.loop_start=3", "model.loop_end=5", "model.loop_enable_at=0.35"]

# issue 5: #1855's optimizer and schedule stack (techniques.md 5.1) on the baseline model. EMA 0.99 keeps #1855's
# 0.9965 averaging horizon in steps scaled to the proxy run (~1,600 steps instead of ~4,900).
OPTIM_STACK = ["optim.muon_ns=polar_express", "optim.muon_row_normalize=true", "optim.muon_wd=0.095",
               "optim.embed_wd=0.085", "optim.adam_wd=0.02", "optim.beta2=0.99", "optim.matrix_lr=0.026",
               "optim.scalar_lr=0.02", "optim.tied_embed_lr=0.03", "optim.muon_momentum=0.97",
               "optim.muon_momentum_warmup_start=0.92", "optim.muon_momentum_warmup_frac=0.3",
               "optim.grad_clip_norm=0.3", "train.warmdown_frac=0.85", "train.min_lr=0.1", "train.ema_decay=0.99"]

SUITES: dict[str, dict[str, list[str]]] = {
    # issue 4: the baseline vs baseline + one technique each, and all of them together
    "issue4": {
        "base": [],
        "mlp3": ["model.mlp_mult=3"],
        "leaky_relu2": ["model.mlp_act=leaky_relu2", "model.mlp_leaky_slope=0.5"],
        "xsa_all": ["model.xsa_layers=all"],
        "partial_rope16": ["model.rope_dims=16"],
        "smear_bos_fixed": ["model.smear_gate=bos_fixed"],
        "parallel_from6": PARALLEL_9L,
        "loops_3to5x2": LOOPS_9L,
        "all": ["model.mlp_mult=3", "model.mlp_act=leaky_relu2", "model.mlp_leaky_slope=0.5", "model.xsa_layers=all",
                "model.rope_dims=16", "model.smear_gate=bos_fixed", *PARALLEL_9L, *LOOPS_9L],
    },
    # issue 5: the optimizer stack, and speed switches one at a time (same model arithmetic up to kernel rounding)
    "issue5": {"base": [], "optim_stack": OPTIM_STACK, "cudnn_sdpa": ["model.sdpa_priority=cudnn"],
               "fused_ce": ["model.fused_ce=true"], "fused_mlp": ["model.fused_mlp=true"], "max_autotune": ["train.compile_mode=max-autotune-no-cudagraphs"],
               # document isolation (issue 4) through each kernel that can do it without a dense mask
               "doc_flex": ["model.doc_isolated=true", "model.attn_backend=flex"],
               "doc_varlen": ["model.doc_isolated=true", "model.attn_backend=varlen"]},
}


def run_variant(preset: str, name: str, overrides: list[str], data: Path, stamp: str) -> dict:
    run_id = f"ab-{name}-{stamp}"
    cmd = [sys.executable, "-m", "pgolf", "train", "--preset", preset, "--proxy", "--run-id", run_id,
           "--set", f"data.path={data}"] + [a for o in overrides for a in ("--set", o)]
    print("+", " ".join(cmd), flush=True)
    t0 = time.time()
    proc = subprocess.run(cmd)
    summary_path = Path("runs") / run_id / "summary.json"
    if proc.returncode not in (0, 2) or not summary_path.is_file():
        return {"name": name, "overrides": overrides, "error": f"exit code {proc.returncode}"}
    s = json.loads(summary_path.read_text())
    return {"name": name, "overrides": overrides, "run_dir": s["run_dir"], "val_bpb_prequant": s["val_bpb"]["prequant"],
            "val_bpb_roundtrip": s["val_bpb"]["roundtrip"], "tokens_per_s": s["tokens_per_s"], "steps": s["steps"],
            "epochs": s["epochs"], "bytes_total": s["bytes"]["total"], "valid": s["valid"], "mfu": s["mfu"],
            "train_time_s": s["train_time_s"], "wall_s": time.time() - t0}


def add_deltas(rows: list[dict]) -> None:
    base = next((r for r in rows if r["name"] == "base" and "error" not in r), None)
    if not base:
        return
    for r in rows:
        if "error" not in r:
            r["delta_bpb_roundtrip"] = r["val_bpb_roundtrip"] - base["val_bpb_roundtrip"]
            r["tokens_per_s_ratio"] = r["tokens_per_s"] / base["tokens_per_s"]


def table(rows: list[dict]) -> str:
    lines = [f"{'variant':18s} {'bpb pre':>8s} {'bpb rt':>8s} {'delta':>8s} {'tok/s':>10s} {'steps':>6s} {'bytes':>11s}"]
    for r in rows:
        if "error" in r:
            lines.append(f"{r['name']:18s} {r['error']}")
            continue
        lines.append(f"{r['name']:18s} {r['val_bpb_prequant']:8.4f} {r['val_bpb_roundtrip']:8.4f} "
                     f"{r.get('delta_bpb_roundtrip', 0):+8.4f} {r['tokens_per_s']:10,.0f} {r['steps']:6d} "
                     f"{r['bytes_total']:11,d}")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--suite", choices=sorted(SUITES), default="issue4")
    ap.add_argument("--preset", default="baseline")
    ap.add_argument("--data", type=Path, default=None)
    ap.add_argument("--only", default="", help="comma-separated variant names (default: all)")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--merge", nargs="*", type=Path, default=[], help="merge earlier result files into --out")
    args = ap.parse_args()
    rows: list[dict] = []
    for path in args.merge:
        rows += [r for r in json.loads(path.read_text())["variants"]]
    if args.data is not None:
        suite = SUITES[args.suite]
        names = [n for n in args.only.split(",") if n] or list(suite)
        unknown = [n for n in names if n not in suite]
        if unknown:
            raise SystemExit(f"unknown variant(s) {unknown}; suite {args.suite} has {list(suite)}")
        stamp = time.strftime("%Y%m%d-%H%M%S")
        for n in names:
            rows.append(run_variant(args.preset, n, suite[n], args.data, stamp))
            write(args, rows)  # after every variant, so a call cut short still returns what it finished
    write(args, rows)
    print(table(rows))


def write(args, rows: list[dict]) -> None:
    add_deltas(rows)
    out = {"suite": args.suite, "preset": args.preset, "proxy": True, "variants": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
