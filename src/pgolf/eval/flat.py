"""Flat evaluation: non-overlapping windows of `seq_len` over the whole validation stream.

Like the official ``eval_val``: the stream is cut to ``floor((N-1)/L)*L + 1`` tokens, window i
predicts tokens ``[iL+1, (i+1)L]`` from ``[iL, (i+1)L)``; windows are split evenly across ranks.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.distributed as dist
from typing import Callable

from torch import Tensor

from pgolf.eval.bpb import BPBAccumulator, BPBResult, ByteLUT


def usable_val_tokens(num_tokens: int, seq_len: int) -> int:
    """Number of stream tokens that flat evaluation reads (inputs + the one extra target)."""
    windows = (num_tokens - 1) // seq_len
    if windows <= 0:
        raise ValueError(f"validation split has {num_tokens} tokens, too few for one window of {seq_len}")
    return windows * seq_len + 1


@torch.no_grad()
def evaluate_flat(
    token_losses: Callable[[Tensor, Tensor], Tensor],
    val_tokens: np.ndarray,
    lut: ByteLUT,
    *,
    seq_len: int,
    batch_tokens: int,
    device: torch.device,
    max_tokens: int = 0,
) -> BPBResult:
    """Score `val_tokens` with `token_losses(x, y) -> (B, T) nats` (e.g. ``model.token_losses``);
    `batch_tokens` is the global batch over all ranks.

    max_tokens > 0 scores only the first max_tokens tokens (periodic validation during training).
    """
    rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
    world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
    n = usable_val_tokens(len(val_tokens) if not max_tokens else min(max_tokens + 1, len(val_tokens)), seq_len)
    total_windows = (n - 1) // seq_len
    first, last = total_windows * rank // world, total_windows * (rank + 1) // world
    per_batch = max(1, batch_tokens // (world * seq_len))
    acc = BPBAccumulator(device)
    autocast = torch.autocast(device_type="cuda", dtype=torch.bfloat16) if device.type == "cuda" else _null()
    for w0 in range(first, last, per_batch):
        w1 = min(w0 + per_batch, last)
        chunk = torch.from_numpy(np.asarray(val_tokens[w0 * seq_len : w1 * seq_len + 1], dtype=np.int64))
        chunk = chunk.to(device, non_blocking=True)
        x = chunk[:-1].view(-1, seq_len)
        y = chunk[1:].view(-1, seq_len)
        with autocast:
            nll = token_losses(x, y)
        acc.add(nll, lut.target_bytes(x, y))
    return acc.result()


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False
