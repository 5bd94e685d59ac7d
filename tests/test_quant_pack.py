"""Bit packing, byte shuffle, codec specs and the per-group compressor: `pytest tests/test_quant_pack.py -q`."""

from __future__ import annotations

import os

import pytest
import torch

from pgolf.export.artifact import pack_state
from pgolf.quant.codecs import CODECS, compress, decompress, parse_spec
from pgolf.quant.pack import (
    byte_shuffle,
    byte_unshuffle,
    pack_bits,
    transpose_bytes,
    unpack_bits,
    untranspose_bytes,
)
from pgolf.quant.pergroup import (
    PergroupError,
    compress_pergroup,
    decompress_pergroup,
    group_segments,
    read_header,
    split_groups,
    tensor_role,
)
from pgolf.quant.rowwise import RowSpec, pack_qtensor, quantize_rowwise
from pgolf.quant.state import QuantizedState, keep_float, passthrough


@pytest.mark.parametrize("bits", range(1, 9))
def test_pack_bits_round_trip(bits):
    g = torch.Generator().manual_seed(bits)
    for n in (0, 1, 7, 8, 9, 1001):
        v = torch.randint(0, 1 << bits, (n,), generator=g, dtype=torch.int64)
        p = pack_bits(v, bits)
        assert p.dtype == torch.uint8 and p.numel() == (n * bits + 7) // 8
        assert torch.equal(unpack_bits(p, bits, n).to(torch.int64), v)


def test_pack_bits_known_bytes_and_errors():
    # 6-bit values 1, 2, 3, 63 -> bits 000001 000010 000011 111111 -> 0x04 0x20 0xFF
    assert pack_bits(torch.tensor([1, 2, 3, 63]), 6).tolist() == [0x04, 0x20, 0xFF]
    with pytest.raises(ValueError, match=r"\[0, 32\)"):
        pack_bits(torch.tensor([0, 32]), 5)
    with pytest.raises(ValueError, match="bits"):
        pack_bits(torch.tensor([0]), 9)
    with pytest.raises(ValueError, match="cannot hold"):
        unpack_bits(torch.zeros(3, dtype=torch.uint8), 6, 5)


def test_byte_shuffle_round_trip():
    rnd = os.urandom(1001)
    for stride in range(1, 6):
        for n in (0, 1, 2, 3, 17, 1001):
            data = rnd[:n]
            sh = byte_shuffle(data, stride)
            assert len(sh) == n and byte_unshuffle(sh, stride) == data
    assert byte_shuffle(b"abcdefg", 2) == b"acegbdf"
    assert transpose_bytes(b"abcdef", 2, 3) == b"adbecf"
    assert untranspose_bytes(transpose_bytes(rnd[:12], 3, 4), 3, 4) == rnd[:12]


def _qs() -> QuantizedState:
    g = torch.Generator().manual_seed(0)
    qs = QuantizedState(scheme="mixed")
    spec = RowSpec(bits=6, clip="sdclip", k=6.0)
    qs.tensors["tok_emb.weight"] = quantize_rowwise(torch.randn(64, 32, generator=g), spec)
    for i in range(2):
        for m in ("attn.c_q", "attn.c_k", "attn.c_v", "attn.proj", "mlp.fc", "mlp.proj"):
            qs.tensors[f"blocks.{i}.{m}.weight"] = quantize_rowwise(torch.randn(32, 32, generator=g), spec)
        qs.tensors[f"blocks.{i}.attn_scale"] = keep_float(torch.randn(32, generator=g), torch.float32)
    qs.tensors["blocks.0.attn.c_q.weight"] = pack_qtensor(qs.tensors["blocks.0.attn.c_q.weight"])
    qs.tensors["other.weight"] = quantize_rowwise(torch.randn(8, 40, generator=g), RowSpec(bits=8, sym=False))
    qs.tensors["step"] = passthrough(torch.tensor(7))
    qs.tensors["empty"] = keep_float(torch.zeros(0, 4), torch.float16)
    return qs


@pytest.mark.parametrize("spec", [c for c in CODECS] + ["shuf2+brotli", "shuf3+zlib", "shuf2+none"])
def test_codec_specs_round_trip(spec):
    raw, _ = pack_state(_qs())
    for data in (b"", os.urandom(3000), raw):
        blob = compress(data, spec)
        assert decompress(blob, spec) == data
        assert compress(data, spec) == blob


def test_codec_spec_errors():
    assert parse_spec("shuf2+zstd") == (2, "zstd") and parse_spec("lzma") == (0, "lzma")
    with pytest.raises(ValueError, match="'rot13'"):
        compress(b"x", "rot13+zlib")
    with pytest.raises(ValueError, match="'lz4'"):
        compress(b"x", "shuf2+lz4")
    with pytest.raises(ValueError, match="layout"):
        compress(b"x", "pergroup")


def test_pergroup_round_trip_and_layout():
    qs = _qs()
    raw, entries = pack_state(qs)
    groups = group_segments(entries)
    assert set(groups) == {"tok_emb", "attn.c_q", "attn.c_k", "attn.c_v", "attn.proj", "mlp.fc", "mlp.proj",
                           "matrix", "rest"}
    assert len(groups["attn.c_q"]) == 1  # layer 0's c_q is packed: its bytes go to "rest"
    assert all(s[2] == 32 and s[3] == 32 for s in groups["mlp.fc"])  # transposed matrices
    assert sum(s[1] for segs in groups.values() for s in segs) == len(raw)
    blob = compress(raw, "pergroup", layout=entries)
    assert decompress(blob, "pergroup") == raw
    assert compress(raw, "pergroup", layout=entries) == blob  # deterministic
    header, _ = read_header(blob)
    assert header["n"] == len(raw) and [g[0] for g in header["g"]] == list(groups)
    for g in header["g"]:
        assert g[1] in ("zlib", "lzma", "zstd", "brotli") and g[2] in (0, 2)
    only = compress_pergroup(raw, entries, "pergroup:zlib")
    assert {g[1] for g in read_header(only)[0]["g"]} == {"zlib"}
    assert decompress(only, "pergroup:zlib") == raw
    assert len(blob) <= len(only)  # the best codec per group is never worse than one fixed codec
    assert tensor_role("blocks.3.mlp.proj.weight") == "mlp.proj" and tensor_role("lm_head.weight") == "tok_emb"


def test_split_groups_cut_at_matrix_boundaries_into_equal_shares():
    segs = [[i * 100, 100, 10, 10] for i in range(11)]  # 11 matrices of 100 bytes
    out = split_groups({"mlp.fc": segs, "rest": [[1100, 50, 0, 0]]}, 300)
    assert list(out) == ["mlp.fc#0", "mlp.fc#1", "mlp.fc#2", "mlp.fc#3", "rest"]  # ceil(1100 / 300) = 4 parts
    assert [len(v) for k, v in out.items() if k.startswith("mlp")] == [3, 3, 3, 2]
    assert [s for k, v in out.items() if k.startswith("mlp") for s in v] == segs  # order and segments kept
    assert split_groups({"tok_emb": [[0, 5000, 50, 100]]}, 300) == {"tok_emb": [[0, 5000, 50, 100]]}  # one matrix
    assert split_groups({"a": segs}, 0) == {"a": segs} and split_groups({"a": segs}, 5000) == {"a": segs}
    assert [len(v) for v in split_groups({"a": segs}, 1).values()] == [1] * 11  # never more parts than segments


def test_pergroup_split_spec_round_trips_with_more_groups():
    raw, entries = pack_state(_qs())
    whole = compress(raw, "pergroup", layout=entries)
    n = sum(s[1] for s in group_segments(entries)["mlp.fc"])
    spec = f"pergroup@{n // 2}"
    blob = compress(raw, spec, layout=entries)
    names = [g[0] for g in read_header(blob)[0]["g"]]
    assert "mlp.fc#0" in names and "mlp.fc#1" in names and "mlp.fc" not in names
    assert decompress(blob, spec) == raw and decompress(blob, "pergroup") == raw  # the container is self-describing
    assert len(read_header(blob)[0]["g"]) > len(read_header(whole)[0]["g"])
    assert decompress(compress(raw, "pergroup:zlib@64", layout=entries), "pergroup:zlib@64") == raw
    for bad in ("pergroup@", "pergroup@0", "pergroup@x"):
        with pytest.raises(ValueError, match="positive byte count"):
            compress(raw, bad, layout=entries)


def test_pergroup_corruption_is_detected():
    raw, entries = pack_state(_qs())
    blob = compress(raw, "pergroup", layout=entries)
    with pytest.raises(PergroupError, match="magic"):
        decompress_pergroup(b"XXXX" + blob[4:])
    with pytest.raises(PergroupError):
        decompress_pergroup(blob[:-5])
    with pytest.raises(PergroupError, match="trailing"):
        decompress_pergroup(blob + b"\0")
