"""Where a training step's time goes: torch.profiler over a window of steady-state steps, summarised per kernel
and per kind (attention, matmul, communication, copies, fused/Triton, other), written to the run folder.

    pgolf train --preset pr1855 --proxy --set train.profile_steps=10     # -> runs/<id>/profile.json (+ trace)
    pgolf train --preset pr1855 --proxy --set train.profile_steps=5 --set train.profile_skip=40   # a later window

The window starts after ``train.profile_skip`` timed steps (default ``PROFILE_SKIP``: the allocator and caches
settle); ``profile.json`` records it as ``skip``. Its steps are not excluded from the clock: a profiled run is for
diagnosis, its BPB and tokens/s are not comparable.
"""

from __future__ import annotations

import re
from itertools import pairwise
from pathlib import Path
from typing import Any

import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile

from pgolf.fileio import atomic_write_json

PROFILE_SKIP = 10  # timed steps before the window opens
KINDS = (  # first match wins; names as CUDA kernels and CPU ops appear in the profiler
    # inductor's generated pointwise / reduction kernels, whatever ops their names list (_to_copy, varlen_attn_...)
    ("fused", re.compile(r"^triton_(poi|per|red)_")),
    ("attention", re.compile(r"flash|fmha|attention|flex|sdpa|varlen", re.I)),
    ("matmul", re.compile(r"gemm|matmul|\bmm\b|_mm_|addmm|bmm|nvjet|xmma|cutlass|cublas|sm90_|linear", re.I)),
    ("communication", re.compile(r"nccl|all_reduce|allreduce|reduce_scatter|all_gather|gloo", re.I)),
    ("copy", re.compile(r"memcpy|memset|copy_|to_copy|cat\b|contiguous", re.I)),
    ("fused", re.compile(r"^triton_|triton", re.I)),  # other Triton kernels (ours: fused CE, fused MLP)
)


def activities(device: torch.device) -> list[ProfilerActivity]:
    """What torch.profiler records: host ops, and the device's kernels on CUDA."""
    return [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])


def kind_of(name: str) -> str:
    return next((kind for kind, pat in KINDS if pat.search(name)), "other")


class StepProfiler:
    """Opens torch.profiler at step ``PROFILE_SKIP`` and closes it ``steps`` steps later, then writes
    ``profile.json`` (top kernels and per-kind totals of device kernel time, or CPU op time on CPU) and
    ``profile_trace.json`` (Chrome trace) into `run_dir` on rank 0."""

    def __init__(self, steps: int, run_dir: Path, device: torch.device, *, enabled: bool = True,
                 skip: int = PROFILE_SKIP):
        self.steps, self.run_dir, self.device, self.enabled, self.skip = steps, Path(run_dir), device, enabled, skip
        self._prof: profile | None = None
        self._last = 0  # steps done when last told
        self.done = False

    @classmethod
    def from_config(cls, tc: Any, run_dir: Path, device: torch.device, is_main: bool) -> "StepProfiler | None":
        return (cls(tc.profile_steps, run_dir, device, enabled=is_main, skip=tc.profile_skip)
                if tc.profile_steps > 0 else None)

    def after_step(self, step: int) -> None:
        """Call after every timed step with the number of steps done."""
        if self.done or not self.enabled:
            return
        self._last = step
        if self._prof is None and step == self.skip:
            self._prof = profile(activities=activities(self.device), record_shapes=False)
            self._prof.__enter__()
        elif self._prof is not None and step == self.skip + self.steps:
            self.close()

    def close(self) -> None:
        """Stop and write the reports (also at the end of a run that stopped inside the window)."""
        if self._prof is None or self.done:
            return
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self._prof.__exit__(None, None, None)
        self.done = True
        report = {**summarize(self._prof, cuda=self.device.type == "cuda", steps=self._last - self.skip),
                  "skip": self.skip}
        atomic_write_json(self.run_dir / "profile.json", report)
        self._prof.export_chrome_trace(str(self.run_dir / "profile_trace.json"))


# CUPTI's own records, on the device timeline but not kernels (the host ran ahead of the GPU); left out of the totals
CUPTI_OVERHEAD = re.compile(r"^(Command Buffer Full|Activity Buffer Request|Buffer Flush)", re.I)


def counted(ev, *, cuda: bool) -> bool:
    """Whether an event's self time is the step's own work: on CUDA, the device's records only (kernels, memcpy,
    memset). A CPU op reports its kernels' time as its own device time too, and counting both doubled every op
    that launches one; a record_function range (e.g. ``Optimizer.step#Muon.step``) also has a device-side span over
    its kernels, which the kernels already count."""
    if not cuda:
        return True
    on_device = ev.device_type != DeviceType.CPU
    return on_device and not CUPTI_OVERHEAD.search(ev.name) and not getattr(ev, "is_user_annotation", False)


def device_rows(events, *, cuda: bool) -> dict[str, list[float]]:
    """{name: [self µs, calls]} of the `counted` events."""
    rows: dict[str, list[float]] = {}
    for ev in events:
        if not counted(ev, cuda=cuda):
            continue
        us = ev.self_device_time_total if cuda else ev.self_cpu_time_total
        if us > 0:
            row = rows.setdefault(ev.name, [0.0, 0])
            row[0] += us
            row[1] += 1
    return rows


def busy_intervals(events) -> list[list]:
    """The device's busy time as disjoint [start, end, first, last] intervals in order: the `counted` records merged
    across streams (touching ones too), `first` the name of the record that opens an interval and `last` of the one
    that ends latest in it."""
    out: list[list] = []
    for start, end, name in sorted((ev.time_range.start, ev.time_range.end, ev.name)
                                   for ev in events if counted(ev, cuda=True)):
        if out and start <= out[-1][1]:
            if end >= out[-1][1]:
                out[-1][1], out[-1][3] = end, name
        else:
            out.append([start, end, name, name])
    return out


def device_busy(intervals: list[list]) -> dict[str, float]:
    """From `busy_intervals`: µs from the first device record to the last (`span`), µs in which at least one ran
    (`busy`: the union of their intervals, so kernels overlapping on two streams count once) and `idle` = span -
    busy, when the GPU waited for the host."""
    if not intervals:
        return {"span": 0.0, "busy": 0.0, "idle": 0.0}
    busy = sum(end - start for start, end, *_ in intervals)
    span = intervals[-1][1] - intervals[0][0]
    return {"span": span, "busy": busy, "idle": span - busy}


def idle_gaps(intervals: list[list], *, steps: int = 1, top: int = 8, min_us: float = 5.0) -> list[dict[str, Any]]:
    """The GPU's waits for the host, grouped by where they fall: each gap of at least `min_us` between the
    `busy_intervals` is keyed by the record that ended last before it and the one that started it, e.g. the
    optimizer's last kernel -> the next micro-batch's first. Returns the `top` pairs by idle time: ``before``,
    ``after``, ``ms_per_step`` and ``gaps_per_step``."""
    pairs: dict[tuple[str, str], list[float]] = {}
    for (_, prev_end, _, prev_last), (start, _, first, _) in pairwise(intervals):
        if start - prev_end >= min_us:
            row = pairs.setdefault((prev_last[:120], first[:120]), [0.0, 0])
            row[0] += start - prev_end
            row[1] += 1
    rows = sorted(pairs.items(), key=lambda kv: -kv[1][0])[:top]
    return [{"before": b, "after": a, "ms_per_step": us / 1000 / max(steps, 1), "gaps_per_step": n / max(steps, 1)}
            for (b, a), (us, n) in rows]


def range_spans(events, *, steps: int = 1) -> dict[str, dict[str, float]]:
    """GPU ms per step of each record_function range, from its device-side span (first kernel's start to the last
    one's end, waits inside included): the optimizers' own ranges (``Optimizer.step#Muon.step``) and TrainStep's
    (``pgolf.clip``, ``pgolf.ema``), so the step's non-micro-batch work is seen phase by phase."""
    out: dict[str, list[float]] = {}
    for ev in events:
        if ev.device_type != DeviceType.CPU and getattr(ev, "is_user_annotation", False):
            row = out.setdefault(ev.name, [0.0, 0])
            row[0] += ev.time_range.end - ev.time_range.start
            row[1] += 1
    n = max(steps, 1)
    return {name: {"ms_per_step": us / 1000 / n, "calls_per_step": calls / n}
            for name, (us, calls) in sorted(out.items(), key=lambda kv: -kv[1][0])}


def summarize(prof: profile, *, cuda: bool, steps: int, top: int = 30) -> dict[str, Any]:
    """Self time per kernel (device time on CUDA) or op (CPU time otherwise), per kind, per step; on CUDA also the
    device's busy and idle time per step over the window (`device_busy`), where the idle falls (`idle_gaps`) and
    the GPU time of each annotated range (`range_spans`)."""
    events = prof.events()
    intervals = busy_intervals(events) if cuda else []  # merged once, read by device_busy and idle_gaps
    rows = [{"name": name, "kind": kind_of(name), "self_us": us, "calls": calls}
            for name, (us, calls) in device_rows(events, cuda=cuda).items()]
    rows.sort(key=lambda r: -r["self_us"])
    total = sum(r["self_us"] for r in rows) or 1.0
    kinds: dict[str, float] = {}
    for r in rows:
        kinds[r["kind"]] = kinds.get(r["kind"], 0.0) + r["self_us"]
    per_step = 1000 * max(steps, 1)
    return {
        "clock": "device" if cuda else "cpu",
        "steps": steps,
        "total_ms_per_step": total / per_step,
        "kinds": {k: {"ms_per_step": v / per_step, "share": v / total}
                  for k, v in sorted(kinds.items(), key=lambda kv: -kv[1])},
        "top": [dict(r, ms_per_step=r["self_us"] / per_step, share=r["self_us"] / total) for r in rows[:top]],
        **({"device_time": {k: v / per_step for k, v in device_busy(intervals).items()},
            "idle_gaps": idle_gaps(intervals, steps=steps), "ranges": range_spans(events, steps=steps)} if cuda else {}),
    }
