"""XSA and the per-head output gate as one op with a one-pass backward (``model.fused_xsa_gate``; pgolf's).

Per token and KV head, with v^ = v / max(|v|, 1e-12) and, for each query head h of the group (c_h = 1 unless
XSA is gated, g_h = 1 without a gate)::

    a_h   = y_h . v^
    z_h   = y_h - c_h a_h v^                         # XSA (arXiv:2603.09078; PR #265)
    out_h = g_h z_h                                  # AttnOutGate | SparseAttnGate | dense gate (attention.py)

Backward, from d out_h::

    d g_h = d out_h . y_h - c_h a_h (d out_h . v^)
    dz_h  = g_h d out_h,          s_h = dz_h . v^
    d y_h = dz_h - c_h s_h v^
    d v^  = -sum_h c_h (a_h dz_h + s_h y_h),      d v = (d v^ - v^ (v^ . d v^)) / |v|
    d c_h = -sum over tokens of a_h s_h

Autograd of the composed ops (``attention.xsa_project_out`` then the gate's multiply) gives the same numbers in
several inductor kernels that each read y, d out and v again; on CUDA both directions here are one Triton pass
(``xsa_gate_triton.py``): the forward reads y, v and g and writes out, the backward reads d out, y, v and g and
writes d y, d v and d g. Nothing new is kept for the backward (attention keeps y and v already). Off CUDA, or
without triton, the op bodies are the same math in torch (fp32 or wider), which the CPU tests check.

    from pgolf.model.xsa_gate import xsa_gate
    out = xsa_gate(y, v, gate, coef)    # y (B, T, H, D), v (B, T, Hkv, D), gate (B, T, H) | None, coef (H,) | None
"""

from __future__ import annotations

import torch
from torch import Tensor

from pgolf.model.layers import row_kernel_ok, wide

NORM_EPS = 1e-12  # F.normalize's default, as xsa_project_out


def xsa_gate(y: Tensor, v: Tensor, gate: Tensor | None = None, coef: Tensor | None = None) -> Tensor:
    """g_h (y_h - c_h (y_h . v^) v^) for y (B, T, H, D), v (B, T, Hkv, D) with H a multiple of Hkv, gate (B, T, H)
    or None, coef (H,) or None; returns (B, T, H, D), contiguous, in y's dtype."""
    return torch.ops.pgolf.xsa_gate(y, v, gate, coef)


def uses_triton(y: Tensor) -> bool:
    """Whether the ops run the Triton kernels for this input (else their bodies are torch math)."""
    return row_kernel_ok(y)


def _grouped(y: Tensor, v: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(y as (B, T, Hkv, G, D), v^ and |v| as (B, T, Hkv, 1, D) / (..., 1)), at least fp32."""
    B, T, H, D = y.shape
    Hkv = v.shape[2]
    vw = wide(v).unsqueeze(3)
    norm = vw.norm(dim=-1, keepdim=True)
    return wide(y).reshape(B, T, Hkv, H // Hkv, D), vw / norm.clamp_min(NORM_EPS), norm


def _per_head(t: Tensor | None, shape) -> Tensor | float:
    return 1.0 if t is None else wide(t).reshape(shape)


@torch.library.custom_op("pgolf::xsa_gate", mutates_args=())
def _xsa_gate(y: Tensor, v: Tensor, gate: Tensor | None, coef: Tensor | None) -> Tensor:
    if uses_triton(y):
        from pgolf.model import xsa_gate_triton  # triton is imported only here

        return xsa_gate_triton.forward(y, v, gate, coef)
    B, T, H, D = y.shape
    Hkv = v.shape[2]
    yg, vn, _ = _grouped(y, v)
    c = _per_head(coef, (Hkv, H // Hkv, 1))
    g = _per_head(gate, (B, T, Hkv, H // Hkv, 1))
    a = (yg * vn).sum(-1, keepdim=True)
    return (g * (yg - c * a * vn)).reshape(B, T, H, D).to(y.dtype).contiguous()  # as the fake and the kernel


@_xsa_gate.register_fake
def _(y: Tensor, v: Tensor, gate: Tensor | None, coef: Tensor | None) -> Tensor:
    return y.new_empty(y.shape)


@torch.library.custom_op("pgolf::xsa_gate_bwd", mutates_args=())
def _xsa_gate_bwd(dout: Tensor, y: Tensor, v: Tensor, gate: Tensor | None,
                  coef: Tensor | None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(d y (B, T, H, D), d v (B, T, Hkv, D), d g (B, T, H) fp32, -a_h s_h per token (B, T, H) fp32); the last
    two are empty without a gate / without coef."""
    if uses_triton(y):
        from pgolf.model import xsa_gate_triton

        return xsa_gate_triton.backward(dout, y, v, gate, coef)
    B, T, H, D = y.shape
    Hkv, G = v.shape[2], H // v.shape[2]
    yg, vn, norm = _grouped(y, v)
    dg_out = wide(dout).reshape(B, T, Hkv, G, D)
    c = _per_head(coef, (Hkv, G, 1))
    a = (yg * vn).sum(-1, keepdim=True)
    if gate is None:
        dz, dgate = dg_out, y.new_empty(0, dtype=torch.float32)
    else:
        dz = wide(gate).reshape(B, T, Hkv, G, 1) * dg_out
        dgate = ((dg_out * yg).sum(-1, keepdim=True) - c * a * (dg_out * vn).sum(-1, keepdim=True))
        dgate = dgate.reshape(B, T, H).float()
    s = (dz * vn).sum(-1, keepdim=True)
    dy = dz - c * s * vn
    dvn = -(c * (a * dz + s * yg)).sum(3, keepdim=True)
    dv = torch.where(norm > NORM_EPS, (dvn - vn * (vn * dvn).sum(-1, keepdim=True)) / norm, dvn / NORM_EPS)
    dcoef = y.new_empty(0, dtype=torch.float32) if coef is None else (-a * s).reshape(B, T, H).float()
    return dy.reshape(B, T, H, D).to(y.dtype).contiguous(), dv.squeeze(3).to(v.dtype).contiguous(), dgate, dcoef


@_xsa_gate_bwd.register_fake
def _(dout: Tensor, y: Tensor, v: Tensor, gate: Tensor | None,
      coef: Tensor | None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    f32 = torch.float32
    dgate = y.new_empty(y.shape[:3], dtype=f32) if gate is not None else y.new_empty(0, dtype=f32)
    dcoef = y.new_empty(y.shape[:3], dtype=f32) if coef is not None else y.new_empty(0, dtype=f32)
    return y.new_empty(y.shape), v.new_empty(v.shape), dgate, dcoef


def _setup_context(ctx, inputs, output) -> None:
    y, v, gate, coef = inputs
    ctx.save_for_backward(y, v, gate, coef)
    ctx.has_gate, ctx.has_coef = gate is not None, coef is not None


def _backward(ctx, dout: Tensor):
    y, v, gate, coef = ctx.saved_tensors
    dy, dv, dgate, dcoef_rows = torch.ops.pgolf.xsa_gate_bwd(dout, y, v, gate, coef)
    dg = dgate.to(gate.dtype) if ctx.has_gate else None
    dc = dcoef_rows.sum((0, 1)).to(coef.dtype) if ctx.has_coef else None
    return dy, dv, dg, dc


_xsa_gate.register_autograd(_backward, setup_context=_setup_context)
