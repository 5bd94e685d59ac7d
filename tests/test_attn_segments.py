"""Segment offsets for the varlen / fa3 / fa4 backends: document ids, masks, cu_seqlens and their padding to one
length per batch shape, the bound over a stream, and varlen's CPU reference mask."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_attention import BOS, tokens
from torch import Tensor

from pgolf.model.attn_backends import (
    _row_segment_mask,
    cu_seqlens,
    doc_causal_mask,
    doc_ids,
    padded_cu_seqlens,
    segment_bound,
)


def test_doc_ids_mask_and_cu_seqlens():
    ids = torch.tensor([[5, 1, 7, 8, 1, 9], [1, 3, 4, 5, 6, 1]])
    assert doc_ids(ids, BOS).tolist() == [[0, 1, 1, 1, 2, 2], [1, 1, 1, 1, 1, 2]]  # BOS opens its own doc
    mask = doc_causal_mask(ids, BOS)[0, 0]
    assert mask[3].tolist() == [False, True, True, True, False, False]
    assert mask[4].tolist() == [False, False, False, False, True, False]
    assert cu_seqlens(ids, BOS).tolist() == [0, 1, 4, 6, 11, 12]  # row starts count as segment starts


def ids_with_offsets(rows: int, seq_len: int, offsets: int, bos_id: int, device: torch.device | str = "cpu") -> Tensor:
    """(rows, seq_len) token ids, BOS where needed and a filler id elsewhere, whose doc-isolated cu_seqlens has
    exactly `offsets` entries (rows + BOS tokens off the row starts + 1)."""
    slots = rows * (seq_len - 1)  # positions that are not a row start
    extra = offsets - 1 - rows
    if not 0 <= extra <= slots:
        raise ValueError(f"cannot build {offsets} cu_seqlens offsets from {rows} rows of {seq_len} tokens "
                         f"(between {rows + 1} and {rows + 1 + slots})")
    ids = torch.full((rows, seq_len), 0 if bos_id != 0 else 1, dtype=torch.int64, device=device)
    pick = torch.arange(extra, device=device) * slots // max(extra, 1)  # spread over the batch, all distinct
    ids[pick // (seq_len - 1), pick % (seq_len - 1) + 1] = bos_id
    return ids


def test_padded_cu_seqlens_buckets_and_priming_inputs():
    ids = torch.tensor([[5, 1, 7, 8, 1, 9], [1, 3, 4, 5, 6, 1]])
    assert padded_cu_seqlens(ids, BOS, True, bucket=4).tolist() == [0, 1, 4, 6, 11, 12, 12, 12]
    assert padded_cu_seqlens(ids, BOS, False, bucket=4).tolist() == [0, 6, 12, 12]
    assert padded_cu_seqlens(ids_with_offsets(2, 6, 9, BOS), BOS, True, bucket=4).numel() == 16  # 4 * 2^k
    assert padded_cu_seqlens(ids, BOS, True, bucket=4, size=16).numel() == 16  # padded to the length fixed per shape
    # 9 offsets under a primed 12 (a multiple of the bucket, not 4 * 2^k) stay at 12: rounding them to 16 compiled
    # a graph on the clock (the 44 s step of fa4 + CUDA graphs on 2 H200, 257..384 offsets padded to 512, not 384)
    assert padded_cu_seqlens(ids_with_offsets(2, 6, 9, BOS), BOS, True, bucket=4, size=12).numel() == 12
    with pytest.warns(RuntimeWarning, match="more than the 4 primed"):
        assert padded_cu_seqlens(ids, BOS, True, bucket=4, size=4).numel() == 8  # outgrown: the next bucket
    for n in (3, 5, 8, 13):  # a synthetic batch with exactly n offsets, what the loop primes a bucket with
        assert cu_seqlens(ids_with_offsets(2, 6, n, BOS), BOS).numel() == n
    with pytest.raises(ValueError, match="cannot build 14 cu_seqlens offsets from 2 rows of 6 tokens"):
        ids_with_offsets(2, 6, 14, BOS)


def test_segment_bound_fits_every_window_of_the_stream():
    g = np.random.default_rng(0)
    stream = np.where(g.random(5000) < 0.05, BOS, 7).astype(np.uint16)
    stream[2000:2100:2] = BOS  # a dense patch: the worst window holds it
    rows, L = 4, 32
    bound = segment_bound(stream, rows=rows, seq_len=L, bos_id=BOS, doc_isolated=True, bucket=8)
    most = 0
    for start in range(len(stream) - rows * L):
        ids = torch.from_numpy(stream[start:start + rows * L].astype(np.int64)).view(rows, L)
        most = max(most, cu_seqlens(ids, BOS).numel())
        assert padded_cu_seqlens(ids, BOS, True, bucket=8, size=bound).numel() == bound  # one length, one graph
        assert padded_cu_seqlens(ids, BOS, True, bucket=12, size=72).numel() == 72  # 72 is not 12 * 2^k
    assert bound == -(-most // 8) * 8 and bound >= most  # the tightest multiple of 8
    hi = segment_bound(stream, rows=rows, seq_len=L, bos_id=BOS, doc_isolated=True, bucket=1)
    assert most <= hi == 61  # rows + 1 offsets and the most BOS tokens of any window, before rounding
    assert segment_bound(stream, rows=rows, seq_len=L, bos_id=BOS, doc_isolated=True, bucket=12) == 72  # not 12*2^3
    assert segment_bound(stream, rows=rows, seq_len=L, bos_id=BOS, doc_isolated=False, bucket=8) == 8


def test_varlen_cpu_reference_masks_row_by_row():
    """The CPU reference of varlen builds one (T, T) mask per row, equal to the BOS-derived document mask, so an
    evaluation batch of 256 x 2048 costs a GiB, not the TiB of one (B*T)² mask; offsets whose segments span rows
    are refused."""
    x = tokens(bos_at=(0, 7, 15))
    x[1] = tokens(batch=1, seed=5, bos_at=(0, 4))[0]
    B, T = x.shape
    cu = padded_cu_seqlens(x, BOS, doc_isolated=True, size=16)
    mask = _row_segment_mask(cu, B, T)
    assert mask.shape == (B, 1, T, T)
    assert torch.equal(mask, doc_causal_mask(x, BOS))
    with pytest.raises(ValueError, match="every row start"):
        _row_segment_mask(torch.tensor([0, 3, B * T], dtype=torch.int32), B, T)


def test_train_segment_bound_covers_every_shard(tmp_path):
    from pgolf.data.shards import read_shard, write_shard
    from pgolf.train.loop import train_segment_bound

    g = np.random.default_rng(1)
    sparse = np.where(g.random(4000) < 0.02, BOS, 7).astype(np.uint16)
    dense = sparse.copy()
    dense[1000:1200:2] = BOS  # only the second shard holds the densest window
    files = [write_shard(tmp_path / "fineweb_train_000000.bin", sparse),
             write_shard(tmp_path / "fineweb_train_000001.bin", dense)]
    kw = {"rows": 4, "seq_len": 32, "bos_id": BOS, "doc_isolated": True}
    first, second = (segment_bound(read_shard(f), **kw) for f in files)
    assert first < second
    assert train_segment_bound(files, **kw) == second  # the first shard alone would pad the dense window past it


def test_each_rank_scans_its_share_of_the_shards_and_the_ranks_take_the_max(tmp_path):
    from types import SimpleNamespace

    from pgolf.config import ModelConfig
    from pgolf.data.shards import write_shard
    from pgolf.model.gpt import GPT
    from pgolf.train.loop import fix_segment_sizes

    g = np.random.default_rng(2)
    sparse = np.where(g.random(4000) < 0.02, BOS, 7).astype(np.uint16)
    dense = sparse.copy()
    dense[1000:1200:2] = BOS
    files = [write_shard(tmp_path / f"fineweb_train_00000{i}.bin", t) for i, t in enumerate((sparse, dense))]
    kw = {"rows": 4, "seq_len": 32, "bos_id": BOS, "doc_isolated": True}
    first, second = (segment_bound(t, **kw) for t in (sparse, dense))
    seen = []

    class TwoRanks:  # rank 0 of 2; the other rank, which scanned the dense shard, reports its bound
        rank, world_size = 0, 2

        def max_int(self, value: int) -> int:
            seen.append(value)
            return max(value, second)

    model = GPT(ModelConfig(vocab_size=16, num_layers=1, model_dim=16, num_heads=2, num_kv_heads=1,
                            attn_backend="varlen", doc_isolated=True, bos_id=BOS))
    data = SimpleNamespace(train_files=files, val_tokens=sparse)
    tc = SimpleNamespace(micro_batch_tokens=4 * 32, seq_len=32)
    assert fix_segment_sizes(model, data, tc, [], TwoRanks()) == {(4, 32): second}
    assert seen == [first]  # rank 0 scanned only the first shard
    assert fix_segment_sizes(model, data, tc, []) == {(4, 32): second}  # one process scans both
