"""Work that lands on the training clock but belongs to the warm-up: graphs compiled after it (a guard the warm-up
did not prime; ``TORCH_LOGS=recompiles`` names it) and logged steps far slower than the run's typical step (a
recompile, a CUDA-graph re-record, a host stall). The loop logs a warning line for each; the summary counts them.

    watch = ClockWatch()                          # when the clock starts, after the warm-up
    for line in watch.check(step, steps, seconds):  # at each logged step: steps and seconds since the last log
        log(line)
    with watch.excluded(): evaluate(...)          # a paused clock: its compiles are not the clock's
    watch.compiles, watch.slow_steps

Slow: an interval whose seconds per step exceed SLOW_FACTOR x the median of the earlier intervals (at least
MIN_HISTORY of them); the depth-recurrence switch (1.5x per step on pr1855) stays under it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from statistics import median

SLOW_FACTOR = 3.0
MIN_HISTORY = 2


def compiled_graphs() -> int:
    """Graphs dynamo has compiled in this process (every compile and recompile adds one)."""
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


@dataclass
class ClockWatch:
    base: int = field(default_factory=compiled_graphs)
    compiles: int = 0  # graphs compiled while the clock ran
    slow_steps: list[int] = field(default_factory=list)  # last step of each slow interval
    per_step_s: list[float] = field(default_factory=list)  # seconds per step of the intervals judged normal

    def check(self, step: int, steps: int, seconds: float) -> list[str]:
        """Warning lines for the interval that ends at `step` (`steps` steps in `seconds` training seconds)."""
        lines = []
        n = compiled_graphs() - self.base
        if n > self.compiles:
            lines.append(f"warning: {n - self.compiles} graph(s) compiled inside the clock by step {step}: a guard "
                         "the warm-up did not prime (TORCH_LOGS=recompiles names it)")
            self.compiles = n
        per = seconds / max(steps, 1)
        if len(self.per_step_s) >= MIN_HISTORY and per > SLOW_FACTOR * (typical := median(self.per_step_s)):
            first = f"steps {step - steps + 1}-{step}" if steps > 1 else f"step {step}"
            lines.append(f"warning: {first} took {per:.3f}s a step, {per / typical:.1f}x the typical {typical:.3f}s: "
                         "a recompile, a CUDA-graph re-record or a host stall, inside the clock")
            self.slow_steps.append(step)
        else:
            self.per_step_s.append(per)
        return lines

    @contextmanager
    def excluded(self) -> Iterator[None]:
        """Graphs compiled inside this block (the clock is paused) are not counted."""
        before = compiled_graphs()
        try:
            yield
        finally:
            self.base += compiled_graphs() - before
