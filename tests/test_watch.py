"""ClockWatch: compiles and slow steps inside the training clock are named in the log and counted."""

from __future__ import annotations

import torch

from pgolf.train.watch import ClockWatch


def test_a_compile_inside_the_clock_is_reported_once_and_a_paused_one_not_at_all():
    f = torch.compile(lambda x: x * 2 + 1, dynamic=False, backend="eager")
    f(torch.ones(3))  # the warm-up's graph
    watch = ClockWatch()
    f(torch.ones(3))
    assert watch.check(1, 1, 0.1) == [] and watch.compiles == 0
    f(torch.ones(5))  # a new shape: a recompile on the clock
    lines = watch.check(2, 1, 0.1)
    assert len(lines) == 1 and lines[0].startswith("warning: 1 graph(s) compiled inside the clock by step 2")
    assert watch.check(3, 1, 0.1) == [] and watch.compiles == 1  # counted once
    with watch.excluded():
        f(torch.ones(7))  # e.g. a periodic validation's graph, compiled while the clock is paused
    assert watch.check(4, 1, 0.1) == [] and watch.compiles == 1


def test_a_stalled_interval_is_named_and_a_slower_phase_is_not():
    watch = ClockWatch()
    assert watch.check(1, 1, 2.4) == []  # no history yet: the first step cannot be judged
    assert watch.check(2, 1, 0.35) == [] and watch.check(3, 1, 0.36) == []
    assert watch.check(13, 10, 5.4) == []  # 0.54 s a step (depth recurrence on): 1.5x, not a stall
    lines = watch.check(14, 1, 18.2)
    assert len(lines) == 1 and "step 14 took 18.200s a step" in lines[0]
    assert watch.check(24, 10, 30.0)[0].startswith("warning: steps 15-24 took 3.000s a step")
    assert watch.slow_steps == [14, 24]
    assert watch.check(34, 10, 5.5) == []  # the stalls did not move the typical step

