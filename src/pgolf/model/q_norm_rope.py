"""q's RMSNorm, partial RoPE and per-head gain as one autograd function (``model.fused_q_norm``; pgolf's), and
the same math for q and k as custom ops with a Triton pass each way on CUDA (``model.norm_rope_kernel``).

    r = rsqrt(mean(q^2) + eps),  q^ = q r,  out = g_h R(q^)          R: rotate-half RoPE on the first k dims

Backward, per row (one head of one token), with u = R^T(d out), the RoPE's transpose::

    s    = q^ . u                       (one dot per row)
    d g_h = sum over rows of s          (a (tokens, heads) sum, not a pass over q and d out)
    d q  = g_h r (u - q^ s / head_dim)  (the RMSNorm backward, whose own dot q^ . d q^ is g_h s)

Autograd of the plain composition computes the same numbers, but reads q and d out over every token a second time
for the gain's gradient (a separate reduction kernel after inductor): this function shares the norm's dot.
Same forward math as ``rms_norm`` (F.rms_norm's default eps, the compute dtype's epsilon), in fp32 or wider.

    from pgolf.model.q_norm_rope import norm_rope, q_norm_rope
    q = q_norm_rope(q, cos, sin, rope_dims, gain)       # q (B, T, H, hd); cos, sin (1, T, 1, k/2); gain (H,)
    k = norm_rope(k, cos, sin, rope_dims)               # the custom op (gain None: g = 1), out contiguous
"""

from __future__ import annotations

import torch
from torch import Tensor

from pgolf.model.attn_rope import apply_partial_rotary
from pgolf.model.layers import row_kernel_ok, wide


def _normed(q: Tensor) -> tuple[Tensor, Tensor]:
    """(q^, r (..., 1)), at least fp32, with F.rms_norm's default eps: that of the compute dtype (fp32 for bf16)."""
    qf = wide(q)
    r = torch.rsqrt(qf.square().mean(-1, keepdim=True) + torch.finfo(qf.dtype).eps)
    return qf * r, r


def _gain(gain: Tensor | None) -> Tensor | float:
    return 1.0 if gain is None else wide(gain)[:, None]


def norm_rope_math(q: Tensor, cos: Tensor, sin: Tensor, gain: Tensor | None, k: int) -> Tensor:
    """g_h R(rms_norm(q)) in q's dtype, computed at least in fp32 (g = 1 without gain)."""
    qn, _ = _normed(q)
    return (apply_partial_rotary(qn, wide(cos), wide(sin), k) * _gain(gain)).to(q.dtype)


def norm_rope_grad_math(dout: Tensor, q: Tensor, cos: Tensor, sin: Tensor, gain: Tensor | None,
                        k: int) -> tuple[Tensor, Tensor]:
    """(d q in q's dtype, s = q^ . R^T(d out) per row (..., H, 1) at least fp32): the docstring's backward."""
    qn, r = _normed(q)
    u = apply_partial_rotary(wide(dout), wide(cos), -wide(sin), k)  # R^T: the rotation by -angle
    s = (qn * u).sum(-1, keepdim=True)
    dq = (_gain(gain) * r) * (u - qn * (s / q.shape[-1]))
    return dq.to(q.dtype), s


class _QNormRope(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q: Tensor, cos: Tensor, sin: Tensor, gain: Tensor, k: int) -> Tensor:
        ctx.save_for_backward(q, cos, sin, gain)
        ctx.k = k
        return norm_rope_math(q, cos, sin, gain, k)

    @staticmethod
    def backward(ctx, dout: Tensor):
        q, cos, sin, gain = ctx.saved_tensors
        dq, s = norm_rope_grad_math(dout, q, cos, sin, gain, ctx.k)
        return dq, None, None, s.flatten(0, -3).sum(0).squeeze(-1).to(gain.dtype), None


def q_norm_rope(q: Tensor, cos: Tensor, sin: Tensor, rope_dims: int, gain: Tensor) -> Tensor:
    """gain_h * RoPE(rms_norm(q)) for q (..., H, hd), cos/sin broadcasting to (..., 1, rope_dims/2), gain (H,);
    the RoPE tables get no gradient."""
    return _QNormRope.apply(q, cos, sin, gain, rope_dims)


# ``model.norm_rope_kernel``: the same math as custom ops for q (with gain) and k (without), whose bodies on CUDA
# are one Triton pass each way (q_norm_rope_triton.py): a row's partner half for the rotation is a second load of
# the same row, not a cat of slices, and the output is written once, contiguous (B, T, H, hd).


def norm_rope(x: Tensor, cos: Tensor, sin: Tensor, rope_dims: int, gain: Tensor | None = None) -> Tensor:
    """g_h R(rms_norm(x)) for x (B, T, H, hd) (any strides, hd contiguous), cos/sin (1, T, 1, rope_dims/2), gain
    (H,) or None; returns (B, T, H, hd), contiguous, in x's dtype."""
    return torch.ops.pgolf.norm_rope(x, cos, sin, gain, rope_dims)


def uses_triton(x: Tensor, cos: Tensor) -> bool:
    """Whether the ops run the Triton kernels for this input (else their bodies are torch math)."""
    return row_kernel_ok(x) and x.dim() == 4 and cos.shape[:3] == (1, x.shape[1], 1)


@torch.library.custom_op("pgolf::norm_rope", mutates_args=())
def _norm_rope(x: Tensor, cos: Tensor, sin: Tensor, gain: Tensor | None, k: int) -> Tensor:
    if uses_triton(x, cos):
        from pgolf.model import q_norm_rope_triton  # triton is imported only here

        return q_norm_rope_triton.forward(x, cos, sin, gain, k)
    return norm_rope_math(x, cos, sin, gain, k).contiguous()  # as the fake and the kernel


@_norm_rope.register_fake
def _(x: Tensor, cos: Tensor, sin: Tensor, gain: Tensor | None, k: int) -> Tensor:
    return x.new_empty(x.shape)


@torch.library.custom_op("pgolf::norm_rope_bwd", mutates_args=())
def _norm_rope_bwd(dout: Tensor, x: Tensor, cos: Tensor, sin: Tensor, gain: Tensor | None,
                   k: int) -> tuple[Tensor, Tensor]:
    """(d x (B, T, H, hd) contiguous, s per row (B, T, H) fp32, empty without gain)."""
    if uses_triton(x, cos):
        from pgolf.model import q_norm_rope_triton

        return q_norm_rope_triton.backward(dout, x, cos, sin, gain, k)
    dx, s = norm_rope_grad_math(dout, x, cos, sin, gain, k)
    return dx.contiguous(), s.squeeze(-1).float() if gain is not None else x.new_empty(0, dtype=torch.float32)


@_norm_rope_bwd.register_fake
def _(dout: Tensor, x: Tensor, cos: Tensor, sin: Tensor, gain: Tensor | None, k: int) -> tuple[Tensor, Tensor]:
    return x.new_empty(x.shape), x.new_empty(x.shape[:-1] if gain is not None else (0,), dtype=torch.float32)


def _setup_context(ctx, inputs, output) -> None:
    x, cos, sin, gain, k = inputs
    ctx.save_for_backward(x, cos, sin, gain)
    ctx.k, ctx.has_gain = k, gain is not None


def _backward(ctx, dout: Tensor):
    x, cos, sin, gain = ctx.saved_tensors
    dx, s = torch.ops.pgolf.norm_rope_bwd(dout, x, cos, sin, gain, ctx.k)
    dgain = s.flatten(0, -2).sum(0).to(gain.dtype) if ctx.has_gain else None
    return dx, None, None, dgain, None


_norm_rope.register_autograd(_backward, setup_context=_setup_context)
