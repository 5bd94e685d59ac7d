"""One transformer block (pre-norm, RMSNorm without weights). Sequential form (``forward``), the baseline::

    x  <- resid_mix[0] * x + resid_mix[1] * x0          # x0 = rms_norm(embedding), mix starts at (1, 0)
    x  <- x + attn_scale * Attn(norm(x))
    x  <- x + mlp_scale  * MLP(norm(x))

Two-lane form (``forward_lanes``; parallel residuals, PR #1204 lineage, TOP ``_parallel_block``), used from
``model.parallel_start_layer`` on. Both branches read the lanes as they were before the block::

    A = attn_scale * Attn(norm(resid_mix[0] * lane0 + resid_mix[1] * x0))
    M = mlp_scale  * MLP(norm(lane1))
    lane0 <- r[0] * lane0 + p[0,0] * A + p[1,0] * M     # r = lane_resid, init 1.1 (TOP)
    lane1 <- r[1] * lane1 + p[0,1] * A + p[1,1] * M     # p = lane_post,  init 1   (TOP)

Not the identity as a function: each lane grows by 1.1 per block and U-Net skips enter lane 0 only. At step 0
(all branches zero) every lane is a multiple of x0, so the final rms_norm gives the baseline's output up to rounding.
norm(x) = rms_norm(x), times 1/sqrt(layer + 1) with ``model.ln_scale`` (PR #287/#315; TOP), where layer is
the physical index, so a looped layer keeps its factor. Also not the identity as a function (it scales what the
branches read); it changes nothing at step 0 only because the branches start at zero.

``model.fold_branch_scales``: attn_scale and mlp_scale multiply the rows of the branch's output projection,
s * (y W^T) = y (s W)^T, instead of its output. Same function and gradients up to bf16 rounding, but the backward
gets d s = rowsum(W * dW') from the (d, hidden) weight gradient dW' instead of sum_tokens(out * d out): no
reduction over every token, no scaled copy of the upstream gradient, and the branch output is not kept for it.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from pgolf.config import ModelConfig
from pgolf.model.attention import CausalSelfAttention
from pgolf.model.layers import rms_norm
from pgolf.model.mlp import MLP


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int):
        super().__init__()
        d = cfg.model_dim
        self.attn = CausalSelfAttention(cfg, layer)
        self.mlp = MLP(cfg, layer)
        self.attn_scale = nn.Parameter(torch.ones(d))
        self.mlp_scale = nn.Parameter(torch.ones(d))
        self.resid_mix = nn.Parameter(torch.stack((torch.ones(d), torch.zeros(d))))
        self.norm_scale = 1.0 / math.sqrt(layer + 1) if cfg.ln_scale else None
        self.fold_scales = cfg.fold_branch_scales
        self.parallel = 0 <= cfg.parallel_start_layer <= layer
        if self.parallel:
            self.lane_resid = nn.Parameter(torch.full((2,), 1.1))
            self.lane_post = nn.Parameter(torch.ones(2, 2))

    def norm(self, x: Tensor) -> Tensor:
        return rms_norm(x) if self.norm_scale is None else rms_norm(x) * self.norm_scale

    def attn_branch(self, h: Tensor, attn_ctx: Any) -> Tensor:
        """attn_scale * Attn(h), h normed."""
        if self.fold_scales:
            return self.attn(h, attn_ctx, out_scale=self.attn_scale)
        return self.attn_scale.to(h.dtype) * self.attn(h, attn_ctx)

    def mlp_branch(self, h: Tensor) -> Tensor:
        """mlp_scale * MLP(h), h normed."""
        if self.fold_scales:
            return self.mlp(h, out_scale=self.mlp_scale)
        return self.mlp_scale.to(h.dtype) * self.mlp(h)

    def forward(self, x: Tensor, x0: Tensor, attn_ctx: Any = None) -> Tensor:
        mix = self.resid_mix.to(x.dtype)
        x = mix[0] * x + mix[1] * x0
        x = x + self.attn_branch(self.norm(x), attn_ctx)
        return x + self.mlp_branch(self.norm(x))

    def forward_lanes(self, lane0: Tensor, lane1: Tensor, x0: Tensor, attn_ctx: Any = None) -> tuple[Tensor, Tensor]:
        mix = self.resid_mix.to(lane0.dtype)
        a = self.attn_branch(self.norm(mix[0] * lane0 + mix[1] * x0), attn_ctx)
        m = self.mlp_branch(self.norm(lane1))
        r, p = self.lane_resid.to(lane0.dtype), self.lane_post.to(lane0.dtype)
        return r[0] * lane0 + p[0, 0] * a + p[1, 0] * m, r[1] * lane1 + p[0, 1] * a + p[1, 1] * m
