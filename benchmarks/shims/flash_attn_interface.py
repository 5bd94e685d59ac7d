"""Stand-in for FlashAttention-3's ``flash_attn_interface`` (Hopper wheel, not installable here) so that record
scripts such as #1855's ``train_gpt.py`` run unchanged on PyTorch's own kernels. Put this folder on PYTHONPATH:

    PYTHONPATH=benchmarks/shims python3 train_gpt.py

- ``flash_attn_func(q, k, v, causal=True)``: (B, T, H, D) layout -> ``F.scaled_dot_product_attention`` on
  (B, H, T, D), ``enable_gqa`` when K/V have fewer heads.
- ``flash_attn_varlen_func(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, causal=True)``:
  packed (total, H, D) -> ``torch.nn.attention.varlen.varlen_attn`` (PyTorch's FlashAttention varlen kernel).
  Causal is its ``window_size=(-1, 0)`` (or ``is_causal=True`` on PyTorch versions that spell it that way); GQA
  is its ``enable_gqa`` or, where that argument does not exist, K/V heads repeated to the query heads.

Both return the output tensor only, as FA3 does without ``return_attn_probs``. Measured on one H100 with torch 2.11,
the record's per-GPU rate with this module was within 3% of its FA3 log (reference/peers-on-one-gpu.md).
"""

from __future__ import annotations

import inspect

import torch.nn.functional as F
from torch import Tensor

try:
    from torch.nn.attention.varlen import varlen_attn as _varlen_attn

    _VARLEN_ARGS = frozenset(inspect.signature(_varlen_attn).parameters)
except ImportError:  # older PyTorch: flash_attn_varlen_func raises when called
    _varlen_attn, _VARLEN_ARGS = None, frozenset()


def _no_extras(fn: str, extras: dict) -> None:
    """FA3 options this stand-in does not implement must be left at their defaults (softcap, descale, ...)."""
    bad = {k: v for k, v in extras.items()
           if not (v is None or (isinstance(v, (bool, int, float, tuple)) and v in (False, 0, 1, (-1, -1))))}
    if bad:
        raise NotImplementedError(f"{fn} shim: unsupported FlashAttention-3 options {bad}")


def _window(causal: bool, window_size: tuple[int, int] | None) -> tuple[int, int]:
    left, right = window_size if window_size is not None else (-1, -1)
    return (left, 0) if causal else (left, right)


def flash_attn_func(q: Tensor, k: Tensor, v: Tensor, softmax_scale: float | None = None, *, causal: bool = False,
                    window_size: tuple[int, int] | None = None, **extras) -> Tensor:
    """Dense attention, (B, T, H, D) in and out."""
    _no_extras("flash_attn_func", extras)
    if window_size is not None and tuple(window_size) not in ((-1, -1), (-1, 0)):
        raise NotImplementedError(f"flash_attn_func shim: sliding window {window_size} is not supported")
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=causal,
                                         scale=softmax_scale, enable_gqa=k.size(2) != q.size(2))
    return out.transpose(1, 2)


def flash_attn_varlen_func(q: Tensor, k: Tensor, v: Tensor, cu_seqlens_q: Tensor, cu_seqlens_k: Tensor,
                           max_seqlen_q: int, max_seqlen_k: int, *, softmax_scale: float | None = None,
                           causal: bool = False, window_size: tuple[int, int] | None = None, **extras) -> Tensor:
    """Attention within the segments ``[cu[i], cu[i+1])`` of packed (total, H, D) tensors; empty segments
    (repeated offsets, as the record's padded ``cu_seqlens``) are allowed."""
    _no_extras("flash_attn_varlen_func", extras)
    if _varlen_attn is None:
        raise ImportError("flash_attn_varlen_func shim needs torch.nn.attention.varlen (PyTorch >= 2.9)")
    kw: dict = {}
    if softmax_scale is not None:
        kw["scale"] = softmax_scale
    if "window_size" in _VARLEN_ARGS:
        kw["window_size"] = _window(causal, window_size)
    elif "is_causal" in _VARLEN_ARGS:
        kw["is_causal"] = causal
    if k.size(1) != q.size(1):
        if "enable_gqa" in _VARLEN_ARGS:
            kw["enable_gqa"] = True
        else:
            g = q.size(1) // k.size(1)
            k, v = k.repeat_interleave(g, dim=1), v.repeat_interleave(g, dim=1)
    out = _varlen_attn(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, **kw)
    return out[0] if isinstance(out, tuple) else out
