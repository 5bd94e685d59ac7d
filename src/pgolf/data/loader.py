"""Training-token loader: one deterministic global token stream, cut into per-rank micro-batches.

    loader = TokenLoader(list_shards("data/demo_sp1024", "train"), rank=rank, world_size=world, seed=0)
    for micro in range(grad_accum):
        x, y = loader.next_batch(cfg.train.micro_batch_tokens, cfg.train.seq_len, device)

Ordering (same scheme as the official ``DistributedTokenLoader``). The train shards, in name order, form one
global stream G that wraps around at the end. With ``S = micro_tokens + 1`` (the extra token makes the shifted
targets), call ``c`` of every rank covers ``G[c*W*S : (c+1)*W*S]`` and rank ``r`` gets the slice
``G[(c*W + r)*S : (c*W + r + 1)*S]``. In optimizer step ``s`` with ``A`` accumulation micro-steps, micro-step
``a`` on rank ``r`` therefore reads global micro-batch ``k = (s*A + a)*W + r``, and step ``s`` covers exactly the
micro-batches ``k in [s*A*W, (s+1)*A*W)``: a function of ``W*A`` only. So 2 ranks x 1 accum and 1 rank x 2 accum
train on the same spans (rank 1's span becomes micro-step 1), and a 1-GPU run with accumulation sees the same
tokens as an 8-GPU run with the same global batch. Ranks never overlap.

``seed == 0`` starts at token 0 of shard 0, which reproduces the official loader token for token; any other
seed starts at a seed-determined offset of the global stream. The state (shard, position, wraps, tokens
consumed) is global, so ``state_dict()`` from any rank resumes every rank bit-exactly, even under a different
world size.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from pgolf.data.loaders_common import ShardSet, check_batch_args, check_rank, to_device


class TokenLoader:
    def __init__(self, files: Sequence[str | Path] | str | Path, *, rank: int = 0, world_size: int = 1,
                 seed: int = 0, vocab_size: int | None = None):
        check_rank(rank, world_size)
        self.rank, self.world_size, self.seed = int(rank), int(world_size), int(seed)
        self.data = ShardSet(files, vocab_size, "TokenLoader")  # validates every shard header up front
        self.files, self.sizes, self.total_tokens = self.data.files, self.data.sizes, self.data.total_tokens
        self.shard, self.pos = self._locate(self._start_offset())
        self.wraps = 0  # times the stream went past the end of the last shard
        self.consumed = 0  # tokens of the global stream consumed by all ranks together

    # -- positioning -----------------------------------------------------------------------------------
    def _start_offset(self) -> int:
        if self.seed == 0:
            return 0
        return int(np.random.default_rng(self.seed).integers(0, self.total_tokens))

    def _locate(self, offset: int) -> tuple[int, int]:
        for i, n in enumerate(self.sizes):
            if offset < n:
                return i, offset
            offset -= n
        raise AssertionError("offset past the end of the data")

    def _move(self, n: int, out: np.ndarray | None) -> None:
        """Advance the stream by `n` tokens, copying them into `out` when given."""
        done = 0
        while done < n:
            avail = self.sizes[self.shard] - self.pos
            if avail <= 0:
                self.shard += 1
                if self.shard == len(self.files):
                    self.shard = 0
                    self.wraps += 1
                self.pos = 0
                continue
            k = min(avail, n - done)
            if out is not None:
                out[done: done + k] = self.data.tokens(self.shard)[self.pos: self.pos + k]
            self.pos += k
            done += k
        self.consumed += n

    # -- batches ---------------------------------------------------------------------------------------
    def next_batch(self, micro_tokens: int, seq_len: int, device: str | torch.device = "cpu"
                   ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x, y)`` int64 of shape ``(micro_tokens // seq_len, seq_len)`` for this rank; y is x shifted by one."""
        check_batch_args(micro_tokens, seq_len)
        span = micro_tokens + 1
        local = np.empty(span, dtype=np.int64)
        self._move(self.rank * span, None)
        self._move(span, local)
        self._move((self.world_size - self.rank - 1) * span, None)
        return to_device(local[:-1].reshape(-1, seq_len), local[1:].reshape(-1, seq_len), device)

    @property
    def epochs(self) -> float:
        """Training tokens consumed so far (all ranks) as a fraction of the training set."""
        return self.consumed / self.total_tokens

    # -- resume ----------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"shard": self.shard, "pos": self.pos, "wraps": self.wraps, "consumed": self.consumed,
                "seed": self.seed, **self.data.identity()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.data.check_identity(state, "loader")
        shard, pos = int(state["shard"]), int(state["pos"])
        if not (0 <= shard < len(self.files) and 0 <= pos <= self.sizes[shard]):
            raise ValueError(f"loader state position shard={shard} pos={pos} is outside the data")
        self.shard, self.pos = shard, pos
        self.wraps, self.consumed = int(state["wraps"]), int(state["consumed"])
        self.seed = int(state.get("seed", self.seed))
