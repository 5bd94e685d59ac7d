"""Named recipes. Each preset is a function returning a `RunConfig`; `get_preset(name)` looks one up.

    pgolf train --preset baseline
    pgolf train --preset baseline --proxy     # the one-GPU proxy form (DESIGN.md, "The proxy track")
"""

from __future__ import annotations

import dataclasses
from typing import Callable

from pgolf.config import RunConfig
from pgolf.presets import baseline, pr1855, tiny

PRESETS: dict[str, Callable[[], RunConfig]] = {
    "baseline": baseline.preset,
    "tiny": tiny.preset,
    "pr1855": pr1855.preset,
}


def get_preset(name: str) -> RunConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; available: {', '.join(sorted(PRESETS))}")
    return PRESETS[name]()


def proxy_form(cfg: RunConfig, *, batch_tokens: int = 98_304, wallclock_s: float = 90.0,
               full_gpus: int = 8) -> RunConfig:
    """Scale a preset tuned for 8xH100 x 600 s to the one-GPU proxy track: a global batch of
    98,304 tokens in one micro-batch (hundreds of steps in 90 s) on the proxy corpus, with step-counted
    horizons (momentum warmup, the baseline's warmdown) scaled by the ratio of step counts,

        steps_proxy / steps_full = (wallclock_proxy / wallclock_full) * (batch_full / batch_proxy) / full_gpus

    (same tokens/s per GPU). E.g. #1855's 1,500-step momentum warmup becomes 225 steps. Weight averaging keeps
    its horizon in steps scaled the same way: EMA 1 - d becomes (1 - d) / scale (#1855's 0.9965 -> 0.9767), and
    SWA's snapshot interval is scaled like the other step counts."""
    scale = wallclock_s / max(cfg.train.wallclock_s, 1e-9) * cfg.train.batch_tokens / batch_tokens / full_gpus
    steps = lambda n: max(1, round(n * scale)) if n > 0 else n  # noqa: E731
    ema = 1.0 - (1.0 - cfg.train.ema_decay) / scale if cfg.train.ema_decay > 0 else cfg.train.ema_decay
    if not 0.0 <= ema < 1.0:
        raise ValueError(f"proxy_form: train.ema_decay={cfg.train.ema_decay} has a horizon longer than the proxy "
                         f"run allows at step scale {scale:.3f} (scaled decay {ema:.4f}); set it explicitly")
    train = dataclasses.replace(cfg.train, batch_tokens=batch_tokens, micro_batch_tokens=batch_tokens,
                                wallclock_s=wallclock_s, warmdown_iters=steps(cfg.train.warmdown_iters),
                                ema_decay=ema, swa_every=steps(cfg.train.swa_every))
    optim = dataclasses.replace(cfg.optim, muon_momentum_warmup_steps=steps(cfg.optim.muon_momentum_warmup_steps))
    data = dataclasses.replace(cfg.data, corpus="proxy")
    return dataclasses.replace(cfg, name=cfg.name + "-proxy", train=train, optim=optim, data=data)
