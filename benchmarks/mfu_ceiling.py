"""The MFU of a profiled micro-step, and what it would be with attention at a chosen efficiency, inductor's kernels at
the HBM floor and no GPU idle (issue 5: how far 40% is from what the kernels can do).

    python3 benchmarks/mfu_ceiling.py benchmarks/results/model_step_m196sb_progress1.0_h200.json \\
        --attention-efficiency 0.26 \\
        --inductor-join benchmarks/results/inductor_bandwidth_pr1855_progress1.0_h200_step.json --out x.json

Reads one variant of a ``model_step_bench.py --kernels N`` JSON: its GPU ms per micro-step by kind (the ``kinds``
kernel_table writes; for older files, its listed kernels classified by ``pgolf.train.profile.kind_of``) and its
FLOPs, ``pgolf.report.flops.phase_flops`` of the preset with the file's ``--set`` values and the variant's
overrides, the phase from ``--progress``, t_eff measured on the data's train shards (or ``--t-eff``); the
efficiencies and the busy-time MFU are ``pgolf.report.throughput.mfu_budget``'s::

    ideal_k = FLOPs_k / peak                   (k = matmul, attention)
    MFU = (ideal_matmul + ideal_attention) / ms

against the micro-step's median time (measured) and against its busy GPU time (no idle). The scenario replaces
attention's time by ideal_attention / efficiency and, with an ``inductor_bandwidth.py --step`` join of the same
file and variant, takes the time inductor's joined kernels lose against the floor off the ``fused`` kind; every
other kind stays as measured.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from inductor_bandwidth import step_result

from pgolf.config import apply_overrides
from pgolf.fileio import atomic_write_json
from pgolf.presets import get_preset
from pgolf.report.flops import (
    attention_flops_per_token,
    peak_flops,
    phase_flops,
    t_eff_from_files,
)
from pgolf.report.throughput import mfu_budget


def step_kinds(result: dict[str, Any]) -> dict[str, float]:
    """GPU ms per micro-step by kind: the file's own ``kinds``, else its listed kernels classified here."""
    if result.get("kinds"):
        return {k: float(v) for k, v in result["kinds"].items()}
    if not result.get("kernels"):
        raise ValueError(f"variant {result.get('variant')!r} has no kernel list (model_step_bench.py --kernels N)")
    from pgolf.train.profile import (
        kind_of,  # imports torch: only for files written before kernel_table's kinds
    )

    kinds: dict[str, float] = {}
    for k in result["kernels"]:
        kinds[kind_of(k["name"])] = kinds.get(kind_of(k["name"]), 0.0) + k["us_per_step"] / 1e3
    return kinds


def micro_step_flops(step: dict[str, Any], overrides: list[str], t_eff: float | None) -> dict[str, float]:
    """Matmul and attention FLOPs of one micro-step of the file's preset, sets and `overrides` (the data settings
    model_step_bench adds do not change them; the data folder gives t_eff)."""
    cfg = apply_overrides(get_preset(step["preset"]), [*step.get("sets", []), *overrides])
    m = cfg.model
    if t_eff is None and m.doc_isolated:
        files = sorted(Path(step["data"]).glob("fineweb_train_*.bin"))
        if not files:
            raise ValueError(f"{step['data']}: no train shards to measure t_eff on; give --t-eff")
        t_eff = t_eff_from_files(files, m.bos_id, cfg.train.seq_len)
    pf = phase_flops(cfg, t_eff)
    looped = step["progress"] >= pf.switch_frac
    per_token, layers = (pf.looped, pf.layers[1]) if looped else (pf.flat, pf.layers[0])
    tokens = cfg.train.micro_batch_tokens
    attn = attention_flops_per_token(layers, pf.t_eff, m.model_dim)
    return {"matmul": (per_token - attn) * tokens, "attention": attn * tokens, "tokens": tokens,
            "t_eff": pf.t_eff, "phase": "looped" if looped else "flat"}


def ceiling(step: dict[str, Any], variant: str, attention_efficiency: float | None, join: dict | None,
            t_eff: float | None = None) -> dict[str, Any]:
    r = step_result(step, variant)
    peak = peak_flops(step.get("device") or "")
    if peak is None:
        raise ValueError(f"device {step.get('device')!r} has no bf16 peak in pgolf.report.flops")
    kinds = step_kinds(r)
    fl = micro_step_flops(step, r.get("overrides", []), t_eff)
    budget = mfu_budget({k: {"ms_per_step": ms} for k, ms in kinds.items()}, fl["matmul"], fl["attention"], peak)
    ideal = {k: budget["kinds"][k]["ideal_ms"] for k in ("matmul", "attention")}
    useful, busy = budget["useful_ms"], budget["busy_ms"]
    scenario = dict(kinds)
    if attention_efficiency is not None:
        if not 0 < attention_efficiency <= 1:
            raise ValueError(f"--attention-efficiency {attention_efficiency}: expected a share of peak in (0, 1]")
        scenario["attention"] = ideal["attention"] / attention_efficiency
    if join is not None:
        scenario["fused"] = kinds.get("fused", 0.0) - float(join["step"]["step_lost_ms"])
    total = sum(scenario.values())
    return {"variant": variant, "device": step.get("device"), "preset": step["preset"], "phase": fl["phase"],
            "tokens": fl["tokens"], "t_eff": fl["t_eff"], "peak_flops": peak,
            "ideal_ms": ideal, "efficiency": {k: budget["kinds"][k]["efficiency"] for k in ideal},
            "kinds_ms": kinds, "measured_ms": r["ms_median"], "busy_ms": busy,
            "mfu": {"measured": useful / r["ms_median"], "busy": budget["mfu"]},
            "scenario": {"attention_efficiency": attention_efficiency, "inductor_at_floor": join is not None,
                         "kinds_ms": scenario, "busy_ms": total, "mfu": useful / total}}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("step", type=Path, help="a model_step_bench.py JSON written with --kernels")
    p.add_argument("--variant", default="base")
    p.add_argument("--attention-efficiency", type=float, default=None, help="attention's share of peak, e.g. 0.26")
    p.add_argument("--inductor-join", type=Path, default=None, help="inductor_bandwidth.py --step JSON of the file")
    p.add_argument("--t-eff", type=float, default=None, help="instead of measuring it on the data's train shards")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    try:
        step = json.loads(args.step.read_text())
        join = json.loads(args.inductor_join.read_text()) if args.inductor_join else None
        if join is not None:
            joined = (Path(join["step"]["file"]).name, join["step"]["variant"])
            if joined != (args.step.name, args.variant):
                raise ValueError(f"{args.inductor_join} joins {joined[0]} ({joined[1]}), "
                                 f"not {args.step.name} ({args.variant})")
        res = ceiling(step, args.variant, args.attention_efficiency, join, args.t_eff)
    except (OSError, KeyError, ValueError) as e:
        p.error(f"{type(e).__name__}: {e}")
    atomic_write_json(args.out, {"step": str(args.step), "inductor_join": str(args.inductor_join or ""), **res})
    sc = res["scenario"]
    print(f"{res['preset']} {res['phase']} ({res['variant']}, {res['device']}): {res['measured_ms']:.2f} ms, "
          f"busy {res['busy_ms']:.2f}, MFU {res['mfu']['measured']:.1%} ({res['mfu']['busy']:.1%} of busy)")
    for k, ms in sorted(res["kinds_ms"].items(), key=lambda kv: -kv[1]):
        eff = f"  {res['efficiency'][k]:.1%} of peak" if k in res["efficiency"] else ""
        print(f"  {k:14s} {ms:8.2f} ms -> {sc['kinds_ms'][k]:8.2f}{eff}")
    print(f"scenario: {sc['busy_ms']:.2f} ms busy, MFU {sc['mfu']:.1%}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
