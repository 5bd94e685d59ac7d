"""One transformer block of the baseline (pre-norm, RMSNorm without weights)::

    x  <- resid_mix[0] * x + resid_mix[1] * x0          # x0 = rms_norm(embedding), mix starts at (1, 0)
    x  <- x + attn_scale * Attn(rms_norm(x))
    x  <- x + mlp_scale  * MLP(rms_norm(x))
"""

from __future__ import annotations

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

    def forward(self, x: Tensor, x0: Tensor) -> Tensor:
        mix = self.resid_mix.to(x.dtype)
        x = mix[0] * x + mix[1] * x0
        x = x + self.attn_scale.to(x.dtype) * self.attn(rms_norm(x))
        return x + self.mlp_scale.to(x.dtype) * self.mlp(rms_norm(x))
