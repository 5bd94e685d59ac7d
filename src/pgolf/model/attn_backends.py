"""Attention kernels behind one interface, with optional document isolation over packed streams.

``model.attn_backend`` picks the kernel, ``model.doc_isolated`` the mask (VarLen attention, PR #1530):

    doc[b, t] = cumsum(input_ids[b, :t+1] == bos_id)      # a BOS token starts (and belongs to) a new document
    allowed(q, k) = k <= q  and  doc[b, q] == doc[b, k]    # tokens before a row's first BOS form their own doc

    sdpa  F.scaled_dot_product_attention; causal flag, or a (B, 1, T, T) boolean mask when doc-isolated (any device)
    flex  torch.nn.attention.flex_attention with a causal or per-document BlockMask (compiled on CUDA). FlexAttention
          has no CPU backward, so on CPU with autograd the same mask goes through SDPA densely. On an H100 with
          torch 2.11 the compiled no-grad graph of a per-document mask over B > 1 rows faults (illegal address);
          training graphs do not (benchmarks/diag_doc_isolated.py)
    varlen PyTorch's FlashAttention varlen kernel (torch.nn.attention.varlen.varlen_attn, CUDA) over the flattened
          (B*T) stream cut at every BOS and row start: the kernel TOP (#1855) runs through FA3. On CPU (tests) the
          same segments go through SDPA as a dense mask
    fa3   flash_attn_interface (FlashAttention-3, Hopper only, optional): flash_attn_func, or flash_attn_varlen_func
          on the same cu_seqlens as varlen
    fa4   FlashAttention-4's CuTe kernels (flash_attn.cute, Hopper and Blackwell, optional; attn_fa4.py) on the same
          cu_seqlens as varlen, as torch custom ops a compiled graph keeps; on CPU the varlen reference

`build_attn_context` runs once per forward (in ``GPT.hidden``) from the input ids; every attention layer receives its
result and hands it to `attend`. The baseline (sdpa, not isolated) gets None and stays ``is_causal=True``.

Segment offsets (cu_seqlens) have a data-dependent length, which a static compiled graph cannot produce. So varlen
and fa3 take them from outside the graph, as TOP's loader does (#1855 ``_build_cu_seqlens``): `padded_cu_seqlens`
runs eagerly per batch (in training on the host batch, before its copy to the GPU: no sync) and pads the offsets
with the total length (empty trailing segments) up to one fixed length per batch shape, so one compiled graph
serves every batch: the training loop takes that length from the data (`segment_bound`, the most segments any
window can hold, rounded up to a multiple of CU_BUCKET), hands it to ``GPT.pad_segments`` and primes it before the clock,
as TOP pads every batch to CU_BUCKET_SIZE.
"""

from __future__ import annotations

import importlib
import warnings
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from pgolf.model.attn_fa4 import attend_fa4

BACKENDS = ("sdpa", "flex", "varlen", "fa3", "fa4")
SEGMENT_BACKENDS = ("varlen", "fa3", "fa4")  # backends whose context is cu_seqlens
# cu_seqlens are padded to the length primed for the batch shape: the data's bound rounded up to a multiple of
# CU_BUCKET (#1855's loader pads to a multiple of 64 too); a batch past it pads to CU_BUCKET * 2^k. One bucket
# per length cost 16 graphs and 243 s of warm-up on the proxy, and a doubling ladder (64..512 per shape, train and
# eval, loops off and on) ran past 9 minutes at #1855's size (issue 5); one padded length per shape needs one graph.
# An empty segment only launches kernel blocks that exit at once.
CU_BUCKET = 64


def doc_ids(input_ids: Tensor, bos_id: int) -> Tensor:
    """Document index of every token, (B, T) int64: the running count of BOS tokens up to and including t."""
    return torch.cumsum((input_ids == bos_id).to(torch.int64), dim=1)


def doc_causal_mask(input_ids: Tensor, bos_id: int) -> Tensor:
    """(B, 1, T, T) boolean SDPA mask: True where query t may attend key s (s <= t, same document)."""
    return same_segment_causal(doc_ids(input_ids, bos_id))


def same_segment_causal(seg: Tensor) -> Tensor:
    """(B, 1, T, T) boolean mask from segment ids (B, T): key s <= query t and seg[s] == seg[t]."""
    T = seg.size(1)
    causal = torch.ones(T, T, dtype=torch.bool, device=seg.device).tril()
    return (causal[None] & (seg[:, :, None] == seg[:, None, :]))[:, None]


def repeat_kv(k: Tensor, v: Tensor, heads: int) -> tuple[Tensor, Tensor]:
    """K/V (B, Hkv, T, D) with each head repeated to `heads` heads, for kernels without GQA."""
    g = heads // k.size(1)
    return k.repeat_interleave(g, dim=1), v.repeat_interleave(g, dim=1)


def cu_seqlens(input_ids: Tensor, bos_id: int) -> Tensor:
    """int32 start offsets of every segment of the flattened (B*T) stream plus its total length, for varlen kernels.
    A segment starts at each BOS and at each row start."""
    starts = input_ids == bos_id
    starts[:, 0] = True
    idx = torch.nonzero(starts.flatten()).squeeze(1)
    total = torch.full((1,), input_ids.numel(), dtype=idx.dtype, device=idx.device)
    return torch.cat((idx, total)).to(torch.int32)


def padded_cu_seqlens(input_ids: Tensor, bos_id: int, doc_isolated: bool, bucket: int | None = None,
                      size: int | None = None) -> Tensor:
    """Eager (on CUDA ids one host sync, on host ids none): int32 segment offsets of the flattened (B*T) batch,
    one segment per row, cut at every BOS when `doc_isolated`, then the total B*T repeated (empty segments) up to
    `size` entries, or to the next `bucket` * 2^k when the offsets outgrow it: a new compiled graph, so it warns."""
    B, T = input_ids.shape
    if doc_isolated:
        cu = cu_seqlens(input_ids, bos_id)
    else:
        cu = torch.arange(0, B * T + 1, T, dtype=torch.int32, device=input_ids.device)
    # The primed length wins whenever the offsets fit it: it is a multiple of CU_BUCKET, not bucket * 2^k, and
    # rounding 257..384 offsets up to 512 instead of a primed 384 compiled a second graph on the clock (issue 5).
    if not size or cu.numel() > size:
        if size:
            warnings.warn(f"a ({B}, {T}) batch has {cu.numel()} cu_seqlens offsets, more than the {size} primed for "
                          "its shape (segment_bound of the train shards' contiguous windows; train.loader=coprime "
                          "gathers rows from scattered ones): it compiles a new graph, on the clock",
                          RuntimeWarning, stacklevel=2)
        size = bucketed(cu.numel(), bucket or CU_BUCKET)
    return torch.cat((cu, cu.new_full((size - cu.numel(),), B * T)))


def bucketed(n: int, bucket: int) -> int:
    """The smallest bucket * 2^k >= n."""
    size = bucket
    while size < n:
        size *= 2
    return size


def segment_bound(tokens: Any, *, rows: int, seq_len: int, bos_id: int, doc_isolated: bool,
                  bucket: int | None = None) -> int:
    """One padded cu_seqlens length that fits every (rows, seq_len) batch cut from the 1-d token array `tokens`:
    rows + 1 offsets plus the most BOS tokens any window of rows*seq_len tokens holds (a window starts anywhere, so
    this bounds the stream and docpack loaders, which cut contiguous windows; the coprime loader's rows come from
    scattered windows and can, rarely, hold more, which warns), rounded up to a multiple of `bucket`, not to
    `bucket` * 2^k: FA4 sizes its backward's accumulators by the offsets' count (48 x 2048 proxy batches need at
    most 278: 320, not 512). What the loop pads to and primes."""
    import numpy as np

    hi = rows + 1
    if doc_isolated:
        window = rows * seq_len
        bos = np.flatnonzero(np.asarray(tokens) == bos_id)
        if bos.size:
            hi += int((np.searchsorted(bos, bos + window, side="left") - np.arange(bos.size)).max())
    b = bucket or CU_BUCKET
    return -(-hi // b) * b


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


def needs_cu_seqlens(cfg: Any) -> bool:
    """Whether attention reads cu_seqlens: varlen and fa4 always, fa3 when doc-isolated (``GPT.attn_inputs`` supplies
    them)."""
    return cfg.attn_backend in ("varlen", "fa4") or (cfg.attn_backend == "fa3" and cfg.doc_isolated)


def build_attn_context(cfg: Any, input_ids: Tensor, cu: Tensor | None = None) -> Any:
    """What every attention layer of one forward needs besides q, k, v: None (plain causal), a boolean mask
    (sdpa), a BlockMask (flex) or cu_seqlens (varlen, fa3: `cu` when given, which a compiled graph needs)."""
    if cfg.attn_backend == "flex":
        return flex_block_mask(input_ids, cfg.bos_id, cfg.doc_isolated)
    if cfg.attn_backend in SEGMENT_BACKENDS:
        if not needs_cu_seqlens(cfg):
            return None  # fa3 without isolation: flash_attn_func, causal
        if cu is not None:
            return cu
        if torch.compiler.is_compiling():
            raise RuntimeError(f"model.attn_backend={cfg.attn_backend!r} inside torch.compile needs cu_seqlens from "
                               "outside the graph: call the model with **model.attn_inputs(input_ids)")
        return padded_cu_seqlens(input_ids, cfg.bos_id, cfg.doc_isolated)
    if not cfg.doc_isolated:
        return None
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
            (k, v), gqa = repeat_kv(k, v, q.size(1)), False
        return F.scaled_dot_product_attention(q, k, v, attn_mask=ctx, enable_gqa=gqa)
    if backend == "flex":
        if q.device.type == "cpu" and torch.is_grad_enabled() and q.requires_grad:
            # PyTorch's FlexAttention has no CPU backward: same mask, evaluated densely, through SDPA.
            mask = dense_mask(ctx, q.size(2), q.device)
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=gqa)
        return _flex(q)(q, k, v, block_mask=ctx, enable_gqa=gqa)
    if backend == "varlen":
        return _attend_varlen(q, k, v, ctx)
    if backend == "fa3":
        return _attend_fa3(q, k, v, ctx)
    if backend == "fa4":  # on CPU (tests, evaluation) the same segments through varlen's dense reference
        return attend_fa4(q, k, v, ctx) if q.is_cuda else _attend_varlen(q, k, v, ctx)
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


def _attend_varlen(q: Tensor, k: Tensor, v: Tensor, cu: Tensor) -> Tensor:
    """Causal attention within the segments [cu[i], cu[i+1]) of the flattened stream; (B, H, T, D) in and out."""
    B, H, T, D = q.shape
    if not q.is_cuda:  # no CPU kernel: the same segments as a dense (B, 1, T, T) mask (tests, reference)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=_row_segment_mask(cu, B, T),
                                              enable_gqa=k.size(1) != H)
    fn, causal, native_gqa = _VARLEN or require_varlen()
    gqa: dict = {}
    if k.size(1) != H:
        if native_gqa:
            gqa = {"enable_gqa": True}
        else:
            k, v = repeat_kv(k, v, H)
    flat = [t.transpose(1, 2).reshape(B * T, t.size(1), D) for t in (q, k, v)]
    out = fn(*flat, cu, cu, T, T, **causal, **gqa)
    out = out[0] if isinstance(out, tuple) else out
    return out.reshape(B, T, H, D).transpose(1, 2)


def _row_segment_mask(cu: Tensor, B: int, T: int) -> Tensor:
    """(B, 1, T, T) mask of causal attention within the segments of the flattened stream, row by row: exact when
    every row start is a segment start, as `padded_cu_seqlens` builds them (else a segment would span rows, which
    one mask per row cannot express: a ValueError, checked in eager mode). Per row, not one (B*T)² mask: an
    evaluation batch of 524,288 tokens would need a TiB."""
    cu = cu.to(torch.int64)
    if not torch.compiler.is_compiling() and not torch.isin(torch.arange(0, B * T, T, device=cu.device), cu).all():
        raise ValueError(f"cu_seqlens {cu.tolist()[:8]}... do not start a segment at every row start (T={T})")
    seg = torch.searchsorted(cu, torch.arange(B * T, device=cu.device), right=True)
    return same_segment_causal(seg.view(B, T))


_VARLEN: list = []  # (varlen_attn, causal kwargs, has enable_gqa), filled once outside any compiled graph


def require_varlen() -> list:
    """torch's varlen_attn with this PyTorch's spelling of causal (window_size=(-1, 0), else is_causal=True) and
    whether it takes enable_gqa (else K/V heads are repeated); an ImportError that says what to use without it."""
    if not _VARLEN:
        try:
            from torch.nn.attention.varlen import varlen_attn
        except ImportError:
            raise ImportError("model.attn_backend='varlen' needs torch.nn.attention.varlen (PyTorch >= 2.9); use "
                              "model.attn_backend='flex' or 'sdpa'") from None
        import inspect

        params = inspect.signature(varlen_attn).parameters
        causal = {"window_size": (-1, 0)} if "window_size" in params else {"is_causal": True}
        _VARLEN.extend((varlen_attn, causal, "enable_gqa" in params))
    return _VARLEN
