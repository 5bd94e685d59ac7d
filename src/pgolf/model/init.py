"""Weight-init options (``model.init``, ``model.embed_init``), applied by ``GPT.reset_parameters``.

orthogonal (PR #102 "OrthoInit" lineage; TOP ``_init_weights``): ``orthogonal_(gain=1)`` for Q, K, V, the MLP
    up-projection and every other linear whose two dims are both >= 64. Zero-init output projections stay zero
    (TOP also multiplies them by 1/sqrt(2L) after zeroing, which is a no-op).
overtone (2026-03-19 Overtone record): SVD of the embedding init ``E = U S V^T``; the singular values are reset to
    a power law ``S_k = S_1 k^(-1/2)`` (k = 1, 2, ...), keeping U, V and the top singular value.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from pgolf.model.layers import CastedLinear

ALWAYS_ORTHOGONAL = (".c_q", ".c_k", ".c_v", ".mlp.fc")


@torch.no_grad()
def orthogonal_linears_(model: nn.Module) -> list[str]:
    """Orthogonal init of the chosen linears (module order, so runs are reproducible); returns their names."""
    done = []
    for name, m in model.named_modules():
        if isinstance(m, CastedLinear) and not m.zero_init:
            if name.endswith(ALWAYS_ORTHOGONAL) or min(m.weight.shape) >= 64:
                nn.init.orthogonal_(m.weight, gain=1.0)
                done.append(name)
    return done


@torch.no_grad()
def overtone_(weight: Tensor) -> Tensor:
    """Reshape the spectrum of `weight` in place to S_1 * k^(-1/2)."""
    u, s, vh = torch.linalg.svd(weight.float(), full_matrices=False)
    k = torch.arange(1, s.numel() + 1, dtype=s.dtype, device=s.device)
    weight.copy_((u * (s[0] * k.rsqrt())) @ vh)
    return weight
