"""Learning-rate schedule as a pure function of progress.

``progress(step, elapsed_s, cfg)`` is the elapsed fraction of the run: ``elapsed / wallclock_s`` (the
wallclock drives everything, as the records do), or ``step / iterations`` when there is no wallclock cap.

``lr_mul = warmup(f) * decay(...)``:
- warmup: ``min(1, f / lr_warmup_frac)`` when ``lr_warmup_frac > 0``, else 1 (the records use no LR warmup,
  only compile priming; modded-nanogpt style linear warmup is here for small-scale runs).
- decay, ``warmdown_frac > 0`` (the later records, TOP ``lr_mul``): 1 for ``f < 1 - wf``, then
  ``max((1 - f) / wf, min_lr)`` (TOP: wf 0.85, min_lr 0.10, the floor reached at f = 0.915).
- decay otherwise, the naive baseline's rule: the last ``warmdown_iters`` steps decay linearly to 0, where
  with a wallclock cap the window is estimated as ``warmdown_iters * (elapsed / step)`` seconds.
  On slow hardware that window exceeds the run and the LR decays from step 1 (a known gotcha).
- constant: ``warmdown_frac = 0`` and ``warmdown_iters = 0``.

Muon momentum warmup (`pgolf.optim.builder.muon_momentum_at`) and tapered weight decay
(`pgolf.optim.builder.wd_mul`) read the same `progress`; late QAT and SWA compare `warmdown_mul` (the decay
without the warmup factor) with their ``*_start_lr_mul`` thresholds.
"""

from __future__ import annotations

from pgolf.config import TrainConfig

LOADERS = ("stream", "coprime", "docpack")
COMPILE_MODES = ("default", "max-autotune-no-cudagraphs", "reduce-overhead", "max-autotune")
GRAPH_MODES = ("reduce-overhead", "max-autotune")  # the modes whose training graph replays as CUDA graphs


def progress(step: int, elapsed_s: float, cfg: TrainConfig) -> float:
    """Elapsed fraction of the run (not clamped): wallclock-driven when train.wallclock_s > 0."""
    return elapsed_s / cfg.wallclock_s if cfg.wallclock_s > 0 else step / max(cfg.iterations, 1)


def lr_mul(step: int, elapsed_s: float, cfg: TrainConfig) -> float:
    mul = warmdown_mul(step, elapsed_s, cfg)
    warm = getattr(cfg, "lr_warmup_frac", 0.0)
    if warm > 0:
        mul *= min(max(progress(step, elapsed_s, cfg), 0.0) / warm, 1.0)
    return mul


def warmdown_mul(step: int, elapsed_s: float, cfg: TrainConfig) -> float:
    """The decay part of `lr_mul` alone (no warmup): late-phase triggers (QAT, SWA) compare it to their
    thresholds, so an LR warmup never looks like the end of the run."""
    if cfg.warmdown_frac > 0:
        frac = progress(step, elapsed_s, cfg)
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


def check_train_techniques(cfg: TrainConfig) -> None:
    """Validate the "training techniques" fields of TrainConfig; errors name the field."""
    if not 0.0 <= cfg.lr_warmup_frac <= 1.0:
        raise ValueError(f"train.lr_warmup_frac={cfg.lr_warmup_frac} must be in [0, 1]")
    if not 0.0 <= cfg.ema_decay < 1.0:
        raise ValueError(f"train.ema_decay={cfg.ema_decay} must be in [0, 1) (0 = off)")
    if cfg.swa_every < 0:
        raise ValueError(f"train.swa_every={cfg.swa_every} must be >= 0 (0 = off)")
    if cfg.swa_every and cfg.swa_start_lr_mul <= 0:
        raise ValueError(f"train.swa_start_lr_mul={cfg.swa_start_lr_mul} must be > 0 when train.swa_every > 0")
    if cfg.qat_bits and not 2 <= cfg.qat_bits <= 8:
        raise ValueError(f"train.qat_bits={cfg.qat_bits} must be 0 (off) or 2..8")
    if cfg.loader not in LOADERS:
        raise ValueError(f"train.loader={cfg.loader!r} is not one of {', '.join(LOADERS)}")
    if cfg.compile_mode not in COMPILE_MODES:
        raise ValueError(f"train.compile_mode={cfg.compile_mode!r} is not one of {', '.join(COMPILE_MODES)}")
