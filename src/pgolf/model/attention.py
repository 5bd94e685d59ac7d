"""Causal self-attention: GQA, QK-RMSNorm, (partial / scaled) RoPE, learned per-head q gain, then optional XSA
and one optional per-head output gate. Data flow for one layer, x = the normed block input (B, T, d)::

    q, k, v = x Wq, x Wk, x Wv                      # H query heads, Hkv <= H key/value heads (GQA)
    q, k    = rope(rms_norm(q)), rope(rms_norm(k))    # attn_rope.py: first rope_dims dims, ntk / yarn past L_train
    q       = q * q_gain_h                            # learned per-head gain, init qk_gain_init (q's three steps as
                                                      # one function with model.fused_q_norm, q's and k's as
                                                      # Triton ops with model.norm_rope_kernel: q_norm_rope.py)
    y       = attend(q, k, v, ctx)                    # attn_backends.py: sdpa | flex | varlen | fa3, causal or per doc
    y       = y - c_h (y . v^) v^                     # XSA on xsa_layers; c = 1, or tanh(xsa_alpha_h) if xsa_gated
    y_h     = y_h * gate_h(x)                         # AttnOutGate | SparseAttnGate | dense gated attention
                                                      # (XSA and gate as one op with model.fused_xsa_gate: xsa_gate.py)
    out     = y Wo                                    # zero-init

Every technique is decided at __init__ from the config, so the forward has no data-dependent Python branches.
Gate weights are all called ``attn_gate_w`` (the records' name: the export's quant-gate rule routes it).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pgolf.config import ModelConfig
from pgolf.model.attn_backends import attend, require_fa3, require_varlen
from pgolf.model.attn_fa4 import require_fa4
from pgolf.model.attn_rope import (
    apply_partial_rotary,
    rope_inv_freq,
    rope_tables,
    scaled_inv_freq,
)
from pgolf.model.layers import CastedLinear, rms_norm
from pgolf.model.patterns import parse_layers
from pgolf.model.q_norm_rope import norm_rope, q_norm_rope
from pgolf.model.xsa_gate import xsa_gate


def xsa_project_out(y: Tensor, v: Tensor, coef: Tensor | None = None) -> Tensor:
    """Exclusive self-attention (arXiv:2603.09078; PR #265, XSA-all in PR #1019/#1060): remove from each head's
    output y (B, H, T, D) its component along the unit value vector of the same token in its own KV head,
    v (B, Hkv, T, D). GQA by reshaping to (B, Hkv, group, T, D), never repeat_interleave (PR #265: ~2 vs ~7 ms/step).
    `coef` (H,) scales the removed component per head (gated XSA); None removes it fully."""
    B, H, T, D = y.shape
    Hkv = v.size(1)
    yg = y.reshape(B, Hkv, H // Hkv, T, D)
    vn = F.normalize(v, dim=-1).unsqueeze(2)  # (B, Hkv, 1, T, D)
    along = (yg * vn).sum(dim=-1, keepdim=True) * vn
    if coef is not None:
        along = coef.view(Hkv, H // Hkv, 1, 1) * along
    return (yg - along).reshape(B, H, T, D)


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int):
        super().__init__()
        self.num_heads, self.num_kv_heads, self.head_dim = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        kv_dim = cfg.num_kv_heads * cfg.head_dim
        self.c_q = CastedLinear(cfg.model_dim, cfg.model_dim)
        self.c_k = CastedLinear(cfg.model_dim, kv_dim)
        self.c_v = CastedLinear(cfg.model_dim, kv_dim)
        self.proj = CastedLinear(cfg.model_dim, cfg.model_dim, zero_init=True)
        self.q_gain = nn.Parameter(torch.full((cfg.num_heads,), cfg.qk_gain_init, dtype=torch.float32))
        # RoPE: full or partial (first rope_dims dims), NTK / YaRN scaling past rope_train_seq_len.
        self.rope_base = cfg.rope_base
        self.rope_dims = cfg.rope_dims or cfg.head_dim
        self.fused_q_norm, self.norm_rope_kernel = cfg.fused_q_norm, cfg.norm_rope_kernel
        self.rope_scaling, self.rope_train_len = cfg.rope_scaling, cfg.rope_train_seq_len
        # cos/sin up to the training length, computed once: every scaling is the identity there, and a compiled
        # step then reads a (T, k/2) table instead of recomputing cos/sin in its kernels (as record #1855 caches
        # them). fp32, not in the state dict; laid out (1, T, 1, k/2) for q/k in (B, T, H, hd).
        cos, sin = rope_tables(self.rope_train_len, rope_inv_freq(self.rope_dims, self.rope_base), torch.float32)
        self.register_buffer("rope_cos", cos.transpose(1, 2).contiguous(), persistent=False)
        self.register_buffer("rope_sin", sin.transpose(1, 2).contiguous(), persistent=False)
        self.backend, self.fused_qkv = cfg.attn_backend, cfg.fused_qkv
        if self.backend == "fa3":
            require_fa3()  # fail at build time, not at the first forward
        elif self.backend == "varlen":
            require_varlen()
        elif self.backend == "fa4" and torch.cuda.is_available():
            require_fa4()  # on a machine without CUDA the segments go through varlen's dense reference
        # New parameters are created only when their technique is on, after the baseline ones, so a model with
        # everything off draws exactly the baseline's random stream.
        self.use_xsa = parse_layers(cfg.xsa_layers, cfg.num_layers, field="model.xsa_layers")[layer]
        self.xsa_gated = self.use_xsa and cfg.xsa_gated
        self.fused_xsa_gate = self.use_xsa and cfg.fused_xsa_gate
        if self.xsa_gated:
            # Gated XSA (PR #2018 / #2123, modded-nanogpt #264): y - tanh(alpha_h)(y.v^)v^, alpha zero-init.
            # #2123's comment says step 0 equals plain XSA, but tanh(0) = 0: XSA starts OFF and is learned per head.
            self.xsa_alpha = nn.Parameter(torch.zeros(cfg.num_heads, dtype=torch.float32))
        # At most one output gate (config validation enforces it): (kind, input width, pre-sigmoid scale).
        self.gate_kind, self.gate_width, self.gate_scale = "none", 0, 1.0
        if cfg.attn_out_gate_width:
            # AttnOutGate (PR #1667; w = 12 in #1880, 32 in #1969 "WiderGate32"): y_h * 2 sigmoid(W x[:w])_h,
            # W = 0, so x1 at init.
            self.gate_kind, self.gate_width = "out", cfg.attn_out_gate_width
            self.attn_gate_w = nn.Parameter(torch.zeros(cfg.num_heads, self.gate_width, dtype=torch.float32))
        elif cfg.sparse_attn_gate_width:
            # SparseAttnGate (TOP / PR #1787): y_h * sigmoid(s W x[:w])_h, W = 0 -> x0.5 at init (NOT the identity).
            self.gate_kind, self.gate_width = "sparse", cfg.sparse_attn_gate_width
            self.gate_scale = cfg.sparse_attn_gate_scale
            self.attn_gate_w = nn.Parameter(torch.zeros(cfg.num_heads, self.gate_width, dtype=torch.float32))
        elif cfg.gated_attn:
            # Dense gated attention (Qwen G1, arXiv:2505.06708; PR #1736): y_h * sigmoid(W x)_h, W ~ N(0, std),
            # so about x0.5 at init.
            self.gate_kind, self.gate_width = "dense", cfg.model_dim
            w = torch.empty(cfg.num_heads, cfg.model_dim, dtype=torch.float32)
            self.attn_gate_w = nn.Parameter(nn.init.normal_(w, mean=0.0, std=cfg.gated_attn_init_std))

    def forward(self, x: Tensor, ctx: Any = None, out_scale: Tensor | None = None) -> Tensor:
        """x: normed block input (B, T, d); ctx: from `attn_backends.build_attn_context` (None = plain causal);
        out_scale: (d,) folded into the output projection (`CastedLinear.forward`)."""
        B, T, D = x.shape
        # Norm, rotary and gain act in the projections' own layout (B, T, H, hd); attention gets transposed views,
        # which the segment kernels (varlen, fa3) flatten to (B*T, H, hd) without a copy.
        q, k, v = self.project_qkv(x)
        cos, sin, temp = self.rotary(T, q.dtype)
        gain = self.q_gain if temp == 1.0 else self.q_gain * temp  # YaRN temperature; T is static under compile
        q, k = self.norm_rope_qk(q, k, cos, sin, gain)
        y = attend(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), ctx, self.backend)  # (B, H, T, hd)
        coef = torch.tanh(self.xsa_alpha).to(y.dtype) if self.xsa_gated else None
        if self.fused_xsa_gate:  # the same function; one pass each way on CUDA
            gate = self._gate(x) if self.gate_kind != "none" else None
            return self.proj(xsa_gate(y.transpose(1, 2), v, gate, coef).view(B, T, D), out_scale)
        if self.use_xsa:
            y = xsa_project_out(y, v.transpose(1, 2), coef)
        if self.gate_kind != "none":
            y = y * self._gate(x).transpose(1, 2)[..., None]
        return self.proj(y.transpose(1, 2).reshape(B, T, D), out_scale)

    def norm_rope_qk(self, q: Tensor, k: Tensor, cos: Tensor, sin: Tensor, gain: Tensor) -> tuple[Tensor, Tensor]:
        """gain_h RoPE(rms_norm(q)) and RoPE(rms_norm(k)): composed ops; or q through one autograd function whose
        backward shares the norm's dot with q_gain's gradient (fused_q_norm); or both through the custom ops,
        Triton on CUDA (norm_rope_kernel). The same function each way."""
        if self.norm_rope_kernel:
            return norm_rope(q, cos, sin, self.rope_dims, gain), norm_rope(k, cos, sin, self.rope_dims)
        k = apply_partial_rotary(rms_norm(k), cos, sin, self.rope_dims)
        if self.fused_q_norm:
            return q_norm_rope(q, cos, sin, self.rope_dims, gain), k
        return apply_partial_rotary(rms_norm(q), cos, sin, self.rope_dims) * gain.to(q.dtype)[None, None, :, None], k

    def project_qkv(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """q (B, T, H, hd), k and v (B, T, Hkv, hd). ``model.fused_qkv``: one GEMM over the stacked weights, so
        the backward also takes dx and the three weight gradients from one GEMM each (one wider GEMM fills an
        H100 better than three narrow ones); each weight still goes through its ``effective_weight`` (QAT)."""
        B, T, _ = x.shape
        if self.fused_qkv:
            lins = (self.c_q, self.c_k, self.c_v)
            w = torch.cat([m.effective_weight() for m in lins]).to(x.dtype)
            q, k, v = F.linear(x, w).split([m.out_features for m in lins], dim=-1)
        else:
            q, k, v = self.c_q(x), self.c_k(x), self.c_v(x)
        return (q.view(B, T, self.num_heads, self.head_dim), k.view(B, T, self.num_kv_heads, self.head_dim),
                v.view(B, T, self.num_kv_heads, self.head_dim))

    def rotary(self, T: int, dtype: torch.dtype) -> tuple[Tensor, Tensor, float]:
        """cos, sin of shape (1, T, 1, k/2) and the YaRN logit factor: the cached tables up to the training
        length, else tables for T stretched by ``rope_scaling`` (T is static under compile: no graph break)."""
        if T <= self.rope_train_len:
            return self.rope_cos[:, :T].to(dtype), self.rope_sin[:, :T].to(dtype), 1.0
        inv_freq, temp = scaled_inv_freq(self.rope_dims, self.rope_base, self.rope_scaling, T, self.rope_train_len,
                                         self.rope_cos.device)
        cos, sin = rope_tables(T, inv_freq, dtype)
        return cos.transpose(1, 2), sin.transpose(1, 2), temp

    def _gate(self, x: Tensor) -> Tensor:
        """Per-head multiplier (B, T, H) from the normed block input."""
        src = x if self.gate_width == x.size(-1) else x[..., : self.gate_width]
        z = F.linear(src, self.attn_gate_w.to(x.dtype))
        if self.gate_kind == "out":
            return 2.0 * torch.sigmoid(z)
        if self.gate_kind == "sparse":
            return torch.sigmoid(self.gate_scale * z)
        return torch.sigmoid(z)
