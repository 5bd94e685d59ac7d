"""q's RMSNorm, partial RoPE and per-head gain as one autograd function (``model.fused_q_norm``; pgolf's).

    r = rsqrt(mean(q^2) + eps),  q^ = q r,  out = g_h R(q^)          R: rotate-half RoPE on the first k dims

Backward, per row (one head of one token), with u = R^T(d out), the RoPE's transpose::

    s    = q^ . u                       (one dot per row)
    d g_h = sum over rows of s          (a (tokens, heads) sum, not a pass over q and d out)
    d q  = g_h r (u - q^ s / head_dim)  (the RMSNorm backward, whose own dot q^ . d q^ is g_h s)

Autograd of the plain composition computes the same numbers, but reads q and d out over every token a second time
for the gain's gradient (a separate reduction kernel after inductor): this function shares the norm's dot.
Same forward math as ``rms_norm`` (F.rms_norm's default eps, the compute dtype's epsilon), in fp32 or wider.

    from pgolf.model.q_norm_rope import q_norm_rope
    q = q_norm_rope(q, cos, sin, rope_dims, gain)       # q (B, T, H, hd); cos, sin (1, T, 1, k/2); gain (H,)
"""

from __future__ import annotations

import torch
from torch import Tensor

from pgolf.model.attn_rope import apply_partial_rotary


def _wide(x: Tensor) -> Tensor:
    """x in fp32, or in its own dtype when wider."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def _normed(q: Tensor) -> tuple[Tensor, Tensor]:
    """(q^, r (..., 1)), at least fp32, with F.rms_norm's default eps: that of the compute dtype (fp32 for bf16)."""
    qf = _wide(q)
    r = torch.rsqrt(qf.square().mean(-1, keepdim=True) + torch.finfo(qf.dtype).eps)
    return qf * r, r


class _QNormRope(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q: Tensor, cos: Tensor, sin: Tensor, gain: Tensor, k: int) -> Tensor:
        qn, _ = _normed(q)
        out = apply_partial_rotary(qn, _wide(cos), _wide(sin), k) * _wide(gain)[:, None]
        ctx.save_for_backward(q, cos, sin, gain)
        ctx.k = k
        return out.to(q.dtype)

    @staticmethod
    def backward(ctx, dout: Tensor):
        q, cos, sin, gain = ctx.saved_tensors
        qn, r = _normed(q)
        u = apply_partial_rotary(_wide(dout), _wide(cos), -_wide(sin), ctx.k)  # R^T: the rotation by -angle
        s = (qn * u).sum(-1, keepdim=True)
        g = _wide(gain)[:, None]
        dq = (g * r) * (u - qn * (s / q.shape[-1]))
        dgain = s.flatten(0, -3).sum(0).squeeze(-1)
        return dq.to(q.dtype), None, None, dgain.to(gain.dtype), None


def q_norm_rope(q: Tensor, cos: Tensor, sin: Tensor, rope_dims: int, gain: Tensor) -> Tensor:
    """gain_h * RoPE(rms_norm(q)) for q (..., H, hd), cos/sin broadcasting to (..., 1, rope_dims/2), gain (H,);
    the RoPE tables get no gradient."""
    return _QNormRope.apply(q, cos, sin, gain, rope_dims)
