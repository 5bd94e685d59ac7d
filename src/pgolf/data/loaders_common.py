"""Shared parts of the training loaders, and `build_loader`, which picks one by ``train.loader``.

    loader = build_loader(cfg.train, data, rank=rt.rank, world_size=rt.world_size)
    x, y = loader.next_batch(cfg.train.micro_batch_tokens, cfg.train.seq_len, device)

    stream   pgolf.data.loader.TokenLoader            one global token stream (official order at seed 0)
    coprime  pgolf.data.loaders_coprime.CoprimeLoader  coprime-stride multi-shard windows (PR #1060)
    docpack  pgolf.data.loaders_docpack.DocPackLoader  sequential doc-packed spans from a BOS (TOP, PR #1855)

Every loader has ``next_batch(micro_tokens, seq_len, device) -> (x, y)`` with x, y int64 of shape
``(micro_tokens // seq_len, seq_len)``, ``epochs`` (tokens consumed by all ranks / training tokens) and
``state_dict()`` / ``load_state_dict()`` whose state is global (any rank's copy resumes every rank).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from pgolf.data.shards import list_shards, read_header, read_shard


class ShardSet:
    """Train shard files, their token counts (headers validated up front) and lazily opened memmaps."""

    def __init__(self, files: Sequence[str | Path] | str | Path, vocab_size: int | None = None, what: str = "loader"):
        if isinstance(files, (str, Path)):
            directory = Path(files)
            files = list_shards(directory, "train")
            if not files:
                raise FileNotFoundError(f"no fineweb_train_*.bin shards in {directory}")
        self.files = [Path(f) for f in files]
        if not self.files:
            raise FileNotFoundError(f"{what} needs at least one shard file")
        self.vocab_size = vocab_size
        self.sizes = [read_header(f) for f in self.files]
        self.total_tokens = int(sum(self.sizes))
        if self.total_tokens == 0:
            raise ValueError(f"training shards hold no tokens: {', '.join(str(f) for f in self.files)}")
        self._maps: dict[int, np.ndarray] = {}

    def tokens(self, idx: int) -> np.ndarray:
        if idx not in self._maps:
            self._maps[idx] = read_shard(self.files[idx], vocab_size=self.vocab_size, mmap=True)
        return self._maps[idx]

    def identity(self) -> dict[str, Any]:
        return {"files": [f.name for f in self.files], "sizes": list(self.sizes)}

    def check_identity(self, state: dict[str, Any], what: str) -> None:
        names = [f.name for f in self.files]
        if list(state.get("files", names)) != names or list(state.get("sizes", self.sizes)) != self.sizes:
            raise ValueError(f"{what} state was saved for shards {state.get('files')} with sizes {state.get('sizes')}, "
                             f"but this loader reads {names} with sizes {self.sizes}")


def check_rank(rank: int, world_size: int) -> None:
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"need 0 <= rank < world_size, got rank={rank} world_size={world_size}")


def check_batch_args(micro_tokens: int, seq_len: int) -> None:
    if micro_tokens <= 0 or seq_len <= 0 or micro_tokens % seq_len:
        raise ValueError(f"micro_tokens={micro_tokens} must be a positive multiple of seq_len={seq_len}")


def to_device(x: np.ndarray, y: np.ndarray, device: str | torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """int64 numpy (B, T) pair -> torch on `device` (pinned, non-blocking copy on CUDA)."""
    tx = torch.from_numpy(np.ascontiguousarray(x, dtype=np.int64))
    ty = torch.from_numpy(np.ascontiguousarray(y, dtype=np.int64))
    return host_to_device(tx, ty, device=device)


def host_to_device(*tensors: torch.Tensor, device: str | torch.device) -> tuple[torch.Tensor, ...]:
    """Host tensors -> `device`: unchanged on CPU; on CUDA through pinned memory with non-blocking copies, so the
    host never waits for the device (the caching host allocator keeps each pinned buffer until its copy is done)."""
    device = torch.device(device)
    if device.type == "cpu":
        return tensors
    if device.type == "cuda":
        tensors = tuple(t.pin_memory() for t in tensors)
    return tuple(t.to(device, non_blocking=True) for t in tensors)


def build_loader(tc, data, *, rank: int = 0, world_size: int = 1):
    """The loader named by ``train.loader`` over ``data.train_files``, seeded with ``train.seed``."""
    kind = getattr(tc, "loader", "stream")
    if kind == "stream":
        from pgolf.data.loader import TokenLoader

        return TokenLoader(data.train_files, rank=rank, world_size=world_size, seed=tc.seed)
    if kind == "coprime":
        from pgolf.data.loaders_coprime import CoprimeLoader

        return CoprimeLoader(data.train_files, rank=rank, world_size=world_size, seed=tc.seed, seq_len=tc.seq_len,
                             round_windows=tc.batch_tokens // tc.seq_len)
    if kind == "docpack":
        from pgolf.data.loaders_docpack import DocPackLoader

        bos = getattr(getattr(data, "tokenizer", None), "bos_id", None)
        if bos is None or bos < 0:
            raise ValueError(f"train.loader='docpack' needs a tokenizer with a BOS id; {data.path} has none")
        return DocPackLoader(data.train_files, rank=rank, world_size=world_size, seed=tc.seed, bos_id=int(bos))
    raise ValueError(f"train.loader={kind!r} is not one of stream, coprime, docpack")
