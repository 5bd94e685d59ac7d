"""Feed-forward block, chosen by ``model.mlp_act``; the width is ``model.mlp_mult`` x model_dim.

    relu2        y = W2 relu(W1 x)^2                  baseline (modded-nanogpt lineage)
    leaky_relu2  y = W2 leaky_relu(W1 x, s)^2         PR #493; s = 0.5 in TOP/#1880/#1969, 0.3 in #2123
    swiglu       y = W2 (silu(W_g x) * W_u x)         PR #2 (Shazeer 2020, arXiv:2002.05202)

SwiGLU has three matrices, so its hidden width is 2/3 of the relu² width (rounded to a multiple of 8):
``3 d h' ~= 2 d h``, the same parameter count as a relu² MLP of the same ``mlp_mult``. W_g and W_u are stored
fused as one ``fc`` matrix of shape (2h', d) (gate rows first), so the parameter names stay ``mlp.fc`` and
``mlp.proj`` and the policy's ``blocks.`` 2-D rule sends both to Muon (which then orthogonalizes the fused
matrix as one). ``proj`` starts at zero, so the block is the identity at init. ``model.fused_mlp`` runs relu² /
leaky relu² through `fused_mlp.fused_mlp` (same parameters, same math, the activation inside the GEMM kernels).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pgolf.config import ModelConfig
from pgolf.model.fused_mlp import fused_mlp
from pgolf.model.layers import CastedLinear


def mlp_hidden_dim(cfg: ModelConfig) -> int:
    """Hidden width: ``mlp_hidden`` for relu²/leaky relu², 2/3 of it (multiple of 8) for SwiGLU."""
    if cfg.mlp_act == "swiglu":
        return max(8, 8 * round(2 * cfg.mlp_hidden / 3 / 8))
    return cfg.mlp_hidden


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int):
        super().__init__()
        self.act, self.slope, self.fused = cfg.mlp_act, cfg.mlp_leaky_slope, cfg.fused_mlp
        self.sign_bits = cfg.fused_mlp_sign_bits
        hidden = mlp_hidden_dim(cfg)
        self.fc = CastedLinear(cfg.model_dim, 2 * hidden if self.act == "swiglu" else hidden)
        self.proj = CastedLinear(hidden, cfg.model_dim, zero_init=True)

    def forward(self, x: Tensor, out_scale: Tensor | None = None) -> Tensor:
        """out_scale: (d,) folded into ``proj``'s weight rows (``model.fold_branch_scales``)."""
        if self.fused:  # one kernel per direction carries the activation (fused_mlp.py); relu² is slope 0
            slope = self.slope if self.act == "leaky_relu2" else 0.0
            return fused_mlp(x, self.fc.effective_weight(), self.proj.scaled_weight(out_scale), slope, self.sign_bits)
        h = self.fc(x)
        if self.act == "relu2":
            h = torch.relu(h).square()
        elif self.act == "leaky_relu2":
            h = F.leaky_relu(h, self.slope).square()
        else:  # swiglu
            gate, up = h.chunk(2, dim=-1)
            h = F.silu(gate) * up
        return self.proj(h, out_scale)
