"""Coprime-stride multi-shard loader (record 2026-03-29 / PR #1060 ``DistributedTokenLoader``, from PR #726).

    pgolf train --preset baseline --set train.loader=coprime

Windows of ``seq_len + 1`` tokens never cross a shard. Per shard and epoch: a random phase
``φ ∈ [0, seq_len)``, ``B = (n - 1 - φ) // seq_len`` blocks, a random start ``a`` and a stride ``s`` with
``gcd(s, B) = 1``; its k-th window starts at ``φ + ((a + k·s) mod B)·seq_len``, so k = 0..B-1 visits every
block exactly once (s is a unit mod B).

The windows form one global stream built in rounds of ``round_windows`` (= the global sequences per step,
``batch_tokens // seq_len``). Round r, with ``p = min(r / 1800, 1)``:
- ``α = 0.9 − 0.4·p``; shards with blocks left in this epoch are drawn without replacement with probability
  ∝ remaining^α; ``m = round(8 + 24·p)`` of them (capped by what is left) — batches mix 8 → 32 shards;
- each drawn shard gets 1 window plus a multinomial share of the rest (capped at its remaining blocks);
- each shard's windows are shuffled, then the shards are interleaved round-robin in a random order per pass.

Deviation from PR #1060, for a hard guarantee: a shard whose blocks are used up waits until every shard is used
up (one epoch), then all shards get new phases, starts and strides. So no window repeats within an epoch.
(PR #1060 restarts an exhausted shard at once, at weight 1^α.) The mix bounds 8 / 32 do not depend on
the world size, and calls are cut from the stream as in `pgolf.data.loader`: call c on rank r reads windows
``[(c·W + r)·n, (c·W + r + 1)·n)``, n = micro_tokens / seq_len, so W ranks × A accumulation steps see the same
windows per optimizer step for any W·A. Seeded by ``train.seed`` (PCG64); all state is global and resumable.
"""

from __future__ import annotations

import copy
import math
from collections import deque
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from pgolf.data.loaders_common import ShardSet, check_batch_args, check_rank, to_device

MIX_LOW, MIX_HIGH, MIX_ROUNDS = 8, 32, 1800  # PR #1060: shards per batch grow 8 -> 32 over 1800 batches
ALPHA_START, ALPHA_DROP = 0.9, 0.4  # shard weight ∝ remaining^α, α = 0.9 - 0.4·progress


class CoprimeLoader:
    def __init__(self, files: Sequence[str | Path] | str | Path, *, rank: int = 0, world_size: int = 1,
                 seed: int = 0, seq_len: int, round_windows: int = 64, vocab_size: int | None = None):
        check_rank(rank, world_size)
        if seq_len < 1 or round_windows < 1:
            raise ValueError(f"coprime loader: need seq_len >= 1 and round_windows >= 1, got {seq_len}, {round_windows}")
        self.shards = ShardSet(files, vocab_size, "CoprimeLoader")
        self.files, self.sizes, self.total_tokens = self.shards.files, self.shards.sizes, self.shards.total_tokens
        self.rank, self.world_size, self.seed = int(rank), int(world_size), int(seed)
        self.seq_len, self.round_windows = int(seq_len), int(round_windows)
        n = np.asarray(self.sizes, dtype=np.int64)
        self.eligible = np.flatnonzero(n >= self.seq_len + 1)
        if self.eligible.size == 0:
            raise ValueError(f"coprime loader: no train shard holds a window of seq_len+1={self.seq_len + 1} tokens "
                             f"(largest has {int(n.max())})")
        self.rng = np.random.Generator(np.random.PCG64(self.seed))
        k = len(self.files)
        self.phase = np.zeros(k, dtype=np.int64)
        self.blocks = np.zeros(k, dtype=np.int64)  # B per shard this epoch (0 = ineligible)
        self.start = np.zeros(k, dtype=np.int64)
        self.stride = np.ones(k, dtype=np.int64)
        self.next = np.zeros(k, dtype=np.int64)  # windows taken this epoch
        self.epoch = -1
        self.rounds = 0
        self.pending: deque[tuple[int, int]] = deque()
        self.consumed = 0  # windows consumed by all ranks together
        self._new_epoch()

    # -- the window stream -----------------------------------------------------------------------------
    def _coprime_stride(self, b: int) -> int:
        if b <= 1:
            return 1
        while True:
            s = int(self.rng.integers(1, b))
            if math.gcd(s, b) == 1:
                return s

    def _new_epoch(self) -> None:
        self.epoch += 1
        L = self.seq_len
        for si in self.eligible.tolist():
            n = self.sizes[si]
            max_phase = min(L - 1, max(0, n - L - 1))
            phase = int(self.rng.integers(max_phase + 1)) if max_phase > 0 else 0
            b = (n - 1 - phase) // L
            self.phase[si], self.blocks[si], self.next[si] = phase, b, 0
            self.start[si] = int(self.rng.integers(b)) if b > 1 else 0
            self.stride[si] = self._coprime_stride(b)

    @property
    def epoch_blocks(self) -> int:
        """Windows in the current epoch (every block of every shard once)."""
        return int(self.blocks.sum())

    def window_start(self, si: int, k: int) -> int:
        """Token offset in shard `si` of its k-th window this epoch."""
        b = int(self.blocks[si])
        return int(self.phase[si] + ((int(self.start[si]) + k * int(self.stride[si])) % b) * self.seq_len)

    def _round(self) -> None:
        remaining = self.blocks - self.next
        if int(remaining.sum()) == 0:
            self._new_epoch()
            remaining = self.blocks - self.next
        live = np.flatnonzero(remaining > 0)
        p = min(self.rounds / MIX_ROUNDS, 1.0)
        weights = remaining[live].astype(np.float64) ** (ALPHA_START - ALPHA_DROP * p)
        probs = weights / weights.sum()
        mix = max(1, min(int(round(MIX_LOW + p * (MIX_HIGH - MIX_LOW))), live.size, self.round_windows))
        pick = self.rng.choice(live.size, size=mix, replace=False, p=probs)
        chosen = live[pick]
        share = probs[pick] / probs[pick].sum()
        counts = np.ones(mix, dtype=np.int64)
        if self.round_windows > mix:
            counts += self.rng.multinomial(self.round_windows - mix, share).astype(np.int64)
        counts = np.minimum(counts, remaining[chosen])
        order = self.rng.permutation(mix)
        buckets: list[list[tuple[int, int]]] = []
        for si, cnt in zip(chosen[order].tolist(), counts[order].tolist()):
            k0 = int(self.next[si])
            b = [(si, self.window_start(si, k)) for k in range(k0, k0 + cnt)]
            self.next[si] = k0 + cnt
            if len(b) > 1:
                b = [b[j] for j in self.rng.permutation(len(b)).tolist()]
            buckets.append(b)
        active = [i for i, b in enumerate(buckets) if b]
        while active:
            for j in self.rng.permutation(len(active)).tolist():
                self.pending.append(buckets[active[j]].pop())
            active = [i for i in active if buckets[i]]
        self.rounds += 1

    # -- batches ---------------------------------------------------------------------------------------
    def next_batch(self, micro_tokens: int, seq_len: int, device: str | torch.device = "cpu"
                   ) -> tuple[torch.Tensor, torch.Tensor]:
        check_batch_args(micro_tokens, seq_len)
        if seq_len != self.seq_len:
            raise ValueError(f"coprime loader was built for seq_len={self.seq_len} but next_batch got {seq_len}")
        n = micro_tokens // seq_len
        need = n * self.world_size
        while len(self.pending) < need:
            self._round()
        taken = [self.pending.popleft() for _ in range(need)]
        mine = taken[self.rank * n:(self.rank + 1) * n]
        buf = np.empty((n, seq_len + 1), dtype=np.int64)
        for row, (si, pos) in enumerate(mine):
            buf[row] = self.shards.tokens(si)[pos:pos + seq_len + 1]
        self.consumed += need
        return to_device(buf[:, :-1], buf[:, 1:], device)

    @property
    def epochs(self) -> float:
        """Training tokens consumed so far (all ranks) as a fraction of the training set."""
        return self.consumed * self.seq_len / self.total_tokens

    # -- resume ----------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"kind": "coprime", "seed": self.seed, "seq_len": self.seq_len, "round_windows": self.round_windows,
                **self.shards.identity(), "rng": copy.deepcopy(self.rng.bit_generator.state),
                "phase": self.phase.tolist(), "blocks": self.blocks.tolist(), "start": self.start.tolist(),
                "stride": self.stride.tolist(), "next": self.next.tolist(), "epoch": self.epoch,
                "rounds": self.rounds, "pending": [list(w) for w in self.pending], "consumed": self.consumed}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("kind") != "coprime":
            raise ValueError(f"loader state is for a {state.get('kind', 'stream')!r} loader, not train.loader='coprime'")
        self.shards.check_identity(state, "coprime loader")
        for key in ("seq_len", "round_windows"):
            if int(state[key]) != getattr(self, key):
                raise ValueError(f"coprime loader state has {key}={state[key]} but this loader has {getattr(self, key)}")
        self.seed = int(state["seed"])
        self.rng = np.random.Generator(np.random.PCG64())
        self.rng.bit_generator.state = copy.deepcopy(state["rng"])
        for key in ("phase", "blocks", "start", "stride", "next"):
            setattr(self, key, np.asarray(state[key], dtype=np.int64))
        self.epoch, self.rounds, self.consumed = int(state["epoch"]), int(state["rounds"]), int(state["consumed"])
        self.pending = deque((int(a), int(b)) for a, b in state["pending"])
