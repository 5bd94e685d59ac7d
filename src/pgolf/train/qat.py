"""Late QAT: straight-through fake quantization of the block matrices, switched on late in the run.

    pgolf train --preset baseline --set train.qat_bits=6 --set train.qat_start_lr_mul=0.15

Forward of every ``CastedLinear`` under ``blocks.`` (the Muon matrices the export quantizes)::

    s    = rowmax|W| / (2^(b-1) - 1)                    per output row (clamped at 1e-12)
    q(W) = clamp(round(W / s), -(2^(b-1) - 1), 2^(b-1) - 1) * s
    W'   = W + flag * (q(W) - W).detach()               straight-through: dL/dW = dL/dW'

(03-19 MLP3x_QAT_Int6 record: full-run int6 QAT; 03-22..03-31 records: "late QAT" once the LR scale drops
below 0.15.) The records' late QAT toggled a *class attribute* read inside ``forward``; ``torch.compile``
specialised on its value at trace time (False), so the switch never reached the compiled graph (03-21
README). Here ``flag`` is a float32 buffer (0. or 1.) that the forward multiplies in: the compiled graph takes
it as an input, and flipping it in place changes the compiled forward with no recompile. `attach` swaps the
modules' class to `QATLinear` (a CastedLinear subclass: names, parameters and state dict unchanged; the
flag buffer is non-persistent) and must run before ``torch.compile``. Kernel paths that take the weight
directly (the fused MLP) read ``module.effective_weight()``, so QAT reaches them too.

`LateQAT` turns the flag on the first time ``lr_mul < qat_start_lr_mul`` and keeps it on (set the threshold
above 1 for QAT from step 0); its small state goes into checkpoints.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from pgolf.model.layers import CastedLinear


def fake_quant_rows(w: Tensor, bits: int) -> Tensor:
    """Per-row symmetric int-`bits` quantize-dequantize of a 2-D weight, in w's dtype (no gradient)."""
    qmax = float(2 ** (bits - 1) - 1)
    with torch.no_grad():
        w32 = w.detach().float()
        scale = (w32.abs().amax(dim=-1, keepdim=True) / qmax).clamp_min(1e-12)
        return (torch.clamp(torch.round(w32 / scale), -qmax, qmax) * scale).to(w.dtype)


def ste(w: Tensor, bits: int, flag: Tensor) -> Tensor:
    """``w + flag * (q(w) - w).detach()``: equals w (bit for bit) while flag == 0, q(w) in value once flag == 1,
    and passes the gradient straight through to w either way."""
    return w + (flag.to(w.dtype) * (fake_quant_rows(w, bits) - w.detach())).detach()


class QATLinear(CastedLinear):
    """A CastedLinear whose weight goes through `ste` (fp32) before the cast to the activation dtype."""

    qat_bits: int
    qat_flag: Tensor

    def effective_weight(self) -> Tensor:
        return ste(self.weight, self.qat_bits, self.qat_flag)


def qat_modules(model: nn.Module, prefix: str = "blocks.") -> list[tuple[str, CastedLinear]]:
    return [(n, m) for n, m in model.named_modules()
            if isinstance(m, CastedLinear) and n.startswith(prefix) and m.weight.ndim == 2]


def attach(model: nn.Module, bits: int, prefix: str = "blocks.") -> list[str]:
    """Make every 2-D CastedLinear under `prefix` a QATLinear with the flag off; returns their names."""
    if not 2 <= bits <= 8:
        raise ValueError(f"train.qat_bits={bits} must be in 2..8")
    names = []
    for name, m in qat_modules(model, prefix):
        m.__class__ = QATLinear
        m.qat_bits = int(bits)
        m.register_buffer("qat_flag", torch.zeros((), dtype=torch.float32, device=m.weight.device), persistent=False)
        names.append(name)
    if not names:
        raise ValueError(f"train.qat_bits={bits}: the model has no CastedLinear under {prefix!r} to quantize")
    return names


@torch.no_grad()
def set_enabled(model: nn.Module, on: bool) -> None:
    for m in model.modules():
        if isinstance(m, QATLinear):
            m.qat_flag.fill_(1.0 if on else 0.0)


class LateQAT:
    """Owns the switch: ``before_step(model, step, lr_mul)`` every step, before the forward."""

    def __init__(self, model: nn.Module, bits: int, start_lr_mul: float):
        self.bits, self.start_lr_mul = int(bits), float(start_lr_mul)
        self.modules = attach(model, bits)
        self.model = model
        self.enabled_at: int | None = None  # first step that ran with QAT on

    @classmethod
    def from_config(cls, model: nn.Module, tc) -> "LateQAT | None":
        return None if tc.qat_bits <= 0 else cls(model, tc.qat_bits, tc.qat_start_lr_mul)

    @property
    def enabled(self) -> bool:
        return self.enabled_at is not None

    def before_step(self, step: int, lr_mul: float) -> bool:
        """Switch on (once) when lr_mul < qat_start_lr_mul; returns True on the step it switches."""
        if self.enabled_at is None and lr_mul < self.start_lr_mul:
            self.enabled_at = int(step)
            set_enabled(self.model, True)
            return True
        return False

    def state_dict(self) -> dict[str, Any]:
        return {"bits": self.bits, "enabled_at": self.enabled_at}

    def load_state_dict(self, sd: dict[str, Any]) -> None:
        if int(sd["bits"]) != self.bits:
            raise ValueError(f"checkpoint QAT state is for {sd['bits']} bits but train.qat_bits={self.bits}")
        self.enabled_at = sd["enabled_at"]
        set_enabled(self.model, self.enabled_at is not None)
