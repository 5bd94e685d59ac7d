"""Flat evaluation: non-overlapping windows of `seq_len` over the whole validation stream.

Like the official ``eval_val``: the stream is cut to ``floor((N-1)/L)*L + 1`` tokens, window i
predicts tokens ``[iL+1, (i+1)L]`` from ``[iL, (i+1)L)``; windows are split evenly across ranks. A rank's
last, shorter batch is padded with zero windows that are dropped before summing, so a compiled scorer sees one
input shape (`flat_batch_shapes`), primed before the clock starts (`prime_shapes`).
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


def _window_batches(num_tokens: int, seq_len: int, batch_tokens: int, max_tokens: int, rank: int,
                    world: int) -> list[tuple[int, int]]:
    """(first, end) window indices of each batch this rank scores."""
    n = usable_val_tokens(num_tokens if not max_tokens else min(max_tokens + 1, num_tokens), seq_len)
    total_windows = (n - 1) // seq_len
    first, last = total_windows * rank // world, total_windows * (rank + 1) // world
    per_batch = max(1, batch_tokens // (world * seq_len))
    return [(w0, min(w0 + per_batch, last)) for w0 in range(first, last, per_batch)]


def _rank_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _autocast(device: torch.device):
    return torch.autocast(device_type="cuda", dtype=torch.bfloat16) if device.type == "cuda" else _null()


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
    rank, world = _rank_world()
    acc = BPBAccumulator(device)
    batches = _window_batches(len(val_tokens), seq_len, batch_tokens, max_tokens, rank, world)
    rows = batches[0][1] - batches[0][0] if batches else 0
    for w0, w1 in batches:
        chunk = torch.from_numpy(np.asarray(val_tokens[w0 * seq_len : w1 * seq_len + 1], dtype=np.int64))
        n = w1 - w0
        if n < rows:  # the tail batch: zero windows appended and dropped, so one compiled shape serves every batch
            chunk = torch.cat((chunk, chunk.new_zeros((rows - n) * seq_len)))
        x, y = _inputs_targets(chunk.to(device, non_blocking=True), seq_len)
        with _autocast(device):
            nll = token_losses(x, y)
        acc.add(nll[:n], lut.target_bytes(x[:n], y[:n]))
    return acc.result()


def flat_batch_shapes(num_tokens: int, *, seq_len: int, batch_tokens: int, max_tokens: int = 0) -> list[tuple[int, int]]:
    """The (batch, seq_len) input shape `evaluate_flat` calls `token_losses` with on this rank: its first batch's (a
    shorter tail batch is padded to it), as a list to prime."""
    rank, world = _rank_world()
    batches = _window_batches(num_tokens, seq_len, batch_tokens, max_tokens, rank, world)
    return [(batches[0][1] - batches[0][0], seq_len)] if batches else []


@torch.no_grad()
def prime_shapes(token_losses: Callable[[Tensor, Tensor], Tensor], shapes: list[tuple[int, int]],
                 device: torch.device, bos_id: int = 1) -> None:
    """Call `token_losses` once per shape, so a compiled (static-shape) eval graph is built for each before the
    training clock starts rather than during the first real evaluation. The input holds no BOS token (one segment
    per row for the varlen / fa3 backends, whose scorer pads cu_seqlens to the length fixed per shape)."""
    for b, seq_len in shapes:
        ids = torch.full((b * seq_len + 1,), 1 if bos_id == 0 else 0, dtype=torch.int64, device=device)
        x, y = _inputs_targets(ids, seq_len)
        with _autocast(device):
            token_losses(x, y)


def _inputs_targets(chunk: Tensor, seq_len: int) -> tuple[Tensor, Tensor]:
    """Windows of one contiguous chunk: y is x shifted by one token, a view at storage offset 1 (compiled graphs
    guard on that alignment, so priming must build its inputs the same way)."""
    return chunk[:-1].view(-1, seq_len), chunk[1:].view(-1, seq_len)


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False
