"""FlashAttention-4's CuTe-DSL kernels (package ``flash-attn-4``, module ``flash_attn.cute``; Hopper SM90 and
Blackwell) as the ``fa4`` attention backend: causal attention within the segments of cu_seqlens, native GQA.

FA4 ships an ``autograd.Function`` around Python-JIT kernels, which dynamo cannot trace, so a fullgraph
``torch.compile`` would break on it. Here its forward and backward are two torch custom ops with fake (shape)
implementations, so the compiled training graph keeps them as opaque nodes, as FA3's own torch ops do for #1855:

    out, lse   = pgolf::fa4_varlen_fwd(q, k, v, cu, max_seqlen, bwd_tile)   # q (N, H, D), k/v (N, Hkv, D), cu int32
    dq, dk, dv = pgolf::fa4_varlen_bwd(dout, q, k, v, out, lse, cu, max_seqlen, bwd_tile)   # lse (H, N) fp32

``bwd_tile`` (model.fa4_bwd_tile): "" for FA4's own SM90 backward tiles, or a name of SM90_BWD_TILES; the forward
op only carries it to its backward.

Softmax scale 1/sqrt(D), as the other backends. Install where there is a GPU:
``pip install flash-attn-4 "nvidia-cutlass-dsl[cu13]"`` (CUDA 13; ``[cu12]`` for CUDA 12).
"""

from __future__ import annotations

import contextlib
import importlib
from typing import Any

import torch
from torch import Tensor

FA4_MODULE = "flash_attn.cute.interface"

# FA4's SM90 backward ignores its tile keywords: it asks interface._tile_size_bwd_sm90 for a BwdConfig, which at
# D <= 64 is FA3's 128 x 128 (stages 2/2/2, SdP_swapAB, AtomLayoutMSdP=1, NdKV=2, MdQ=2). Each entry here is
# another plan for it (BwdConfig's fields): smaller tiles waste less of each short document's diagonal block.
_FA3_D96 = {"m_block_size": 64, "n_block_size": 128, "num_stages_Q": 2, "num_stages_dO": 2, "num_stages_PdS": 2,
            "SdP_swapAB": True, "dKV_swapAB": False, "dQ_swapAB": False, "AtomLayoutMSdP": 1, "AtomLayoutNdKV": 2,
            "AtomLayoutMdQ": 1}
SM90_BWD_TILES = {
    "m64": {**_FA3_D96, "dQ_single_wg": True},  # FA3's choice at D = 96: 64-row query tiles
    "m64_dq2wg": _FA3_D96,  # the same with dQ over both warp groups (FA3's choice at D = 128, causal)
    "n64": {**_FA3_D96, "m_block_size": 128, "n_block_size": 64, "AtomLayoutNdKV": 1, "AtomLayoutMdQ": 2},
}


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
def fa4_varlen_fwd(q: Tensor, k: Tensor, v: Tensor, cu: Tensor, max_seqlen: int,
                   bwd_tile: str = "") -> tuple[Tensor, Tensor]:
    """(out (N, H, D) in q's dtype, lse (H, N) fp32) of causal attention within each segment of cu."""
    return fa4_forward(q, k, v, cu, max_seqlen)


# The fakes give what FA4 allocates: fresh contiguous tensors, whatever the inputs' strides (a compiled graph
# trusts these strides).
@fa4_varlen_fwd.register_fake
def _(q: Tensor, k: Tensor, v: Tensor, cu: Tensor, max_seqlen: int, bwd_tile: str = "") -> tuple[Tensor, Tensor]:
    return q.new_empty(q.shape), q.new_empty((q.size(1), q.size(0)), dtype=torch.float32)


@contextlib.contextmanager
def sm90_bwd_plan(fa4: Any, tile: str):
    """Inside the block FA4's SM90 backward plans SM90_BWD_TILES[tile] instead of its own ("" changes nothing)."""
    if not tile:
        yield
        return
    fields, own = SM90_BWD_TILES[tile], fa4._tile_size_bwd_sm90
    fa4._tile_size_bwd_sm90 = lambda *args, **kwargs: fa4.BwdConfig(**fields)
    try:
        yield
    finally:
        fa4._tile_size_bwd_sm90 = own


def fa4_backward(dout: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor, cu: Tensor,
                 max_seqlen: int, bwd_tile: str = "") -> tuple[Tensor, Tensor, Tensor]:
    """FA4's varlen causal backward -> (dq, dk, dv) (benchmarks also call it on K/V repeated to the query heads)."""
    fa4 = require_fa4()
    with sm90_bwd_plan(fa4, bwd_tile):
        dq, dk, dv, *_ = fa4._flash_attn_bwd(q, k, v, out, dout.contiguous(), lse, causal=True, cu_seqlens_q=cu,
                                             cu_seqlens_k=cu, max_seqlen_q=max_seqlen, max_seqlen_k=max_seqlen)
    return dq, dk, dv


@torch.library.custom_op("pgolf::fa4_varlen_bwd", mutates_args=())
def fa4_varlen_bwd(dout: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor, cu: Tensor,
                   max_seqlen: int, bwd_tile: str = "") -> tuple[Tensor, Tensor, Tensor]:
    return fa4_backward(dout, q, k, v, out, lse, cu, max_seqlen, bwd_tile)


@fa4_varlen_bwd.register_fake
def _(dout: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor, cu: Tensor,
      max_seqlen: int, bwd_tile: str = "") -> tuple[Tensor, Tensor, Tensor]:
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)


def _setup_context(ctx, inputs, output) -> None:
    q, k, v, cu, max_seqlen, bwd_tile = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse, cu)
    ctx.max_seqlen, ctx.bwd_tile = max_seqlen, bwd_tile


def _backward(ctx, g_out: Tensor, _g_lse: Tensor | None):
    q, k, v, out, lse, cu = ctx.saved_tensors
    dq, dk, dv = torch.ops.pgolf.fa4_varlen_bwd(g_out, q, k, v, out, lse, cu, ctx.max_seqlen, ctx.bwd_tile)
    return dq, dk, dv, None, None, None


fa4_varlen_fwd.register_autograd(_backward, setup_context=_setup_context)


def attend_fa4(q: Tensor, k: Tensor, v: Tensor, cu: Tensor, bwd_tile: str = "") -> Tensor:
    """(B, H, T, D) q over (B, Hkv, T, D) k, v -> (B, H, T, D), causal within the segments of the flattened
    stream. Views in and out when q, k, v are transposed (B, T, H, D) tensors, as attention.py passes them."""
    B, H, T, D = q.shape
    flat = [t.transpose(1, 2).reshape(B * T, t.size(1), D) for t in (q, k, v)]
    out, _ = torch.ops.pgolf.fa4_varlen_fwd(*flat, cu, T, bwd_tile)
    return out.reshape(B, T, H, D).transpose(1, 2)
