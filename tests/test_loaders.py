"""Coprime-stride and document-packing loaders (issue 5): determinism, no repetition within an epoch, coverage,
W x A invariance, resume, record batch geometry, and `build_loader`.

    .venv/bin/python -m pytest tests/test_loaders.py -q
"""

from __future__ import annotations

import math
import types

import numpy as np
import pytest
import torch

from pgolf.config import TrainConfig
from conftest import position_shards
from pgolf.data.loader import TokenLoader
from pgolf.data.loaders_common import build_loader
from pgolf.data.loaders_coprime import CoprimeLoader
from pgolf.data.loaders_docpack import DocPackLoader
from pgolf.data.shards import shard_path, write_shard

SIZES = (3001, 2000, 4500, 1200, 40)  # the last shard is too small for a window of 65 tokens
SEQ = 64


@pytest.fixture()
def pos_shards(tmp_path):
    return position_shards(tmp_path, SIZES)


def _offsets():
    return np.cumsum((0,) + SIZES[:-1])


def _drain(loader, calls, micro=SEQ * 2, seq=SEQ):
    return [loader.next_batch(micro, seq) for _ in range(calls)]


# ----------------------------------------------------------------------------------------------
# Coprime-stride loader


def test_coprime_epoch_visits_every_block_once(pos_shards):
    ld = CoprimeLoader(pos_shards, seed=3, seq_len=SEQ, round_windows=6)
    blocks = ld.epoch_blocks
    assert blocks == sum(int(ld.blocks[i]) for i in range(4)) and ld.blocks[4] == 0  # tiny shard ineligible
    # every stride is a unit mod its block count: the k-th windows, k < B, are a permutation of the blocks
    for si in range(4):
        b = int(ld.blocks[si])
        assert math.gcd(int(ld.stride[si]), b) == 1
        starts = sorted(ld.window_start(si, k) for k in range(b))
        assert starts == [int(ld.phase[si]) + j * SEQ for j in range(b)]
    firsts = []
    for _ in range(blocks):  # one window per call
        x, y = ld.next_batch(SEQ, SEQ)
        assert x.shape == (1, SEQ) and torch.equal(x[0, 1:], y[0, :-1])
        assert torch.equal(y[0], x[0] + 1)  # contiguous: never crosses a shard boundary
        firsts.append(int(x[0, 0]))
    assert ld.epoch == 0 and len(set(firsts)) == blocks  # no repetition within the epoch
    offs = _offsets()
    for si in range(4):
        mine = sorted(f - offs[si] for f in firsts if offs[si] <= f < offs[si] + SIZES[si])
        assert mine == [int(ld.phase[si]) + j * SEQ for j in range(int(ld.blocks[si]))]  # full coverage
    ld.next_batch(SEQ, SEQ)
    assert ld.epoch == 1  # only now does a new epoch start


def test_coprime_batches_mix_shards_and_follow_remaining_weights(pos_shards):
    ld = CoprimeLoader(pos_shards, seed=0, seq_len=SEQ, round_windows=8)
    x, _ = ld.next_batch(8 * SEQ, SEQ)
    shard_of = np.searchsorted(_offsets(), x[:, 0].numpy(), side="right") - 1
    assert len(set(shard_of.tolist())) >= 3  # 4 live shards, mix min(8, 4) = 4, 1 + multinomial each
    # Over many seeds the first round favours the biggest shard (remaining^0.9 weights).
    counts = np.zeros(4)
    for seed in range(40):
        x, _ = CoprimeLoader(pos_shards, seed=seed, seq_len=SEQ, round_windows=8).next_batch(8 * SEQ, SEQ)
        counts += np.bincount(np.searchsorted(_offsets(), x[:, 0].numpy(), side="right") - 1, minlength=5)[:4]
    assert counts.argmax() == 2 and counts.argmin() == 3  # 4500-token shard most, 1200 least


def test_coprime_determinism_and_seeds(pos_shards):
    a = _drain(CoprimeLoader(pos_shards, seed=5, seq_len=SEQ, round_windows=6), 12)
    b = _drain(CoprimeLoader(pos_shards, seed=5, seq_len=SEQ, round_windows=6), 12)
    c = _drain(CoprimeLoader(pos_shards, seed=6, seq_len=SEQ, round_windows=6), 12)
    assert all(torch.equal(p[0], q[0]) for p, q in zip(a, b))
    assert not all(torch.equal(p[0], q[0]) for p, q in zip(a, c))


def test_coprime_world_times_accum_invariance(pos_shards):
    one = CoprimeLoader(pos_shards, seed=1, seq_len=SEQ, round_windows=8)
    ranks = [CoprimeLoader(pos_shards, seed=1, seq_len=SEQ, round_windows=8, rank=r, world_size=2) for r in range(2)]
    for _ in range(60):  # 240 windows: crosses an epoch boundary (~165 windows per epoch)
        a0, a1 = one.next_batch(2 * SEQ, SEQ)[0], one.next_batch(2 * SEQ, SEQ)[0]
        b0, b1 = ranks[0].next_batch(2 * SEQ, SEQ)[0], ranks[1].next_batch(2 * SEQ, SEQ)[0]
        assert torch.equal(a0, b0) and torch.equal(a1, b1)
    assert one.epochs == ranks[0].epochs == ranks[1].epochs and one.epoch >= 1


def test_coprime_resume_is_bit_exact(pos_shards):
    ld = CoprimeLoader(pos_shards, seed=2, seq_len=SEQ, round_windows=7)
    _drain(ld, 5)  # rounds of 7, calls of 2: the pending buffer is non-empty
    assert len(ld.pending) > 0
    state = ld.state_dict()
    ref = _drain(ld, 40)
    ld2 = CoprimeLoader(pos_shards, seed=99, seq_len=SEQ, round_windows=7)
    ld2.load_state_dict(state)
    assert all(torch.equal(p[0], q[0]) for p, q in zip(ref, _drain(ld2, 40)))
    _drain(ld2, 1)
    ld2.load_state_dict(state)  # the state is a snapshot, not a live view
    assert torch.equal(ld2.next_batch(2 * SEQ, SEQ)[0], ref[0][0])
    with pytest.raises(ValueError, match="round_windows"):
        CoprimeLoader(pos_shards, seed=2, seq_len=SEQ, round_windows=8).load_state_dict(state)
    with pytest.raises(ValueError, match="'stream'"):
        ld2.load_state_dict(TokenLoader(pos_shards).state_dict())
    with pytest.raises(ValueError, match="seq_len=64"):
        ld2.next_batch(4 * 32, 32)


# ----------------------------------------------------------------------------------------------
# Document-packing loader

BOS = 1


@pytest.fixture()
def doc_shards(tmp_path):
    """3 shards of documents [BOS, t...]; shard 0 starts inside a document (no BOS at index 0).
    Non-BOS tokens are distinct (2.. up), so every read token identifies its position."""
    rng = np.random.default_rng(0)
    nxt, files, docs = 2, [], []
    for i, n_docs in enumerate((30, 20, 25)):
        parts = [np.arange(nxt, nxt + 7)] if i == 0 else []  # leading partial doc
        nxt += 7 if i == 0 else 0
        for _ in range(n_docs):
            L = int(rng.integers(5, 60))
            parts.append(np.concatenate(([BOS], np.arange(nxt, nxt + L))))
            nxt += L
        arr = np.concatenate(parts)
        docs.append(arr)
        files.append(write_shard(shard_path(tmp_path, "train", i), arr))
    return files, docs


def test_docpack_seed0_is_file_order_from_the_first_bos(doc_shards):
    files, docs = doc_shards
    ld = DocPackLoader(files, seed=0, bos_id=BOS)
    micro = 32
    S = micro + 1
    cursor, shard, expected = 7, 0, []  # shard 0's first BOS is at index 7
    for _ in range(120):  # ~2,500 tokens in all: wraps into epoch 1
        if cursor + S > len(docs[shard]):  # tail skipped, next shard from its first BOS
            shard = (shard + 1) % 3
            cursor = 7 if shard == 0 else 0
        expected.append(docs[shard][cursor:cursor + S])
        cursor += S
    for want in expected:
        x, y = ld.next_batch(micro, 16)
        assert x.shape == (2, 16)
        assert np.array_equal(x.flatten().numpy(), want[:-1]) and np.array_equal(y.flatten().numpy(), want[1:])
    assert ld.epoch >= 1
    first = DocPackLoader(files, seed=0, bos_id=BOS).next_batch(micro, 16)[0]
    assert first[0, 0].item() == BOS


def test_docpack_no_repetition_within_an_epoch_and_seeded_order(doc_shards):
    files, docs = doc_shards
    assert DocPackLoader(files, seed=0, bos_id=BOS).shard_order(5) == [0, 1, 2]  # seed 0: file order, always
    ld = DocPackLoader(files, seed=11, bos_id=BOS)
    orders = [ld.shard_order(e) for e in range(6)]
    assert all(sorted(o) == [0, 1, 2] for o in orders) and len({tuple(o) for o in orders}) > 1
    assert orders == [DocPackLoader(files, seed=11, bos_id=BOS).shard_order(e) for e in range(6)]
    seen = []
    while True:
        x, y = ld.next_batch(16, 16)
        if ld.epoch > 0:  # this call already read from epoch 1
            break
        seen.append(np.concatenate((x.flatten().numpy(), y[:, -1].numpy())))  # the whole span of 17 tokens
    tokens = np.concatenate(seen)
    non_bos = tokens[tokens != BOS]
    assert len(np.unique(non_bos)) == len(non_bos)  # every token read at most once in the epoch
    assert len(non_bos) > 0.9 * sum(int((d != BOS).sum()) for d in docs)  # only shard tails are skipped


def test_docpack_world_times_accum_and_resume(doc_shards):
    files, _ = doc_shards
    one = DocPackLoader(files, seed=4, bos_id=BOS)
    ranks = [DocPackLoader(files, seed=4, bos_id=BOS, rank=r, world_size=2) for r in range(2)]
    # 8 calls of 17 tokens on 1 rank read the same tokens as 4 calls of 2 x 17 on 2 ranks (no shard end reached)
    a = np.concatenate([one.next_batch(16, 16)[0].flatten().numpy() for _ in range(8)])
    b = np.concatenate([np.concatenate((ranks[0].next_batch(16, 16)[0].flatten().numpy(),
                                        ranks[1].next_batch(16, 16)[0].flatten().numpy())) for _ in range(4)])
    assert np.array_equal(a, b)
    state = ranks[1].state_dict()
    ref = [ranks[1].next_batch(16, 16)[0] for _ in range(20)]
    fresh = DocPackLoader(files, seed=0, bos_id=BOS, rank=1, world_size=2)
    fresh.load_state_dict(state)
    assert all(torch.equal(r, fresh.next_batch(16, 16)[0]) for r in ref)
    with pytest.raises(ValueError, match="bos_id"):
        DocPackLoader(files, bos_id=2).load_state_dict(state)


def test_docpack_errors(doc_shards):
    files, _ = doc_shards
    with pytest.raises(ValueError, match="no train shard has"):
        DocPackLoader(files, bos_id=BOS).next_batch(4096, 16)
    with pytest.raises(ValueError, match="no train shard has"):
        DocPackLoader(files, bos_id=7777).next_batch(16, 16)  # no BOS anywhere


# ----------------------------------------------------------------------------------------------
# Record geometry (seq 2048, 98,304-token micro-batches) and selection by train.loader


def test_record_geometry_2048_by_98304(tmp_path):
    rng = np.random.default_rng(0)
    files = []
    for i in range(3):
        arr = rng.integers(2, 8192, 120_000).astype(np.uint16)
        arr[:: 3000] = BOS
        files.append(write_shard(shard_path(tmp_path, "train", i), arr))
    tc = TrainConfig(seq_len=2048, batch_tokens=786_432, micro_batch_tokens=98_304)
    for ld in (CoprimeLoader(files, seed=1, seq_len=2048, round_windows=tc.batch_tokens // tc.seq_len),
               DocPackLoader(files, seed=1, bos_id=BOS), TokenLoader(files, seed=1)):
        x, y = ld.next_batch(tc.micro_batch_tokens, tc.seq_len)
        assert x.shape == y.shape == (48, 2048) and x.dtype == torch.int64
        assert torch.equal(x[:, 1:], y[:, :-1])


def test_build_loader_selects_by_train_loader(pos_shards):
    data = types.SimpleNamespace(train_files=pos_shards, tokenizer=types.SimpleNamespace(bos_id=1), path="x")
    kinds = {"stream": TokenLoader, "coprime": CoprimeLoader, "docpack": DocPackLoader}
    for kind, cls in kinds.items():
        tc = TrainConfig(loader=kind, seq_len=SEQ, batch_tokens=8 * SEQ, micro_batch_tokens=2 * SEQ, seed=5)
        ld = build_loader(tc, data, rank=1, world_size=2)
        assert type(ld) is cls and ld.rank == 1 and ld.world_size == 2
    ld = build_loader(TrainConfig(loader="coprime", seq_len=SEQ, batch_tokens=8 * SEQ, micro_batch_tokens=2 * SEQ),
                      data)
    assert ld.round_windows == 8 and ld.seq_len == SEQ
    # "stream" is exactly the baseline loader
    base = TokenLoader(pos_shards, seed=5)
    sel = build_loader(TrainConfig(seq_len=SEQ, batch_tokens=8 * SEQ, micro_batch_tokens=2 * SEQ, seed=5), data)
    assert all(torch.equal(base.next_batch(128, SEQ)[0], sel.next_batch(128, SEQ)[0]) for _ in range(5))
    with pytest.raises(ValueError, match="BOS"):
        build_loader(TrainConfig(loader="docpack", seq_len=SEQ, batch_tokens=8 * SEQ, micro_batch_tokens=2 * SEQ),
                     types.SimpleNamespace(train_files=pos_shards, tokenizer=None, path="x"))


@pytest.mark.parametrize("kind", ["stream", "coprime", "docpack"])
def test_what_the_micro_batch_split_changes_in_a_steps_tokens(kind, doc_shards):
    """train.micro_batch_tokens is a speed knob (issue 5: 6 x 64 x 2048 fills the GPU better than the record's
    8 x 48 x 2048 at the same 786,432-token step). The coprime loader reads whole windows, so any split reads the
    same rows. The stream and docpack loaders read micro_tokens + 1 tokens per call (the last is only a target), as
    TOP's do, so each extra micro-batch shifts the rest of the stream by one token: 2 calls of 4 rows and 4 of 2 rows
    agree on the first 2 rows, then differ by exactly that shift."""
    files, _ = doc_shards
    data = types.SimpleNamespace(train_files=files, tokenizer=types.SimpleNamespace(bos_id=BOS), path="x")

    def first_step(rows_per_micro: int) -> torch.Tensor:
        tc = TrainConfig(loader=kind, seq_len=SEQ, batch_tokens=8 * SEQ, micro_batch_tokens=rows_per_micro * SEQ,
                         seed=3)
        ld = build_loader(tc, data)
        return torch.cat([ld.next_batch(tc.micro_batch_tokens, SEQ)[0] for _ in range(tc.grad_accum(1))]).flatten()

    two, four = first_step(2), first_step(4)
    if kind == "coprime":
        assert torch.equal(two, four)
    else:
        assert torch.equal(two[:2 * SEQ], four[:2 * SEQ]) and not torch.equal(two, four)
        assert torch.equal(two[2 * SEQ:4 * SEQ - 1], four[2 * SEQ + 1:4 * SEQ])  # the skipped target token
