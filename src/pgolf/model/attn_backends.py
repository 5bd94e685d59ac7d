"""Attention kernels behind one interface, with optional document isolation over packed streams.

``model.attn_backend`` picks the kernel, ``model.doc_isolated`` the mask (VarLen attention, PR #1530):

    doc[b, t] = cumsum(input_ids[b, :t+1] == bos_id)      # a BOS token starts (and belongs to) a new document
    allowed(q, k) = k <= q  and  doc[b, q] == doc[b, k]    # tokens before a row's first BOS form their own doc

    sdpa  F.scaled_dot_product_attention; causal flag, or a (B, 1, T, T) boolean mask when doc-isolated (any device)
    flex  torch.nn.attention.flex_attention with a causal or per-document BlockMask (compiled on CUDA). FlexAttention
          has no CPU backward, so on CPU with autograd the same mask goes through SDPA densely
    fa3   flash_attn_interface (FlashAttention-3, Hopper only, optional): flash_attn_func, or flash_attn_varlen_func
          on cu_seqlens from the BOS positions. The varlen path has a data-dependent shape (nonzero), so it is not
          fullgraph-compilable; TOP builds cu_seqlens in its loader instead.

`build_attn_context` runs once per forward (in ``GPT.hidden``) from the input ids; every attention layer receives its
result and hands it to `attend`. The baseline (sdpa, not isolated) gets None and stays ``is_causal=True``.
"""

from __future__ import annotations

import importlib
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

BACKENDS = ("sdpa", "flex", "fa3")


def doc_ids(input_ids: Tensor, bos_id: int) -> Tensor:
    """Document index of every token, (B, T) int64: the running count of BOS tokens up to and including t."""
    return torch.cumsum((input_ids == bos_id).to(torch.int64), dim=1)


def doc_causal_mask(input_ids: Tensor, bos_id: int) -> Tensor:
    """(B, 1, T, T) boolean SDPA mask: True where query t may attend key s (s <= t, same document)."""
    T = input_ids.size(1)
    doc = doc_ids(input_ids, bos_id)
    causal = torch.ones(T, T, dtype=torch.bool, device=input_ids.device).tril()
    return (causal[None] & (doc[:, :, None] == doc[:, None, :]))[:, None]


def cu_seqlens(input_ids: Tensor, bos_id: int) -> Tensor:
    """int32 start offsets of every segment of the flattened (B*T) stream plus its total length, for varlen kernels.
    A segment starts at each BOS and at each row start."""
    starts = input_ids == bos_id
    starts[:, 0] = True
    idx = torch.nonzero(starts.flatten()).squeeze(1)
    total = torch.full((1,), input_ids.numel(), dtype=idx.dtype, device=idx.device)
    return torch.cat((idx, total)).to(torch.int32)


def flex_block_mask(input_ids: Tensor, bos_id: int, doc_isolated: bool) -> Any:
    """BlockMask for flex_attention: causal, and per document when `doc_isolated`."""
    from torch.nn.attention.flex_attention import create_block_mask

    B, T = input_ids.shape
    if not doc_isolated:
        def causal(b, h, q_idx, kv_idx):
            return q_idx >= kv_idx

        return create_block_mask(causal, None, None, T, T, device=input_ids.device)
    doc = doc_ids(input_ids, bos_id)

    def same_doc_causal(b, h, q_idx, kv_idx):
        return (q_idx >= kv_idx) & (doc[b, q_idx] == doc[b, kv_idx])

    return create_block_mask(same_doc_causal, B, None, T, T, device=input_ids.device)


def dense_mask(block_mask: Any, T: int, device: torch.device) -> Tensor:
    """Token-level boolean mask (B or 1, 1, T, T) of a BlockMask, from its mask_mod on broadcast index grids."""
    b = torch.arange(block_mask.shape[0], device=device).view(-1, 1, 1, 1)
    h = torch.zeros(1, 1, 1, 1, dtype=torch.int64, device=device)
    pos = torch.arange(T, device=device)
    return block_mask.mask_mod(b, h, pos.view(1, 1, T, 1), pos.view(1, 1, 1, T)).expand(b.size(0), 1, T, T)


def build_attn_context(cfg: Any, input_ids: Tensor) -> Any:
    """What every attention layer of one forward needs besides q, k, v: None (plain causal), a boolean mask
    (sdpa), a BlockMask (flex) or cu_seqlens (fa3)."""
    if cfg.attn_backend == "flex":
        return flex_block_mask(input_ids, cfg.bos_id, cfg.doc_isolated)
    if not cfg.doc_isolated:
        return None
    if cfg.attn_backend == "fa3":
        return cu_seqlens(input_ids, cfg.bos_id)
    return doc_causal_mask(input_ids, cfg.bos_id)


_TORCH_SDPA_ORDER = tuple(torch._C._get_sdp_priority_order())  # torch's own order, restored by "default"
_SDPA_ENABLED = {name: getattr(torch.backends.cuda, f"{name}_sdp_enabled")()
                 for name in ("flash", "mem_efficient", "math", "cudnn")}


def apply_sdpa_priority(priority: str) -> None:
    """Process-wide SDPA kernel order for CUDA (model.sdpa_priority). ``cudnn`` puts cuDNN attention first: on H100
    it measured 0.93 vs 1.37 ms (FA2 backend) for causal GQA 16x8x2048x64 fwd+bwd (issue 5); torch falls through
    to the next kernel when cuDNN cannot take a call. ``default`` restores torch's order, so a model built later in
    the same process never inherits another's choice. Read when tracing, so set before torch.compile."""
    if priority == "default":
        order = _TORCH_SDPA_ORDER
    elif priority == "cudnn":
        cudnn = int(torch.nn.attention.SDPBackend.CUDNN_ATTENTION)
        order = (cudnn, *(b for b in _TORCH_SDPA_ORDER if b != cudnn))
    else:
        raise ValueError(f"model.sdpa_priority={priority!r} is not one of default, cudnn")
    for name, on in _SDPA_ENABLED.items():
        getattr(torch.backends.cuda, f"enable_{name}_sdp")(on or (priority == "cudnn" and name == "cudnn"))
    torch._C._set_sdp_priority_order(list(order))


def require_fa3() -> Any:
    """The flash_attn_interface module, or an ImportError that says how to do without it."""
    try:
        return importlib.import_module("flash_attn_interface")
    except ImportError:
        raise ImportError(
            "model.attn_backend='fa3' needs the FlashAttention-3 module flash_attn_interface (Hopper GPUs), which is "
            "not installed; use model.attn_backend='sdpa' or 'flex'"
        ) from None


_COMPILED_FLEX: list[Any] = []


def _flex(q: Tensor) -> Any:
    from torch.nn.attention.flex_attention import flex_attention

    if q.device.type != "cuda" or torch.compiler.is_compiling():
        return flex_attention  # inside a compiled model dynamo fuses it; on CPU the eager reference is exact
    if not _COMPILED_FLEX:  # eager CUDA: the unfused fallback materializes T x T scores, so compile the kernel once
        _COMPILED_FLEX.append(torch.compile(flex_attention, dynamic=False))
    return _COMPILED_FLEX[0]


def attend(q: Tensor, k: Tensor, v: Tensor, ctx: Any, backend: str) -> Tensor:
    """Causal attention of q (B, H, T, D) over k, v (B, Hkv, T, D) -> (B, H, T, D); GQA when Hkv < H."""
    gqa = k.size(1) != q.size(1)
    if backend == "sdpa":
        if ctx is None:
            return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa)
        if gqa and q.is_cuda:  # CUDA's masked (mem-efficient) kernel has no GQA: expand K/V, not the math fallback
            g = q.size(1) // k.size(1)
            k, v, gqa = k.repeat_interleave(g, dim=1), v.repeat_interleave(g, dim=1), False
        return F.scaled_dot_product_attention(q, k, v, attn_mask=ctx, enable_gqa=gqa)
    if backend == "flex":
        if q.device.type == "cpu" and torch.is_grad_enabled() and q.requires_grad:
            # PyTorch's FlexAttention has no CPU backward: same mask, evaluated densely, through SDPA.
            mask = dense_mask(ctx, q.size(2), q.device)
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=gqa)
        return _flex(q)(q, k, v, block_mask=ctx, enable_gqa=gqa)
    if backend == "fa3":
        return _attend_fa3(q, k, v, ctx)
    raise ValueError(f"model.attn_backend={backend!r} is not one of {', '.join(BACKENDS)}")


def _attend_fa3(q: Tensor, k: Tensor, v: Tensor, cu: Tensor | None) -> Tensor:
    fa3 = require_fa3()
    B, H, T, D = q.shape
    q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # FA3 layout (B, T, H, D); GQA is native
    if cu is None:
        out = fa3.flash_attn_func(q, k, v, causal=True)
    else:
        flat = (t.reshape(B * T, t.size(2), D) for t in (q, k, v))
        out = fa3.flash_attn_varlen_func(*flat, cu_seqlens_q=cu, cu_seqlens_k=cu, max_seqlen_q=T, max_seqlen_k=T,
                                         causal=True)
    out = out[0] if isinstance(out, tuple) else out  # some FA3 builds also return the log-sum-exp
    return out.reshape(B, T, H, D).transpose(1, 2)
