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


def fused_mlp(x: Tensor, fc_weight: Tensor, proj_weight: Tensor, slope: float) -> Tensor:
    """leaky(x W_fc^T, slope)^2 W_proj^T for x (..., D), W_fc (H, D), W_proj (D, H), in x's dtype (under CUDA
    autocast: its dtype, as F.linear would)."""
    dtype = torch.get_autocast_dtype("cuda") if x.is_cuda and torch.is_autocast_enabled("cuda") else x.dtype
    flat = x.reshape(-1, x.shape[-1]).to(dtype)
    out, _, _ = torch.ops.pgolf.fused_mlp(flat, fc_weight.to(dtype), proj_weight.to(dtype), float(slope))
    return out.view(*x.shape[:-1], out.shape[-1])


def uses_triton(x: Tensor) -> bool:
    """Whether the ops run the Triton kernel for this input (else their bodies are torch math)."""
    return HAS_TRITON and x.is_cuda and x.dtype in (torch.bfloat16, torch.float16) and x.shape[-1] % 64 == 0


def _act_grad(pre: Tensor, slope: float) -> Tensor:
    return torch.where(pre > 0, 2.0 * pre, (2.0 * slope * slope) * pre)


@torch.library.custom_op("pgolf::fused_mlp", mutates_args=())
def _fused_mlp(x: Tensor, w_fc: Tensor, w_proj: Tensor, slope: float) -> tuple[Tensor, Tensor, Tensor]:
    """(out, pre, post); pre and post are kept for the backward and must not be used otherwise."""
    if uses_triton(x):
        from pgolf.model import fused_mlp_triton  # triton is imported only here

        pre, post = fused_mlp_triton.gemm_act(x.contiguous(), w_fc, slope)
    else:
        pre = x @ w_fc.t()
        post = F.leaky_relu(pre.float(), slope).square().to(pre.dtype)
    return post @ w_proj.t(), pre, post


@_fused_mlp.register_fake
def _(x: Tensor, w_fc: Tensor, w_proj: Tensor, slope: float) -> tuple[Tensor, Tensor, Tensor]:
    hidden = x.new_empty(x.shape[0], w_fc.shape[0])
    return x.new_empty(x.shape[0], w_proj.shape[0]), hidden, torch.empty_like(hidden)


@torch.library.custom_op("pgolf::fused_mlp_pre_grad", mutates_args=())
def _fused_mlp_pre_grad(g_out: Tensor, w_proj: Tensor, pre: Tensor, slope: float) -> Tensor:
    """g_pre = (g_out W_proj) * act'(pre), in pre's dtype."""
    if uses_triton(g_out):
        from pgolf.model import fused_mlp_triton

        # W_proj^T as a (hidden, D) row-major copy (2 MB at #1855's size): the TMA kernel's B tile then loads
        # in the forward's orientation, as the record's kernel does
        return fused_mlp_triton.gemm_act(g_out.contiguous(), w_proj.t().contiguous(), slope, aux=pre.contiguous())
    return ((g_out @ w_proj).float() * _act_grad(pre.float(), slope)).to(pre.dtype)


@_fused_mlp_pre_grad.register_fake
def _(g_out: Tensor, w_proj: Tensor, pre: Tensor, slope: float) -> Tensor:
    return torch.empty_like(pre)


def _setup_context(ctx, inputs, output) -> None:
    x, w_fc, w_proj, slope = inputs
    _, pre, post = output
    ctx.save_for_backward(x, w_fc, w_proj, pre, post)
    ctx.slope = slope


def _backward(ctx, g_out: Tensor, _g_pre: Tensor | None, _g_post: Tensor | None):
    x, w_fc, w_proj, pre, post = ctx.saved_tensors
    g_out = g_out.contiguous()
    g_pre = torch.ops.pgolf.fused_mlp_pre_grad(g_out, w_proj, pre, ctx.slope)
    return g_pre @ w_fc, g_pre.t() @ x, g_out.t() @ post, None


_fused_mlp.register_autograd(_backward, setup_context=_setup_context)
