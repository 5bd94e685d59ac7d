"""Feed-forward blocks: relu² (the baseline, modded-nanogpt lineage)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from pgolf.config import ModelConfig
from pgolf.model.layers import CastedLinear


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int):
        super().__init__()
        self.fc = CastedLinear(cfg.model_dim, cfg.mlp_hidden)
        self.proj = CastedLinear(cfg.mlp_hidden, cfg.model_dim, zero_init=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(torch.relu(self.fc(x)).square())
