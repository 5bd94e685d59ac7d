"""Learning-rate schedule as a pure function of progress.

Two forms (TrainConfig):
- ``warmdown_frac > 0`` (the later records): with ``f = elapsed / wallclock`` (or ``step / iterations``
  when there is no wallclock cap), ``lr_mul = 1`` for ``f < 1 - wf``, then ``max((1 - f) / wf, min_lr)``.
- otherwise the naive baseline's rule: the last ``warmdown_iters`` steps decay linearly to 0, where
  with a wallclock cap the window is estimated as ``warmdown_iters * (elapsed / step)`` seconds.
  On slow hardware that window exceeds the run and the LR decays from step 1 (a known gotcha).
"""

from __future__ import annotations

from pgolf.config import TrainConfig


def lr_mul(step: int, elapsed_s: float, cfg: TrainConfig) -> float:
    if cfg.warmdown_frac > 0:
        frac = elapsed_s / cfg.wallclock_s if cfg.wallclock_s > 0 else step / max(cfg.iterations, 1)
        if frac < 1.0 - cfg.warmdown_frac:
            return 1.0
        return max((1.0 - frac) / cfg.warmdown_frac, cfg.min_lr)
    if cfg.warmdown_iters <= 0:
        return 1.0
    if cfg.wallclock_s <= 0:
        start = max(cfg.iterations - cfg.warmdown_iters, 0)
        if step < start:
            return 1.0
        return max((cfg.iterations - step) / max(cfg.warmdown_iters, 1), cfg.min_lr)
    step_s = elapsed_s / max(step, 1)
    window = cfg.warmdown_iters * step_s
    remaining = max(cfg.wallclock_s - elapsed_s, 0.0)
    if remaining > window:
        return 1.0
    return max(remaining / max(window, 1e-9), cfg.min_lr)
