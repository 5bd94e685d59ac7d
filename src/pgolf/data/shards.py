"""Token shards in the official challenge format (``write_datafile`` / ``load_data_shard`` of openai/parameter-golf).

Layout of one ``fineweb_{train,val}_%06d.bin``::

    header: 256 x int32 little-endian   [0]=20240520 (magic) [1]=1 (version) [2]=n (token count), rest 0
    body:   n x uint16 little-endian    documents laid end to end, each one [BOS=1] + tokens

so the file is exactly ``1024 + 2*n`` bytes. Files written here load in the official ``train_gpt.py``
unchanged, and the official shards load here.

    from pgolf.data.shards import load_tokens
    val = load_tokens("data/demo_sp1024", "val", vocab_size=1024)
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from pgolf.fileio import atomic_open, sha256_file

MAGIC = 20240520
VERSION = 1
HEADER_INTS = 256
HEADER_BYTES = HEADER_INTS * 4
SPLITS = ("train", "val")
DEFAULT_SHARD_TOKENS = 100_000_000  # official SHARD_SIZE = 10**8


class ShardError(ValueError):
    """A shard file that is not a valid official-format shard; the message names the file."""


def shard_path(directory: str | Path, split: str, idx: int) -> Path:
    """``<directory>/fineweb_<split>_<idx:06d>.bin``."""
    _check_split(split)
    if idx < 0:
        raise ValueError(f"shard index must be >= 0, got {idx}")
    return Path(directory) / f"fineweb_{split}_{idx:06d}.bin"


def list_shards(directory: str | Path, split: str) -> list[Path]:
    """Sorted token shards of one split; byte sidecars (``fineweb_val_bytes_*``) and temp files are excluded."""
    _check_split(split)
    directory = Path(directory)
    if not directory.is_dir():
        return []
    pattern = re.compile(rf"^fineweb_{split}_(\d+)\.bin$")
    return sorted(p for p in directory.iterdir() if pattern.match(p.name) and p.is_file())


def write_shard(path: str | Path, tokens: Any) -> Path:
    """Write `tokens` (any integer array-like with values in [0, 65536)) as one shard, atomically."""
    path = Path(path)
    arr = np.asarray(tokens)
    if arr.ndim != 1:
        raise ValueError(f"{path}: tokens must be a 1-D array, got shape {arr.shape}")
    if arr.size >= 2**31:
        raise ValueError(f"{path}: {arr.size} tokens do not fit the int32 header count")
    if arr.dtype != np.uint16:
        if arr.size and (arr.dtype.kind not in "iu" or int(arr.min()) < 0 or int(arr.max()) >= 2**16):
            raise ValueError(f"{path}: token ids must be integers in [0, 65536) to be stored as uint16")
    body = np.ascontiguousarray(arr, dtype="<u2")
    header = np.zeros(HEADER_INTS, dtype="<i4")
    header[0], header[1], header[2] = MAGIC, VERSION, body.size
    with atomic_open(path, "wb") as f:
        f.write(header.tobytes())
        f.write(memoryview(body).cast("B"))
    return path


def read_header(path: str | Path) -> int:
    """Validate the header and the file size of a shard; return its token count."""
    path = Path(path)
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise ShardError(f"{path}: shard file does not exist") from None
    if size < HEADER_BYTES:
        raise ShardError(f"{path}: file is {size} bytes, shorter than the {HEADER_BYTES}-byte shard header")
    header = np.fromfile(path, dtype="<i4", count=HEADER_INTS)
    if int(header[0]) != MAGIC:
        raise ShardError(f"{path}: bad magic {int(header[0])} in header[0], expected {MAGIC}")
    if int(header[1]) != VERSION:
        raise ShardError(f"{path}: unsupported shard version {int(header[1])} in header[1], expected {VERSION}")
    n = int(header[2])
    if n < 0:
        raise ShardError(f"{path}: negative token count {n} in header[2]")
    expected = HEADER_BYTES + 2 * n
    if size != expected:
        raise ShardError(
            f"{path}: file size {size} bytes does not match header token count {n} "
            f"(expected {expected} = {HEADER_BYTES} + 2*{n}); truncated or corrupt"
        )
    return n


def read_shard(path: str | Path, *, vocab_size: int | None = None, mmap: bool = True) -> np.ndarray:
    """Tokens of one shard as a uint16 array (read-only memmap when `mmap`), after validating it.

    Checks magic, version, ``file size == 1024 + 2*n`` and, when `vocab_size` is given, that every
    token is below it. Raises `ShardError` naming the file and the problem.
    """
    path = Path(path)
    n = read_header(path)
    if n == 0:
        tokens = np.zeros(0, dtype=np.uint16)
    elif mmap:
        tokens = np.memmap(path, dtype="<u2", mode="r", offset=HEADER_BYTES, shape=(n,))
    else:
        tokens = np.fromfile(path, dtype="<u2", count=n, offset=HEADER_BYTES)
        if tokens.size != n:
            raise ShardError(f"{path}: short read, got {tokens.size} of {n} tokens")
    if vocab_size is not None and n:
        top = int(tokens.max())
        if top >= vocab_size:
            where = int(np.argmax(tokens >= vocab_size))
            raise ShardError(f"{path}: token id {top} >= vocab_size {vocab_size} (first bad token at index {where})")
    return tokens


def load_tokens(directory: str | Path, split: str, vocab_size: int | None = None) -> np.ndarray:
    """All shards of `split` concatenated in name order (a fresh in-memory uint16 array)."""
    files = list_shards(directory, split)
    if not files:
        raise FileNotFoundError(f"no fineweb_{split}_*.bin shards in {directory}")
    parts = [read_shard(f, vocab_size=vocab_size) for f in files]
    return np.concatenate(parts) if len(parts) > 1 else np.array(parts[0], dtype=np.uint16)


def describe_shards(directory: str | Path, split: str, *, with_sha256: bool = True) -> list[dict[str, Any]]:
    """``[{"name", "tokens", "sha256"}]`` for every shard of `split` (what manifests record)."""
    out = []
    for f in list_shards(directory, split):
        entry: dict[str, Any] = {"name": f.name, "tokens": read_header(f)}
        if with_sha256:
            entry["sha256"] = sha256_file(f)
        out.append(entry)
    return out


class ShardWriter:
    """Pack documents end to end into ``fineweb_<split>_NNNNNN.bin`` files of `shard_tokens` tokens.

    As in the official exporter, a document may straddle two shards and only the last shard is short.
    With ``clear=True`` (default) stale shards of this split in `directory` are deleted first, so the
    folder never mixes two builds. Use as a context manager: on an exception the partial last shard
    is dropped (the files already written stay; manifests, written last, are what mark a build done).

        with ShardWriter(out, "train", shard_tokens=10**8) as w:
            for ids in docs:
                w.add_doc(ids)          # writes [BOS] + ids
    """

    def __init__(self, directory: str | Path, split: str, shard_tokens: int = DEFAULT_SHARD_TOKENS, *,
                 bos_id: int = 1, vocab_size: int | None = None, clear: bool = True):
        _check_split(split)
        if shard_tokens <= 0 or shard_tokens >= 2**31:
            raise ValueError(f"shard_tokens must be in [1, 2**31), got {shard_tokens}")
        self.directory = Path(directory)
        self.split = split
        self.shard_tokens = int(shard_tokens)
        self.bos_id = int(bos_id)
        self.vocab_size = vocab_size
        self.directory.mkdir(parents=True, exist_ok=True)
        if clear:
            for stale in list_shards(self.directory, split):
                stale.unlink()
        # np.empty only reserves address space; pages are committed as they are filled.
        self._buf = np.empty(self.shard_tokens, dtype=np.uint16)
        self._fill = 0
        self.paths: list[Path] = []
        self.num_docs = 0
        self.num_tokens = 0
        self._closed = False

    def add_doc(self, ids: Iterable[int] | np.ndarray) -> None:
        """Append one document as ``[BOS] + ids``."""
        arr = np.asarray(ids if isinstance(ids, np.ndarray) else list(ids), dtype=np.int64)
        doc = np.empty(arr.size + 1, dtype=np.int64)
        doc[0] = self.bos_id
        doc[1:] = arr
        self.add(doc)

    def add(self, tokens: np.ndarray | list[int]) -> None:
        """Append tokens exactly as given (the caller already put BOS in front)."""
        if self._closed:
            raise RuntimeError("ShardWriter is closed")
        arr = np.asarray(tokens)
        if arr.size:
            lo, hi = int(arr.min()), int(arr.max())
            limit = self.vocab_size if self.vocab_size is not None else 2**16
            if lo < 0 or hi >= limit:
                bad = lo if lo < 0 else hi
                raise ValueError(f"token id {bad} outside [0, {limit}) for {self.directory}/fineweb_{self.split}_*")
        arr = arr.astype(np.uint16, copy=False)
        self.num_docs += 1
        self.num_tokens += arr.size
        pos = 0
        while pos < arr.size:
            take = min(self.shard_tokens - self._fill, arr.size - pos)
            self._buf[self._fill: self._fill + take] = arr[pos: pos + take]
            self._fill += take
            pos += take
            if self._fill == self.shard_tokens:
                self._flush()

    def _flush(self) -> None:
        if self._fill == 0:
            return
        path = shard_path(self.directory, self.split, len(self.paths))
        write_shard(path, self._buf[: self._fill])
        self.paths.append(path)
        self._fill = 0

    def close(self) -> list[Path]:
        """Write the last (short) shard and return every shard path written."""
        if not self._closed:
            self._flush()
            self._closed = True
            self._buf = np.empty(0, dtype=np.uint16)
        return self.paths

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self._closed = True


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")


__all__ = [
    "MAGIC", "VERSION", "HEADER_BYTES", "DEFAULT_SHARD_TOKENS", "ShardError", "ShardWriter", "describe_shards",
    "list_shards", "load_tokens", "read_header", "read_shard", "shard_path", "write_shard",
]
