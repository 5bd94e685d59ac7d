"""Weight averaging applied before scoring and export: EMA and SWA.

    pgolf train --preset baseline --set train.ema_decay=0.9965                 # TOP (PR #1855)
    pgolf train --preset baseline --set train.swa_every=50 --set train.swa_start_lr_mul=0.2

EMA (TOP ``ema_state``; 0.997 in the 03-20..03-25 records): an fp32 shadow of every floating state-dict
entry, initialised from the weights at the first counted step and updated after every optimizer step::

    ema <- d * ema + (1 - d) * theta          (no bias correction, as the records)

SWA (03-20 records, "tight SWA" of 03-25): after step s, if ``s % swa_every == 0`` and the step's
``lr_mul < swa_start_lr_mul``, add the weights to an fp32 running sum; the average is ``sum / count``.

`WeightAverager.averaged_state()` is the SWA average when SWA has at least one snapshot, else the EMA
(the 03-25 record tracked both but exported EMA; here SWA wins when both are on, which is logged).
Non-floating entries are never averaged: they keep the model's current value. The averager's
`state_dict()` goes into the checkpoint so a resumed run continues bit-exactly.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn


def _float_items(model: nn.Module) -> list[tuple[str, Tensor]]:
    return [(k, v) for k, v in model.state_dict().items() if v.is_floating_point()]


class EMA:
    def __init__(self, model: nn.Module, decay: float):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"train.ema_decay={decay} must be in (0, 1) for an EMA")
        self.decay = float(decay)
        self.names = [k for k, _ in _float_items(model)]
        self.shadow = [v.detach().float().clone() for _, v in _float_items(model)]

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        sd = model.state_dict()
        cur = [sd[k].detach().float() for k in self.names]  # .float() is a no-op for fp32 entries
        torch._foreach_mul_(self.shadow, self.decay)
        torch._foreach_add_(self.shadow, cur, alpha=1.0 - self.decay)

    def state(self) -> dict[str, Tensor]:
        return dict(zip(self.names, self.shadow))

    def state_dict(self) -> dict[str, Any]:
        return {"decay": self.decay, "shadow": {k: v.detach().cpu().clone() for k, v in self.state().items()}}

    def load_state_dict(self, sd: dict[str, Any]) -> None:
        _check_names("EMA", self.names, list(sd["shadow"]))
        for dst, k in zip(self.shadow, self.names):
            dst.copy_(sd["shadow"][k])


class SWA:
    def __init__(self, model: nn.Module, every: int, start_lr_mul: float):
        if every < 1:
            raise ValueError(f"train.swa_every={every} must be >= 1 for SWA")
        self.every, self.start_lr_mul = int(every), float(start_lr_mul)
        self.names = [k for k, _ in _float_items(model)]
        self.total = [torch.zeros_like(v, dtype=torch.float32) for _, v in _float_items(model)]
        self.count = 0
        self.first_step: int | None = None

    def wants(self, step: int, lr_mul: float) -> bool:
        """After optimizer step number `step` (1-based) taken with `lr_mul`: snapshot now?"""
        return step % self.every == 0 and lr_mul < self.start_lr_mul

    @torch.no_grad()
    def add(self, model: nn.Module, step: int) -> None:
        sd = model.state_dict()
        torch._foreach_add_(self.total, [sd[k].detach().float() for k in self.names])
        self.count += 1
        if self.first_step is None:
            self.first_step = int(step)

    def state(self) -> dict[str, Tensor] | None:
        if self.count == 0:
            return None
        return {k: t / self.count for k, t in zip(self.names, self.total)}

    def state_dict(self) -> dict[str, Any]:
        return {"count": self.count, "first_step": self.first_step,
                "total": {k: v.detach().cpu().clone() for k, v in zip(self.names, self.total)}}

    def load_state_dict(self, sd: dict[str, Any]) -> None:
        _check_names("SWA", self.names, list(sd["total"]))
        for dst, k in zip(self.total, self.names):
            dst.copy_(sd["total"][k])
        self.count, self.first_step = int(sd["count"]), sd["first_step"]


class WeightAverager:
    """EMA and/or SWA driven by the loop: ``after_step(model, step, lr_mul)`` after every optimizer step."""

    def __init__(self, model: nn.Module, *, ema_decay: float = 0.0, swa_every: int = 0, swa_start_lr_mul: float = 0.2):
        self.ema = EMA(model, ema_decay) if ema_decay > 0 else None
        self.swa = SWA(model, swa_every, swa_start_lr_mul) if swa_every > 0 else None
        if self.ema is None and self.swa is None:
            raise ValueError("WeightAverager needs train.ema_decay > 0 or train.swa_every > 0")

    @classmethod
    def from_config(cls, model: nn.Module, tc) -> "WeightAverager | None":
        """None when both train.ema_decay and train.swa_every are 0 (the baseline)."""
        if tc.ema_decay <= 0 and tc.swa_every <= 0:
            return None
        return cls(model, ema_decay=tc.ema_decay, swa_every=tc.swa_every, swa_start_lr_mul=tc.swa_start_lr_mul)

    def after_step(self, model: nn.Module, step: int, lr_mul: float) -> None:
        if self.ema is not None:
            self.ema.update(model)
        if self.swa is not None and self.swa.wants(step, lr_mul):
            self.swa.add(model, step)

    @property
    def kind(self) -> str:
        """What `averaged_state` returns now: "swa", "ema" or "none"."""
        if self.swa is not None and self.swa.count > 0:
            return "swa"
        return "ema" if self.ema is not None else "none"

    def describe(self) -> str:
        parts = []
        if self.ema is not None:
            parts.append(f"ema decay:{self.ema.decay}")
        if self.swa is not None:
            parts.append(f"swa snapshots:{self.swa.count} from_step:{self.swa.first_step}")
        return f"averaging:{self.kind} ({', '.join(parts)})"

    def averaged_state(self) -> dict[str, Tensor] | None:
        """fp32 averaged entries by state-dict name (None if SWA-only and no snapshot was taken yet)."""
        if self.kind == "swa":
            return self.swa.state()
        if self.ema is not None:
            return self.ema.state()
        return None

    @torch.no_grad()
    def apply_to(self, model: nn.Module) -> bool:
        """Copy the averaged weights into `model` in place (each entry keeps its dtype and device, so a compiled
        graph over the model stays valid). Returns False when there is nothing to apply."""
        avg = self.averaged_state()
        if avg is None:
            return False
        sd = model.state_dict()
        missing = [k for k in avg if k not in sd]
        if missing:
            raise ValueError(f"averaged weights name entries the model lacks: {', '.join(missing[:5])}")
        for k, v in avg.items():
            sd[k].copy_(v.to(device=sd[k].device, dtype=sd[k].dtype))
        return True

    def state_dict(self) -> dict[str, Any]:
        return {"ema": None if self.ema is None else self.ema.state_dict(),
                "swa": None if self.swa is None else self.swa.state_dict()}

    def load_state_dict(self, sd: dict[str, Any]) -> None:
        for key, part in (("ema", self.ema), ("swa", self.swa)):
            if (part is None) != (sd.get(key) is None):
                raise ValueError(f"checkpoint {'has' if sd.get(key) is not None else 'lacks'} {key.upper()} state but "
                                 f"this run has {key.upper()} {'off' if part is None else 'on'} (train.ema_decay / "
                                 f"train.swa_every must match the run that wrote it)")
            if part is not None:
                part.load_state_dict(sd[key])


def _check_names(what: str, expected: list[str], got: list[str]) -> None:
    if expected != got:
        diff = sorted(set(expected) ^ set(got))
        raise ValueError(f"{what} state does not match the model's state dict (differs in: {', '.join(diff[:5])})")
