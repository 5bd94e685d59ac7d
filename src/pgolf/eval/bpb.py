"""Bits per byte: one accumulator for every evaluation mode.

    BPB = (sum of nats / ln 2) / sum of bytes

over the scored target tokens. Bytes of target y_t after previous token x_{t-1} come from the
tokenizer's lookup tables (techniques.md §2.4)::

    bytes_t = base_bytes[y_t] + [has_leading_space[y_t] and not is_boundary[x_{t-1}]]

so a leading space right after BOS is not charged, and BOS targets count nats but no bytes.
Sums are kept in float64 and all-reduced (SUM) across ranks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor


@dataclass(frozen=True)
class ByteLUT:
    """Per-token-id byte tables on one device."""

    base_bytes: Tensor  # int16 [V]
    has_leading_space: Tensor  # bool [V]
    is_boundary: Tensor  # bool [V]

    @classmethod
    def from_numpy(cls, luts: tuple[np.ndarray, np.ndarray, np.ndarray], device: torch.device | str = "cpu") -> "ByteLUT":
        base, space, boundary = luts
        return cls(
            torch.as_tensor(np.asarray(base, dtype=np.int16), device=device),
            torch.as_tensor(np.asarray(space, dtype=np.bool_), device=device),
            torch.as_tensor(np.asarray(boundary, dtype=np.bool_), device=device),
        )

    def target_bytes(self, prev_ids: Tensor, target_ids: Tensor) -> Tensor:
        """UTF-8 bytes charged to each target token (same shape as target_ids, int32)."""
        b = self.base_bytes[target_ids].to(torch.int32)
        return b + (self.has_leading_space[target_ids] & ~self.is_boundary[prev_ids]).to(torch.int32)


class BPBAccumulator:
    """Sums nats, tokens and bytes in float64 on `device`; `result()` all-reduces across ranks."""

    def __init__(self, device: torch.device | str = "cpu"):
        self.sums = torch.zeros(3, dtype=torch.float64, device=device)  # nats, tokens, bytes

    def add(self, nll: Tensor, num_bytes: Tensor) -> None:
        """nll: per-token nats of the scored tokens; num_bytes: their byte counts (same shape)."""
        self.sums[0] += nll.detach().double().sum()
        self.sums[1] += nll.numel()
        self.sums[2] += num_bytes.double().sum()

    def add_totals(self, nats: float, tokens: int, num_bytes: int) -> None:
        self.sums += torch.tensor([nats, tokens, num_bytes], dtype=torch.float64, device=self.sums.device)

    def result(self) -> "BPBResult":
        sums = self.sums.clone()
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(sums, op=dist.ReduceOp.SUM)
        nats, tokens, nbytes = (float(v) for v in sums.tolist())
        if tokens <= 0 or nbytes <= 0:
            raise ValueError(f"nothing was scored (tokens={tokens:.0f}, bytes={nbytes:.0f})")
        return BPBResult(loss=nats / tokens, bpb=nats / math.log(2.0) / nbytes, tokens=int(tokens), bytes=int(nbytes))


@dataclass(frozen=True)
class BPBResult:
    loss: float  # mean nats per scored token
    bpb: float
    tokens: int
    bytes: int
