"""Training throughput from logged (step, training-seconds) points: overall and per phase (before / after the
depth-recurrence switch), mean step time and MFU with `pgolf.report.flops`.

    tr, summary, log, cfg = load_pgolf_run(Path("runs/<id>"))
    stats = phase_stats(tr);  mfu = mfu_block(stats, tr, phase_flops(cfg, t_eff), peak_flops(gpu))

A phase rate is ``(s1 - s0) x batch_tokens / (t1 - t0)`` between the first and last logged points inside the phase:
``flat`` spans end at or before the switch, ``looped`` spans start at or after it, and the span across the switch
and the first `skip_steps` steps (allocator and prefetch warm-up) are left out. Overall = all steps / all time.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pgolf.report.flops import PhaseFlops, flat_steps, run_flops_per_token

PGOLF_STEP = re.compile(r"^step:(\d+)/\d+ loss:\S+ lr_mul:\S+ train_time:([\d.]+)s tok/s:", re.M)
PGOLF_STOP = re.compile(r"^stopped:(\w+) step:(\d+) train_time:([\d.]+)s epochs:\S+(?: peak_mem_mib:(\d+))?"
                        r"(?: peak_reserved_mib:(\d+))?", re.M)
PGOLF_CLOCK_WARNING = re.compile(r"^warning: .*inside the clock.*$", re.MULTILINE)  # train/watch.py: a compile or stall
PGOLF_SHAPE = re.compile(r"^model_params:(\d+) world_size:(\d+) grad_accum:(\d+) micro_batch_tokens:(\d+) "
                         r"batch_tokens:(\d+)", re.M)


@dataclass
class Trace:
    """Logged progress of one training run: (steps done, training seconds) points and where the loops began."""

    points: list[tuple[int, float]]
    steps: int
    train_time_s: float
    batch_tokens: int
    switch_step: float | None = None  # steps run before the loops switched on (when logged)
    switch_time: float | None = None  # training second at which they switch on (loop_enable_at x cap)


def parse_pgolf_log(text: str) -> dict[str, Any]:
    """Step points (0.1 s resolution), the stop line (with peak memory), the batch and the clock watch's warnings
    (graphs compiled or steps stalled inside the clock) from a pgolf ``train.log``."""
    shape, stop = PGOLF_SHAPE.search(text), PGOLF_STOP.search(text)
    points = [(int(s), float(t)) for s, t in PGOLF_STEP.findall(text)]
    return {"points": points, "batch_tokens": int(shape.group(5)) if shape else None,
            "model_params": int(shape.group(1)) if shape else None,
            "steps": int(stop.group(2)) if stop else (points[-1][0] if points else 0),
            "train_time_s": float(stop.group(3)) if stop else (points[-1][1] if points else 0.0),
            "stopped_by": stop.group(1) if stop else None,
            "peak_mem_mib": int(stop.group(4)) if (stop and stop.group(4)) else None,
            "peak_reserved_mib": int(stop.group(5)) if (stop and stop.group(5)) else None,
            "clock_warnings": PGOLF_CLOCK_WARNING.findall(text)}


def load_pgolf_run(run_dir: Path) -> tuple[Trace, dict[str, Any], dict[str, Any], Any]:
    """(trace, summary.json or {}, parsed train.log, resolved RunConfig) of a pgolf run. The train.log suffices
    when the run was stopped before its summary was written; the summary's curve has millisecond times."""
    from pgolf.config import from_dict
    from pgolf.quant.calib import train_config_with_reserve

    cfg = from_dict(json.loads((run_dir / "config.json").read_text()))
    log = parse_pgolf_log((run_dir / "train.log").read_text()) if (run_dir / "train.log").exists() else {}
    summary = json.loads((run_dir / "summary.json").read_text()) if (run_dir / "summary.json").exists() else {}
    if summary:
        points = [(int(p["step"]), float(p["train_time_s"])) for p in summary.get("curve", []) if "train_loss" in p]
        steps, seconds = int(summary["steps"]), float(summary["train_time_s"])
    else:
        points, steps, seconds = log.get("points", []), log.get("steps", 0), log.get("train_time_s", 0.0)
    tc, m = train_config_with_reserve(cfg), cfg.model
    switch_time = m.loop_enable_at * tc.wallclock_s if (m.num_loops > 0 and tc.wallclock_s > 0) else None
    switch_step = None
    if m.num_loops > 0 and tc.wallclock_s <= 0:  # iteration-driven progress: the switch step is exact
        switch_step = float(min(steps, math.ceil(m.loop_enable_at * tc.iterations)))
    trace = Trace(points=points, steps=steps, train_time_s=seconds, batch_tokens=cfg.train.batch_tokens,
                  switch_step=switch_step, switch_time=switch_time)
    return trace, summary, log, cfg


def phase_stats(tr: Trace, skip_steps: int = 5) -> dict[str, Any]:
    """{"overall", "flat", "looped"}: steps, seconds, mean step time and tokens/s (None for a phase without a
    complete logged span)."""
    overall = {"steps": tr.steps, "train_time_s": tr.train_time_s,
               "tokens_per_s": tr.steps * tr.batch_tokens / tr.train_time_s if tr.train_time_s > 0 else None,
               "step_time_s": tr.train_time_s / tr.steps if tr.steps else None}
    pts = sorted(p for p in tr.points if p[0] >= skip_steps)

    def flat(a, b) -> bool:
        if tr.switch_step is not None:
            return b[0] <= tr.switch_step
        return tr.switch_time is None or b[1] <= tr.switch_time

    def looped(a, b) -> bool:
        if tr.switch_step is not None:
            return a[0] >= tr.switch_step
        return tr.switch_time is not None and a[1] >= tr.switch_time

    out: dict[str, Any] = {"overall": overall}
    for name, keep in (("flat", flat), ("looped", looped)):
        spans = [(a, b) for a, b in zip(pts, pts[1:]) if keep(a, b) and b[0] > a[0]]
        if not spans:
            out[name] = None
            continue
        (s0, t0), (s1, t1) = spans[0][0], spans[-1][1]
        steps, dt = s1 - s0, t1 - t0
        out[name] = {"from_step": s0, "to_step": s1, "steps": steps, "seconds": dt,
                     "step_time_s": dt / steps if dt > 0 else None,
                     "tokens_per_s": steps * tr.batch_tokens / dt if dt > 0 else None}
    return out


def flat_step_count(tr: Trace) -> float:
    """Steps run before the switch: logged, or interpolated on the points at the switch second."""
    if tr.switch_step is None and tr.switch_time is None:
        return float(tr.steps)
    return flat_steps(tr.points + [(tr.steps, tr.train_time_s)], tr.steps, switch_time=tr.switch_time,
                      switch_step=tr.switch_step)


def mfu_block(stats: dict[str, Any], tr: Trace, pf: PhaseFlops, peak: float | None) -> dict[str, Any]:
    """MFU overall (token-weighted FLOPs of the two phases) and per phase against a dense bf16 `peak`."""
    n_flat = flat_step_count(tr)
    mean = run_flops_per_token(pf, tr.steps, n_flat)
    out: dict[str, Any] = {"flat_steps": n_flat, "flops_per_token_run": mean, "peak_flops": peak}
    rate = stats["overall"]["tokens_per_s"]
    out["overall"] = rate * mean / peak if (peak and rate) else None
    for name, f in (("flat", pf.flat), ("looped", pf.looped)):
        ph = stats.get(name)
        out[name] = ph["tokens_per_s"] * f / peak if (peak and ph and ph["tokens_per_s"]) else None
    return out


def ratios(a: dict[str, Any], b: dict[str, Any]) -> dict[str, float | None]:
    """a / b tokens/s, overall and per phase, for two `phase_stats` results."""
    out = {}
    for name in ("overall", "flat", "looped"):
        x, y = a.get(name), b.get(name)
        out[name] = x["tokens_per_s"] / y["tokens_per_s"] if (x and y and x["tokens_per_s"] and y["tokens_per_s"]) \
            else None
    return out


def bandwidth_split(slow: dict[str, Any], fast: dict[str, Any], bw_slow: float, bw_fast: float) -> dict[str, Any]:
    """Each phase's step time on two GPUs of one compute peak and clock but different HBM bandwidth, written as
    t = C + M * bw_slow / bw, C the time that does not depend on bandwidth and M the bandwidth-bound time on the
    slower GPU (an H100 and an H200)::

        M = (t_slow - t_fast) / (1 - bw_slow / bw_fast),   C = t_slow - M,   MFU with M = 0: mfu_slow * t_slow / C

    slow, fast: one run's block of a throughput JSON (``phases`` with ``step_time_s``, ``mfu`` per phase). A phase
    whose M or C comes out negative (the faster-bandwidth GPU was slower) is marked inconsistent."""
    if not bw_fast > bw_slow > 0:
        raise ValueError(f"bandwidth_split: needs bw_fast > bw_slow > 0, got {bw_fast} and {bw_slow}")
    out: dict[str, Any] = {}
    for name in ("flat", "looped"):
        a, b = (slow.get("phases") or {}).get(name), (fast.get("phases") or {}).get(name)
        if not (a and b and a.get("step_time_s") and b.get("step_time_s")):
            continue
        t_slow, t_fast = a["step_time_s"], b["step_time_s"]
        m = (t_slow - t_fast) / (1.0 - bw_slow / bw_fast)
        c = t_slow - m
        mfu = (slow.get("mfu") or {}).get(name)
        out[name] = {"step_s": {"slow": t_slow, "fast": t_fast}, "bandwidth_bound_s": m, "bandwidth_free_s": c,
                     "bandwidth_bound_share": m / t_slow, "consistent": m >= 0 and c > 0,
                     "mfu_slow": mfu, "mfu_if_no_bandwidth_bound": mfu * t_slow / c if (mfu and c > 0) else None}
    return out


def mfu_budget(kinds: dict[str, dict[str, float]], gemm_flops: float, attn_flops: float, peak: float,
               target: float = 0.40) -> dict[str, Any]:
    """Where a profiled step's GPU time goes against the FLOPs it does (the MFU gap, kind by kind).

    kinds: ``{kind: {"ms_per_step": ms}}`` from a profile (pgolf.train.profile: matmul, attention, fused, copy,
    other); gemm_flops / attn_flops: the step's FLOPs in the matmul and attention kernels (`pgolf.report.flops`)::

        ideal_k = flops_k / peak,   efficiency_k = ideal_k / ms_k,   MFU = (ideal_matmul + ideal_attention) / busy

    plus the busy step `target` MFU needs, and the MFU with each kind's time gone or at an efficiency of 1."""
    ms = {k: float(v["ms_per_step"]) for k, v in kinds.items()}
    missing = {"matmul", "attention"} - ms.keys()
    if missing:
        raise ValueError(f"mfu_budget: the profile has no {sorted(missing)} kind")
    if not (peak > 0 and gemm_flops > 0 and attn_flops >= 0):
        raise ValueError(f"mfu_budget: needs peak > 0, gemm_flops > 0, attn_flops >= 0, got {peak}, {gemm_flops}, "
                         f"{attn_flops}")
    busy = sum(ms.values())
    ideal = {"matmul": gemm_flops / peak * 1e3, "attention": attn_flops / peak * 1e3}
    useful = sum(ideal.values())
    out_kinds = {}
    for k, t in sorted(ms.items(), key=lambda kv: -kv[1]):
        row: dict[str, Any] = {"ms": t, "share": t / busy, "mfu_without": useful / (busy - t) if busy > t else None}
        if k in ideal:
            row.update(ideal_ms=ideal[k], efficiency=ideal[k] / t if t else None,
                       mfu_at_full_efficiency=useful / (busy - t + ideal[k]))
        out_kinds[k] = row
    step = useful / target
    return {"busy_ms": busy, "useful_ms": useful, "mfu": useful / busy, "peak_flops": peak, "kinds": out_kinds,
            "target": {"mfu": target, "busy_ms": step, "cut_ms": busy - step, "cut_share": 1 - step / busy}}
