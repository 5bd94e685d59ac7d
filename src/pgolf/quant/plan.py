"""Quantization policy: what each state-dict tensor becomes under ``quant.scheme=mixed``.

It reads the parameter-policy table (`pgolf.optim.policy`, exactly one row per parameter) and maps
the row's ``quant`` field plus the tensor's class to a plan:

    row.quant   tensor                                   plan
    "int8"      numel <= quant.keep_float_max_numel      float16 (float32 if beyond fp16 range)
    "int8"      tok_emb / lm_head ("embed")              rows at embed_bits, SDClip k = clip_k_embed (16 -> fp16)
    "int8"      name has ".attn." / ".mlp." / other      rows at matrix_bits, k = clip_k_attn / _mlp / _other
    "float32"   control tensors                          quant.control_dtype: float32 | float16 | int8 rows (absmax)
    "float16"   -                                        float16
    "keep"      -                                        stored in its own dtype
    any         attn_gate tensors when quant.gate_int8    int8 rows, absmax clip (PR #1736 / #2123 quant gate)

Non-float entries pass through bit-exact; buffers (not in the table) follow the "int8" row rules.
Only "rows" plans of block matrices and embeddings take the budget fitter's step multiplier.

    plans = plan_tensors(model, cfg.quant)
    plans["blocks.0.mlp.fc.weight"].spec.bits   # -> quant.matrix_bits
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable

import torch
from torch import Tensor, nn

from pgolf.optim.policy import PolicyRow, policy_for, resolve_policy
from pgolf.quant.rowwise import RowSpec

GATE_PATTERNS = ("attn_gate",)  # the #2123 gate is `attn_gate_w`
FP16_MAX = 65504.0
KINDS = ("rows", "float16", "float32", "keep", "passthrough")


@dataclass(frozen=True)
class TensorPlan:
    kind: str  # rows | float16 | float32 | keep | passthrough
    cls: str  # embed | attn | mlp | other | gate | control | small | buffer
    spec: RowSpec | None = None
    fit: bool = False  # the budget fitter's step multiplier applies


def tensor_class(name: str) -> str:
    if name.startswith(("tok_emb.", "lm_head.")):
        return "embed"
    if any(p in name for p in GATE_PATTERNS):
        return "gate"
    if ".attn." in name:
        return "attn"
    if ".mlp." in name:
        return "mlp"
    return "other"


def _float_plan(t: Tensor, cls: str, want: str) -> TensorPlan:
    if want == "float16" and t.numel() and float(t.detach().abs().max()) > FP16_MAX:
        want = "float32"
    return TensorPlan(want, cls)


def _gate_spec(bits: int = 8) -> RowSpec:
    return RowSpec(bits=bits, sym=True, clip="absmax")


def _row_plan(name: str, t: Tensor, q: Any) -> TensorPlan:
    cls = tensor_class(name)
    if t.numel() <= q.keep_float_max_numel:
        return _float_plan(t, "small", "float16")
    if cls == "embed":
        if q.embed_bits == 16:
            return _float_plan(t, cls, "float16")
        bits, k = q.embed_bits, q.clip_k_embed
    else:
        bits = q.matrix_bits
        k = {"attn": q.clip_k_attn, "mlp": q.clip_k_mlp}.get(cls, q.clip_k_other)
    spec = RowSpec(bits=bits, sym=not q.asym, clip=q.clip, k=k, percentile=q.clip_percentile)
    return TensorPlan("rows", cls, spec, fit=True)


def plan_tensors(model: nn.Module, q: Any, rows: Iterable[PolicyRow] | None = None) -> dict[str, TensorPlan]:
    """One `TensorPlan` per state-dict entry of `model` (state-dict order)."""
    rows = tuple(rows) if rows is not None else policy_for(getattr(model, "cfg", None))
    table = resolve_policy(model.named_parameters(), rows)
    plans: dict[str, TensorPlan] = {}
    for name, t in model.state_dict().items():
        if not t.is_floating_point():
            plans[name] = TensorPlan("passthrough", "buffer")
            continue
        if not bool(torch.isfinite(t).all()):
            raise ValueError(f"tensor {name!r} has non-finite values; refusing to export it")
        row = table.get(name)
        if q.gate_int8 and tensor_class(name) == "gate" and t.numel() >= 2:
            plans[name] = TensorPlan("rows", "gate", _gate_spec())
        elif row is None or row.quant == "int8":
            plans[name] = _row_plan(name, t, q)
        elif row.quant == "keep":
            plans[name] = TensorPlan("keep", "control")
        elif row.quant == "float16":
            plans[name] = _float_plan(t, "control", "float16")
        elif q.control_dtype == "int8" and t.numel() >= 2:
            plans[name] = TensorPlan("rows", "control", _gate_spec())
        else:
            plans[name] = _float_plan(t, "control", q.control_dtype if q.control_dtype != "int8" else "float32")
    return plans
