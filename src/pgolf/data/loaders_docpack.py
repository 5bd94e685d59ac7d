"""Document-packing loader: sequential contiguous spans, each shard entered at its first BOS
(TOP / PR #1855 ``DocumentPackingLoader``; varlen attention from PR #1530).

    pgolf train --preset baseline --set train.loader=docpack

With ``S = micro_tokens + 1`` and W ranks, call c reads the next ``W·S`` tokens of the current shard from the
cursor and rank r takes ``[cursor + r·S, cursor + (r+1)·S)``; then ``cursor += W·S``. A shard is entered at its
first BOS; when the next ``W·S`` tokens would cross the shard end, the tail is skipped and the next shard is
entered at its first BOS. So only the first span of each shard starts at a BOS (as in TOP); later spans continue
the token stream, and a document cut at a span or row start is simply a partial document: models that isolate
documents derive doc ids from the BOS tokens in x themselves, so no ``cu_seqlens`` are returned.

Shard order per epoch: file order at ``seed == 0`` (TOP's order, no shuffling), otherwise a permutation drawn
from ``(seed, epoch)``. Sequential reading means no token is read twice within an epoch. The state (epoch,
position in the order, cursor, tokens consumed) is global, so any rank's `state_dict()` resumes every rank.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from pgolf.data.loaders_common import ShardSet, check_batch_args, check_rank, to_device

_SCAN = 1 << 20  # tokens per chunk when looking for a shard's first BOS


class DocPackLoader:
    def __init__(self, files: Sequence[str | Path] | str | Path, *, rank: int = 0, world_size: int = 1,
                 seed: int = 0, bos_id: int = 1, vocab_size: int | None = None):
        check_rank(rank, world_size)
        self.shards = ShardSet(files, vocab_size, "DocPackLoader")
        self.files, self.sizes, self.total_tokens = self.shards.files, self.shards.sizes, self.shards.total_tokens
        self.rank, self.world_size, self.seed, self.bos_id = int(rank), int(world_size), int(seed), int(bos_id)
        self._first_bos: dict[int, int] = {}
        self.epoch = 0
        self.order_pos = 0  # index into shard_order(epoch)
        self.cursor: int | None = None  # None: enter the current shard at its first BOS
        self.consumed = 0

    def shard_order(self, epoch: int) -> list[int]:
        n = len(self.files)
        if self.seed == 0:
            return list(range(n))
        return np.random.default_rng([self.seed, epoch]).permutation(n).tolist()

    @property
    def shard(self) -> int:
        return self.shard_order(self.epoch)[self.order_pos]

    def first_bos(self, si: int) -> int:
        """Index of the first BOS in shard `si`, or -1 if it has none."""
        if si not in self._first_bos:
            tokens, found = self.shards.tokens(si), -1
            for lo in range(0, len(tokens), _SCAN):
                hits = np.flatnonzero(tokens[lo:lo + _SCAN] == self.bos_id)
                if hits.size:
                    found = lo + int(hits[0])
                    break
            self._first_bos[si] = found
        return self._first_bos[si]

    def _advance(self) -> None:
        self.order_pos += 1
        if self.order_pos == len(self.files):
            self.order_pos, self.epoch = 0, self.epoch + 1
        self.cursor = None

    def _position(self, span: int) -> int:
        """Move to the first place that fits `span` tokens; return the shard index."""
        for _ in range(2 * len(self.files) + 1):
            si = self.shard
            if self.cursor is None:
                start = self.first_bos(si)
                self.cursor = start if start >= 0 else self.sizes[si]  # no BOS: skip the shard
            if self.cursor + span <= self.sizes[si]:
                return si
            self._advance()
        raise ValueError(f"docpack loader: no train shard has {span} tokens after its first BOS (id {self.bos_id}); "
                         f"lower train.micro_batch_tokens or check the shards' BOS tokens")

    def next_batch(self, micro_tokens: int, seq_len: int, device: str | torch.device = "cpu"
                   ) -> tuple[torch.Tensor, torch.Tensor]:
        check_batch_args(micro_tokens, seq_len)
        S = micro_tokens + 1
        si = self._position(self.world_size * S)
        lo = self.cursor + self.rank * S
        local = np.asarray(self.shards.tokens(si)[lo:lo + S], dtype=np.int64)
        self.cursor += self.world_size * S
        self.consumed += self.world_size * S
        return to_device(local[:-1].reshape(-1, seq_len), local[1:].reshape(-1, seq_len), device)

    @property
    def epochs(self) -> float:
        """Training tokens consumed so far (all ranks) as a fraction of the training set."""
        return self.consumed / self.total_tokens

    def state_dict(self) -> dict[str, Any]:
        return {"kind": "docpack", "seed": self.seed, "bos_id": self.bos_id, **self.shards.identity(),
                "epoch": self.epoch, "order_pos": self.order_pos, "cursor": self.cursor, "consumed": self.consumed}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("kind") != "docpack":
            raise ValueError(f"loader state is for a {state.get('kind', 'stream')!r} loader, not train.loader='docpack'")
        self.shards.check_identity(state, "docpack loader")
        if int(state["bos_id"]) != self.bos_id:
            raise ValueError(f"docpack loader state has bos_id={state['bos_id']} but the tokenizer's is {self.bos_id}")
        self.seed, self.epoch, self.order_pos = int(state["seed"]), int(state["epoch"]), int(state["order_pos"])
        self.cursor = None if state["cursor"] is None else int(state["cursor"])
        self.consumed = int(state["consumed"])
