"""Timing of one forward + backward step for the kernel micro-benchmarks (fused_ce_bench.py, fused_mlp_bench.py).

    from step_timer import time_steps
    r = time_steps(lambda: loss_fn().backward(), device, warmup=3, iters=20, reset=lambda: setattr(w, "grad", None))

CUDA events on GPU (host clock on CPU); peak memory of the last step above what was allocated before it.
"""

from __future__ import annotations

import statistics
import time
from typing import Any, Callable

import torch


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(step: Callable[[], Any], device: torch.device, warmup: int, iters: int,
               reset: Callable[[], None] = lambda: None) -> dict:
    """Run `step` `warmup` times (compiles and autotuning happen here), then time `iters` runs of it, each after
    `reset` (e.g. clearing gradients). Returns ms_median, ms_mean, peak_mib and what the last step returned."""
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
    return {"ms_median": statistics.median(times), "ms_mean": statistics.fmean(times),
            "peak_mib": None if peak is None else round(peak, 1), "last": last}
