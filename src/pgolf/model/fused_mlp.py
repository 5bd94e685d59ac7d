"""Fused (leaky) relu² MLP for training and evaluation (``model.fused_mlp``; record PR #1855's fused
LeakyReLU² MLP, there a hand-written TMA kernel; here ``fused_mlp_triton.py``).

    pre = x W_fc^T,  post = leaky(pre, s)^2,  out = post W_proj^T            (relu²: s = 0)
    g_pre = (g_out W_proj) * act'(pre),  act'(p) = 2p if p > 0 else 2 s^2 p
    dW_proj = g_out^T post,  dW_fc = g_pre^T x,  dx = g_pre W_fc

    from pgolf.model.fused_mlp import fused_mlp
    out = fused_mlp(x, fc_weight, proj_weight, slope=0.5)

The two GEMMs that touch the (tokens, hidden) activations carry the activation in their epilogue (forward: pre and
post written by the up-projection; backward: g_pre written by g_out W_proj), so neither the unfused activation
kernel nor g_post makes a trip through HBM. The other three GEMMs are cuBLAS. Both steps are custom ops
(``torch.library.custom_op`` with ``register_fake`` and ``register_autograd``), so ``torch.compile(fullgraph=True)``
traces through them. Off CUDA, or without triton, the op bodies are the same math in torch: CPU tests exercise
the autograd and compile wiring against the plain MLP.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from pgolf.model.layers import HAS_TRITON


def fused_mlp(x: Tensor, fc_weight: Tensor, proj_weight: Tensor, slope: float, sign_bits: bool = False) -> Tensor:
    """leaky(x W_fc^T, slope)^2 W_proj^T for x (..., D), W_fc (H, D), W_proj (D, H), in x's dtype (under CUDA
    autocast: its dtype, as F.linear would). `sign_bits`: keep post and pre's signs for the backward, not pre."""
    dtype = torch.get_autocast_dtype("cuda") if x.is_cuda and torch.is_autocast_enabled("cuda") else x.dtype
    flat = x.reshape(-1, x.shape[-1]).to(dtype)
    out, _, _ = torch.ops.pgolf.fused_mlp(flat, fc_weight.to(dtype), proj_weight.to(dtype), float(slope), sign_bits)
    return out.view(*x.shape[:-1], out.shape[-1])


# ``model.fused_mlp_sign_bits``: the backward needs act'(pre) only, and pre = sqrt(post) (pre > 0) or
# -sqrt(post) / |s| (pre < 0), so post (kept anyway, for W_proj's gradient) and one bit per element stand in for pre:
#     act'(pre) = 2 sqrt(post)  (pre > 0),   -2 |s| sqrt(post)  (pre <= 0; 0 for relu², s = 0)
# Not bit-identical: sqrt of post rounded to bf16 is within about 2^-10 of |leaky(pre)|, where pre kept in bf16 is
# within 2^-9 of the fp32 accumulator. Saves pre's (tokens x hidden) write and read and its memory (pgolf's).


def pack_signs(pre: Tensor) -> Tensor:
    """(M, N) -> (M, N / 8) uint8: bit j of byte g is pre[:, 8 g + j] > 0 (the kernel's layout)."""
    positive = (pre > 0).view(pre.shape[0], -1, 8).to(torch.uint8)
    return (positive << torch.arange(8, dtype=torch.uint8, device=pre.device)).sum(-1, dtype=torch.uint8)


def unpack_signs(bits: Tensor) -> Tensor:
    """The inverse of `pack_signs`: (M, N / 8) uint8 -> (M, N) bool."""
    shifts = torch.arange(8, dtype=torch.uint8, device=bits.device)
    return ((bits.unsqueeze(-1) >> shifts) & 1).view(bits.shape[0], -1).bool()


def uses_triton(x: Tensor) -> bool:
    """Whether the ops run the Triton kernel for this input (else their bodies are torch math)."""
    return HAS_TRITON and x.is_cuda and x.dtype in (torch.bfloat16, torch.float16) and x.shape[-1] % 64 == 0


def _act_grad(pre: Tensor, slope: float) -> Tensor:
    return torch.where(pre > 0, 2.0 * pre, (2.0 * slope * slope) * pre)


@torch.library.custom_op("pgolf::fused_mlp", mutates_args=())
def _fused_mlp(x: Tensor, w_fc: Tensor, w_proj: Tensor, slope: float,
               sign_bits: bool = False) -> tuple[Tensor, Tensor, Tensor]:
    """(out, pre, post), or with sign_bits (out, pre's packed signs, post): kept for the backward only."""
    if uses_triton(x):
        from pgolf.model import fused_mlp_triton  # triton is imported only here

        kept, post = fused_mlp_triton.gemm_act(x.contiguous(), w_fc, slope, sign_bits=sign_bits)
    else:
        pre = x @ w_fc.t()
        post = F.leaky_relu(pre.float(), slope).square().to(pre.dtype)
        kept = pack_signs(pre) if sign_bits else pre
    return post @ w_proj.t(), kept, post


@_fused_mlp.register_fake
def _(x: Tensor, w_fc: Tensor, w_proj: Tensor, slope: float, sign_bits: bool = False) -> tuple[Tensor, Tensor, Tensor]:
    hidden = x.new_empty(x.shape[0], w_fc.shape[0])
    kept = x.new_empty(x.shape[0], w_fc.shape[0] // 8, dtype=torch.uint8) if sign_bits else torch.empty_like(hidden)
    return x.new_empty(x.shape[0], w_proj.shape[0]), kept, hidden


@torch.library.custom_op("pgolf::fused_mlp_pre_grad", mutates_args=())
def _fused_mlp_pre_grad(g_out: Tensor, w_proj: Tensor, saved: Tensor, bits: Tensor | None, slope: float) -> Tensor:
    """g_pre = (g_out W_proj) * act'(pre), in saved's dtype; saved = pre, or post with pre's packed signs `bits`."""
    if uses_triton(g_out):
        from pgolf.model import fused_mlp_triton

        # W_proj^T as a (hidden, D) row-major copy (2 MB at #1855's size): the TMA kernel's B tile then loads
        # in the forward's orientation, as the record's kernel does
        return fused_mlp_triton.gemm_act(g_out.contiguous(), w_proj.t().contiguous(), slope, aux=saved.contiguous(),
                                         bits=None if bits is None else bits.contiguous())
    if bits is None:
        grad = _act_grad(saved.float(), slope)
    else:
        r = saved.float().sqrt()
        grad = torch.where(unpack_signs(bits), 2.0 * r, (-2.0 * abs(slope)) * r)
    return ((g_out @ w_proj).float() * grad).to(saved.dtype)


@_fused_mlp_pre_grad.register_fake
def _(g_out: Tensor, w_proj: Tensor, saved: Tensor, bits: Tensor | None, slope: float) -> Tensor:
    return torch.empty_like(saved)


def _setup_context(ctx, inputs, output) -> None:
    x, w_fc, w_proj, slope, sign_bits = inputs
    _, kept, post = output
    ctx.save_for_backward(x, w_fc, w_proj, kept, post)
    ctx.slope, ctx.sign_bits = slope, sign_bits


def _backward(ctx, g_out: Tensor, _g_kept: Tensor | None, _g_post: Tensor | None):
    x, w_fc, w_proj, kept, post = ctx.saved_tensors
    g_out = g_out.contiguous()
    saved, bits = (post, kept) if ctx.sign_bits else (kept, None)
    g_pre = torch.ops.pgolf.fused_mlp_pre_grad(g_out, w_proj, saved, bits, ctx.slope)
    return g_pre @ w_fc, g_pre.t() @ x, g_out.t() @ post, None, None


_fused_mlp.register_autograd(_backward, setup_context=_setup_context)
