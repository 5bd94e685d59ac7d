"""FlashAttention-4's CuTe-DSL kernels (package ``flash-attn-4``, module ``flash_attn.cute``; Hopper SM90 and
Blackwell) as the ``fa4`` attention backend: causal attention within the segments of cu_seqlens, native GQA.

FA4 ships an ``autograd.Function`` around Python-JIT kernels, which dynamo cannot trace, so a fullgraph
``torch.compile`` would break on it. Here its forward and backward are two torch custom ops with fake (shape)
implementations, so the compiled training graph keeps them as opaque nodes, as FA3's own torch ops do for #1855:

    out, lse   = pgolf::fa4_varlen_fwd(q, k, v, cu, max_seqlen)   # q (N, H, D), k/v (N, Hkv, D), cu int32 (S+1,)
    dq, dk, dv = pgolf::fa4_varlen_bwd(dout, q, k, v, out, lse, cu, max_seqlen)    # lse (H, N) fp32

Softmax scale 1/sqrt(D), as the other backends. Install where there is a GPU:
``pip install flash-attn-4 "nvidia-cutlass-dsl[cu13]"`` (CUDA 13; ``[cu12]`` for CUDA 12).
"""

from __future__ import annotations

import importlib
from typing import Any

import torch
from torch import Tensor

FA4_MODULE = "flash_attn.cute.interface"


def require_fa4() -> Any:
    """FA4's interface module, or an ImportError that says what to install and what to use without it."""
    try:
        return importlib.import_module(FA4_MODULE)
    except ImportError as e:
        raise ImportError(
            f"model.attn_backend='fa4' needs FlashAttention-4 ({FA4_MODULE}: pip install flash-attn-4 "
            f"\"nvidia-cutlass-dsl[cu13]\"; Hopper or Blackwell GPUs), which cannot be imported ({e}); use "
            "model.attn_backend='varlen'"
        ) from None


def fa4_forward(q: Tensor, k: Tensor, v: Tensor, cu: Tensor, max_seqlen: int, **options: Any) -> tuple[Tensor, Tensor]:
    """FA4's varlen causal forward -> (out, lse); `options` are more of its keywords (benchmarks try tile sizes)."""
    out, lse, *_ = require_fa4()._flash_attn_fwd(q, k, v, cu_seqlens_q=cu, cu_seqlens_k=cu, max_seqlen_q=max_seqlen,
                                                 max_seqlen_k=max_seqlen, causal=True, return_lse=True, **options)
    return out, lse


@torch.library.custom_op("pgolf::fa4_varlen_fwd", mutates_args=())
def fa4_varlen_fwd(q: Tensor, k: Tensor, v: Tensor, cu: Tensor, max_seqlen: int) -> tuple[Tensor, Tensor]:
    """(out (N, H, D) in q's dtype, lse (H, N) fp32) of causal attention within each segment of cu."""
    return fa4_forward(q, k, v, cu, max_seqlen)


# The fakes give what FA4 allocates: fresh contiguous tensors, whatever the inputs' strides (a compiled graph
# trusts these strides).
@fa4_varlen_fwd.register_fake
def _(q: Tensor, k: Tensor, v: Tensor, cu: Tensor, max_seqlen: int) -> tuple[Tensor, Tensor]:
    return q.new_empty(q.shape), q.new_empty((q.size(1), q.size(0)), dtype=torch.float32)


def fa4_backward(dout: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor, cu: Tensor,
                 max_seqlen: int) -> tuple[Tensor, Tensor, Tensor]:
    """FA4's varlen causal backward -> (dq, dk, dv) (benchmarks also call it on K/V repeated to the query heads)."""
    dq, dk, dv, *_ = require_fa4()._flash_attn_bwd(q, k, v, out, dout.contiguous(), lse, causal=True,
                                                   cu_seqlens_q=cu, cu_seqlens_k=cu, max_seqlen_q=max_seqlen,
                                                   max_seqlen_k=max_seqlen)
    return dq, dk, dv


@torch.library.custom_op("pgolf::fa4_varlen_bwd", mutates_args=())
def fa4_varlen_bwd(dout: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor, cu: Tensor,
                   max_seqlen: int) -> tuple[Tensor, Tensor, Tensor]:
    return fa4_backward(dout, q, k, v, out, lse, cu, max_seqlen)


@fa4_varlen_bwd.register_fake
def _(dout: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor, cu: Tensor,
      max_seqlen: int) -> tuple[Tensor, Tensor, Tensor]:
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)


def _setup_context(ctx, inputs, output) -> None:
    q, k, v, cu, max_seqlen = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse, cu)
    ctx.max_seqlen = max_seqlen


def _backward(ctx, g_out: Tensor, _g_lse: Tensor | None):
    q, k, v, out, lse, cu = ctx.saved_tensors
    dq, dk, dv = torch.ops.pgolf.fa4_varlen_bwd(g_out, q, k, v, out, lse, cu, ctx.max_seqlen)
    return dq, dk, dv, None, None


fa4_varlen_fwd.register_autograd(_backward, setup_context=_setup_context)


def attend_fa4(q: Tensor, k: Tensor, v: Tensor, cu: Tensor) -> Tensor:
    """(B, H, T, D) q over (B, Hkv, T, D) k, v -> (B, H, T, D), causal within the segments of the flattened
    stream. Views in and out when q, k, v are transposed (B, T, H, D) tensors, as attention.py passes them."""
    B, H, T, D = q.shape
    flat = [t.transpose(1, 2).reshape(B * T, t.size(1), D) for t in (q, k, v)]
    out, _ = torch.ops.pgolf.fa4_varlen_fwd(*flat, cu, T)
    return out.reshape(B, T, H, D).transpose(1, 2)
