"""Rotary tables for attention: full or partial RoPE, and NTK / YaRN scaling for evaluation at a longer context.

Partial RoPE (PR #315 / #287 lineage; TOP uses 16 of 64 dims): only the first k = ``rope_dims`` dims of each head
rotate (rotate-half inside those k), with ``inv_freq_i = base^(-2i/k)``; the other head_dim - k dims carry no
position signal.

Scaling, applied only when the sequence T is longer than the training length L (``rope_train_seq_len``);
s = T / L, identity for T <= L:

    ntk   base' = base * s^(k / (k - 2))                              (NTK-aware; TOP's ``ROPE_YARN`` branch)
    yarn  per frequency: r_i = L / lambda_i with lambda_i = 2*pi / theta_i, ramp g = clamp((r - 1) / (32 - 1), 0, 1),
          theta_i' = (1 - g) * theta_i / s + g * theta_i              (interpolate slow dims, keep fast ones)
          attention logits * (0.1 ln s + 1)^2                         (YaRN temperature, arXiv:2309.00071 §3.4)

T is a static shape under torch.compile, so the ``T > L`` branch costs no graph break.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

# YaRN ramp bounds (alpha, beta) in rotations per training context, the paper's values for LLaMA.
YARN_ALPHA, YARN_BETA = 1.0, 32.0


def rope_inv_freq(rope_dims: int, base: float, device: torch.device | None = None) -> Tensor:
    """base^(-2i/k) for i = 0 .. k/2 - 1, fp32 (same expression as ``layers.rotary_tables``)."""
    return 1.0 / (base ** (torch.arange(0, rope_dims, 2, device=device, dtype=torch.float32) / rope_dims))


def scaled_inv_freq(rope_dims: int, base: float, scaling: str, seq_len: int, train_len: int,
                    device: torch.device | None = None) -> tuple[Tensor, float]:
    """Inverse frequencies for a sequence of `seq_len` tokens and the logit factor (1.0 unless YaRN stretches)."""
    if scaling == "none" or seq_len <= train_len:
        return rope_inv_freq(rope_dims, base, device), 1.0
    s = seq_len / train_len
    if scaling == "ntk":
        return rope_inv_freq(rope_dims, base * s ** (rope_dims / (rope_dims - 2)), device), 1.0
    if scaling == "yarn":
        theta = rope_inv_freq(rope_dims, base, device)
        rotations = train_len * theta / (2 * math.pi)  # r_i = L / lambda_i
        ramp = ((rotations - YARN_ALPHA) / (YARN_BETA - YARN_ALPHA)).clamp(0.0, 1.0)
        theta = (1.0 - ramp) * theta / s + ramp * theta
        return theta, (0.1 * math.log(s) + 1.0) ** 2
    raise ValueError(f"model.rope_scaling={scaling!r} is not one of none, ntk, yarn")


def rope_tables(seq_len: int, inv_freq: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """cos/sin of shape (1, 1, T, k/2), built in fp32 then cast (layout of ``layers.rotary_tables``)."""
    freqs = torch.outer(torch.arange(seq_len, device=inv_freq.device, dtype=torch.float32), inv_freq)
    return freqs.cos()[None, None].to(dtype), freqs.sin()[None, None].to(dtype)


def apply_partial_rotary(x: Tensor, cos: Tensor, sin: Tensor, rope_dims: int) -> Tensor:
    """Rotate-half RoPE on the first `rope_dims` of x's last dim; the rest passes through unchanged."""
    if rope_dims == x.size(-1):
        half = rope_dims // 2
        x1, x2 = x[..., :half], x[..., half:]
        return torch.cat((x1 * cos + x2 * sin, x2 * cos - x1 * sin), dim=-1)
    half = rope_dims // 2
    x1, x2, rest = x[..., :half], x[..., half:rope_dims], x[..., rope_dims:]
    return torch.cat((x1 * cos + x2 * sin, x2 * cos - x1 * sin, rest), dim=-1)
