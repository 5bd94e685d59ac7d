"""Official shard format: round trip, exact bytes, corrupt files, and the rolling writer."""

from __future__ import annotations

import re
import struct

import numpy as np
import pytest

from pgolf.data.shards import (
    HEADER_BYTES, MAGIC, ShardError, ShardWriter, describe_shards, list_shards, load_tokens, read_header, read_shard,
    shard_path, write_shard,
)


def test_round_trip_and_exact_layout(tmp_path):
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, 65536, size=12345, dtype=np.int64)
    path = write_shard(tmp_path / "fineweb_train_000000.bin", tokens)
    raw = path.read_bytes()
    assert len(raw) == 1024 + 2 * tokens.size
    header = struct.unpack("<256i", raw[:1024])
    assert header[:3] == (20240520, 1, 12345) and not any(header[3:])
    assert struct.unpack("<3H", raw[1024:1030]) == tuple(int(t) for t in tokens[:3])
    for mmap in (True, False):
        got = read_shard(path, mmap=mmap, vocab_size=65536)
        assert got.dtype == np.uint16 and got.shape == (12345,)
        np.testing.assert_array_equal(got.astype(np.int64), tokens)
    assert read_header(path) == 12345
    assert not list(tmp_path.glob("*.tmp-*"))


def test_empty_shard(tmp_path):
    path = write_shard(tmp_path / "fineweb_val_000000.bin", [])
    assert path.stat().st_size == HEADER_BYTES
    assert read_shard(path).size == 0


def test_write_rejects_out_of_range(tmp_path):
    for bad in ([1, -1], [70000]):
        with pytest.raises(ValueError, match="uint16"):
            write_shard(tmp_path / "x.bin", np.array(bad))
    assert not (tmp_path / "x.bin").exists()


def test_names_listing_and_concatenation(tmp_path):
    assert shard_path(tmp_path, "val", 7).name == "fineweb_val_000007.bin"
    with pytest.raises(ValueError, match="split"):
        shard_path(tmp_path, "test", 0)
    write_shard(shard_path(tmp_path, "val", 1), [5, 6])
    write_shard(shard_path(tmp_path, "val", 0), [1, 2, 3])
    write_shard(tmp_path / "fineweb_val_bytes_000000.bin", [9, 9, 9])  # CaseOps sidecar: not tokens
    write_shard(shard_path(tmp_path, "train", 0), [4])
    (tmp_path / "fineweb_val_000002.bin.tmp-123").write_bytes(b"partial")
    assert [p.name for p in list_shards(tmp_path, "val")] == ["fineweb_val_000000.bin", "fineweb_val_000001.bin"]
    assert load_tokens(tmp_path, "val").tolist() == [1, 2, 3, 5, 6]
    assert [d["tokens"] for d in describe_shards(tmp_path, "val")] == [3, 2]
    with pytest.raises(FileNotFoundError, match="fineweb_train"):
        load_tokens(tmp_path / "nothing", "train")


def _corrupt(tmp_path, name, edit):
    path = write_shard(tmp_path / name, np.arange(100) % 50)
    raw = bytearray(path.read_bytes())
    raw = edit(raw)
    path.write_bytes(bytes(raw))
    return path


@pytest.mark.parametrize("edit,message", [
    (lambda b: struct.pack("<i", 1234) + b[4:], "bad magic 1234"),
    (lambda b: b[:4] + struct.pack("<i", 2) + b[8:], "unsupported shard version 2"),
    (lambda b: b[:-10], "does not match header token count 100"),
    (lambda b: b + b"\0\0", "does not match header token count 100"),
    (lambda b: b[:500], "shorter than the 1024-byte shard header"),
    (lambda b: b[:8] + struct.pack("<i", -5) + b[12:], "negative token count"),
])
def test_corrupt_shards_name_file_and_problem(tmp_path, edit, message):
    path = _corrupt(tmp_path, "fineweb_train_000003.bin", edit)
    with pytest.raises(ShardError, match=re.escape(str(path)) + ".*" + re.escape(message)):
        read_shard(path)


def test_token_beyond_vocab(tmp_path):
    path = write_shard(tmp_path / "fineweb_val_000000.bin", [1, 5, 1023, 1024, 7])
    assert read_shard(path, vocab_size=1025).size == 5
    with pytest.raises(ShardError, match=re.escape(str(path)) + ".*token id 1024 >= vocab_size 1024.*index 3"):
        read_shard(path, vocab_size=1024)
    with pytest.raises(ShardError, match="does not exist"):
        read_shard(tmp_path / "missing.bin")


def test_magic_constant_is_official():
    assert MAGIC == 20240520


def test_writer_rolls_and_packs_docs(tmp_path):
    write_shard(shard_path(tmp_path, "train", 9), [1, 2])  # stale shard from an older build
    docs = [np.arange(2, 2 + n) for n in (3, 0, 11, 4, 7)]
    with ShardWriter(tmp_path, "train", shard_tokens=8) as w:
        for d in docs:
            w.add_doc(d)
    expected = np.concatenate([np.concatenate([[1], d]) for d in docs])
    files = list_shards(tmp_path, "train")
    assert [p.name for p in files] == [f"fineweb_train_{i:06d}.bin" for i in range(4)]  # 30 tokens -> 8,8,8,6
    assert [read_header(p) for p in files] == [8, 8, 8, 6]
    np.testing.assert_array_equal(load_tokens(tmp_path, "train"), expected)
    assert w.num_docs == 5 and w.num_tokens == 30


def test_writer_drops_partial_shard_on_error(tmp_path):
    with pytest.raises(RuntimeError):
        with ShardWriter(tmp_path, "val", shard_tokens=5) as w:
            w.add([1, 2, 3, 4, 5, 6, 7])
            raise RuntimeError("killed")
    assert [read_header(p) for p in list_shards(tmp_path, "val")] == [5]
    with pytest.raises(ValueError, match="outside"):
        ShardWriter(tmp_path, "val", vocab_size=10).add([1, 10])
