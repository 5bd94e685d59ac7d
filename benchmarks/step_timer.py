"""Timing of one forward + backward step for the kernel micro-benchmarks (fused_ce_bench.py, fused_mlp_bench.py),
and their shared command line.

    from step_timer import time_steps
    r = time_steps(lambda: loss_fn().backward(), device, warmup=3, iters=20, reset=lambda: setattr(w, "grad", None))

CUDA events on GPU (host clock on CPU); peak memory of the last step above what was allocated before it.
``kernel_table`` profiles a few more steps and lists their kernels (device µs per step; CPU op time on CPU).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from inductor_bandwidth import KERNEL_NAME_CUT  # noqa: E402

from pgolf.fileio import atomic_write_json  # noqa: E402
from pgolf.train.profile import activities, summarize


def bench_cli(p: argparse.ArgumentParser, argv: list[str] | None, run: Callable[[argparse.Namespace], dict],
              variants: tuple[str, ...]) -> int:
    """Adds --device/--dtype/--variants/--warmup/--iters/--out to `p`, parses, runs `run(args)`, writes its JSON
    atomically; exit status 1 when a variant reported an error."""
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", choices=("bf16", "fp32"), default="bf16")
    p.add_argument("--variants", nargs="+", choices=variants, default=list(variants))
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        p.error("--device cuda but no CUDA device is visible; use --device cpu --rows 256")
    out = run(args)
    atomic_write_json(args.out, out)
    print(f"wrote {args.out}")
    return 1 if any("error" in r for r in out["results"]) else 0


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(step: Callable[[], Any], device: torch.device, warmup: int, iters: int,
               reset: Callable[[], None] = lambda: None) -> dict:
    """Run `step` `warmup` times (compiles and autotuning happen here), then time `iters` runs of it, each after
    `reset` (e.g. clearing gradients). Returns ms_median, ms_mean, peak_mib (allocated above what was held before
    each step), reserved_mib (the allocator's whole peak: under CUDA graphs the step's memory is a pool reserved
    during warm-up, which peak_mib does not see) and what the last step returned."""
    for _ in range(warmup):
        reset()
        step()
    sync(device)
    times, last, base = [], None, 0
    for _ in range(iters):
        reset()
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
            base = torch.cuda.memory_allocated(device)
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
        t0 = time.perf_counter()
        last = step()
        if device.type == "cuda":
            end.record()
            torch.cuda.synchronize(device)
            times.append(start.elapsed_time(end))
        else:
            times.append(1e3 * (time.perf_counter() - t0))
    peak = (torch.cuda.max_memory_allocated(device) - base) / 2**20 if device.type == "cuda" else None
    reserved = torch.cuda.max_memory_reserved(device) / 2**20 if device.type == "cuda" else None
    return {"ms_median": statistics.median(times), "ms_mean": statistics.fmean(times),
            "peak_mib": None if peak is None else round(peak, 1),
            "reserved_mib": None if reserved is None else round(reserved, 1), "last": last}


def time_call(call: Callable[[], Any], device: torch.device, warmup: int, iters: int,
              reset: Callable[[], None] = lambda: None) -> dict:
    """`time_steps` without the returned value, or {"error": ...} when the call fails (a kernel config that does
    not fit this GPU, a variant that cannot run here): reported in the JSON, not fatal to the sweep."""
    try:
        r = time_steps(call, device, warmup, iters, reset=reset)
    except Exception as e:  # noqa: BLE001
        return {"error": f"{type(e).__name__}: {str(e)[:300]}"}
    r.pop("last")
    return r


def kernel_table(step: Callable[[], Any], device: torch.device, steps: int, top: int = 8,
                 reset: Callable[[], None] = lambda: None) -> dict:
    """`steps` profiled runs of `step` (after timing, so compiled and autotuned): ``kernels``, the `top` kernels
    with name, calls and µs per step (device time on CUDA, each kernel once, as ``pgolf.train.profile.summarize``
    counts), ``kinds``, the ms per step of every kernel by kind (matmul, attention, fused, ...: the input of
    ``pgolf.report.throughput.mfu_budget``), and on CUDA ``device_time``, the GPU's span, busy and idle ms per step (``profile.device_busy``), and
    ``idle_gaps``, where that idle falls (``profile.idle_gaps``), and ``ranges``, the GPU ms of each annotated range
    (``profile.range_spans``: the optimizers, clip, EMA)."""
    with torch.profiler.profile(activities=activities(device)) as prof:
        for _ in range(steps):
            reset()
            step()
        sync(device)
    rep = summarize(prof, cuda=device.type == "cuda", steps=steps, top=top)
    return {"kernels": [{"name": r["name"][:KERNEL_NAME_CUT], "calls_per_step": r["calls"] / steps,
                         "us_per_step": round(1e3 * r["ms_per_step"], 1)} for r in rep["top"]],
            "kinds": {k: round(v["ms_per_step"], 4) for k, v in rep["kinds"].items()},
            "device_time": rep.get("device_time"), "idle_gaps": rep.get("idle_gaps"),
            "ranges": rep.get("ranges")}
