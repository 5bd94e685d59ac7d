"""TokenLoader: official order at seed 0, rank disjointness, W x A invariance, resume, wrap-around."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import position_shards
from pgolf.data.loader import TokenLoader

SIZES = (1000, 777, 1500)


@pytest.fixture()
def shards(tmp_path):
    return position_shards(tmp_path, SIZES)


STREAM = np.arange(sum(SIZES))


def official_batches(stream: np.ndarray, micro: int, seq: int, world: int, rank: int, calls: int):
    """The official DistributedTokenLoader order, re-derived: each call takes world*(micro+1) tokens."""
    pos, out = 0, []
    for _ in range(calls):
        span = micro + 1
        chunk = np.take(stream, np.arange(pos, pos + world * span), mode="wrap")
        pos += world * span
        local = chunk[rank * span: (rank + 1) * span]
        out.append((local[:-1].reshape(-1, seq), local[1:].reshape(-1, seq)))
    return out


def test_seed0_is_official_order_with_wraparound(shards):
    micro, seq = 256, 64
    ref = official_batches(STREAM, micro, seq, 2, 1, calls=12)  # 12*2*257 > 3277: wraps around
    loader = TokenLoader(shards, rank=1, world_size=2, seed=0)
    for want_x, want_y in ref:
        x, y = loader.next_batch(micro, seq, "cpu")
        assert x.dtype == torch.int64 and x.shape == (4, 64) and y.shape == (4, 64)
        np.testing.assert_array_equal(x.numpy(), want_x)
        np.testing.assert_array_equal(y.numpy(), want_y)
    assert loader.wraps == 1
    assert loader.epochs == pytest.approx(12 * 2 * 257 / sum(SIZES))


def test_ranks_are_disjoint_and_contiguous(shards):
    micro, seq, world = 128, 32, 3
    spans = []
    for r in range(world):
        loader = TokenLoader(shards, rank=r, world_size=world)
        x, y = loader.next_batch(micro, seq)
        span = np.concatenate([x.reshape(-1).numpy(), y.reshape(-1)[-1:].numpy()])
        np.testing.assert_array_equal(np.diff(span), 1)  # contiguous stream positions
        np.testing.assert_array_equal(y.reshape(-1).numpy(), x.reshape(-1).numpy() + 1)
        spans.append(set(span.tolist()))
    assert all(not (spans[a] & spans[b]) for a in range(3) for b in range(a + 1, 3))
    assert set().union(*spans) == set(range(world * (micro + 1)))


def _global_steps(shards, world, accum, steps, micro=96, seq=32, seed=7):
    """Micro-batches of each optimizer step, as the training loop would run them."""
    loaders = [TokenLoader(shards, rank=r, world_size=world, seed=seed) for r in range(world)]
    out = []
    for _ in range(steps):
        step = []
        for _ in range(accum):
            for ld in loaders:
                step.append(tuple(ld.next_batch(micro, seq)[0].reshape(-1).tolist()))
        out.append(step)
    return out


def test_world_times_accum_invariance(shards):
    one_by_two = _global_steps(shards, world=1, accum=2, steps=10)
    two_by_one = _global_steps(shards, world=2, accum=1, steps=10)
    assert one_by_two == two_by_one  # identical spans, not only as a multiset
    four = _global_steps(shards, world=4, accum=1, steps=5)
    assert four == _global_steps(shards, world=2, accum=2, steps=5) == _global_steps(shards, world=1, accum=4, steps=5)
    assert [sorted(s) for s in four] != [sorted(s) for s in _global_steps(shards, 4, 1, 5, seed=8)]


def test_determinism_and_seed_offset(shards):
    a = [TokenLoader(shards, seed=3).next_batch(64, 16)[0] for _ in range(2)]
    assert torch.equal(a[0], a[1])
    starts = {int(TokenLoader(shards, seed=s).next_batch(64, 16)[0][0, 0]) for s in range(1, 6)}
    assert len(starts) == 5 and all(0 <= s < sum(SIZES) for s in starts)
    assert int(TokenLoader(shards, seed=0).next_batch(64, 16)[0][0, 0]) == 0


def test_state_dict_resume_is_bit_exact(shards):
    loader = TokenLoader(shards, rank=0, world_size=2, seed=11)
    for _ in range(5):
        loader.next_batch(160, 32)
    state = loader.state_dict()
    rest = [loader.next_batch(160, 32) for _ in range(9)]
    fresh = TokenLoader(shards, rank=0, world_size=2, seed=11)
    fresh.load_state_dict(state)
    for x, y in rest:
        fx, fy = fresh.next_batch(160, 32)
        assert torch.equal(x, fx) and torch.equal(y, fy)
    assert fresh.epochs == loader.epochs and fresh.wraps == loader.wraps and fresh.wraps >= 1
    # The state is global: rank 1 resumes from rank 0's state at the same place.
    other = TokenLoader(shards, rank=1, world_size=2)
    other.load_state_dict(state)
    ref = TokenLoader(shards, rank=1, world_size=2, seed=11)
    for _ in range(5):
        ref.next_batch(160, 32)
    assert torch.equal(other.next_batch(160, 32)[0], ref.next_batch(160, 32)[0])
    with pytest.raises(ValueError, match="saved for shards"):
        TokenLoader(shards[:2]).load_state_dict(state)


def test_bad_arguments(shards, tmp_path):
    with pytest.raises(ValueError, match="multiple of seq_len"):
        TokenLoader(shards).next_batch(100, 32)
    with pytest.raises(ValueError, match="rank"):
        TokenLoader(shards, rank=2, world_size=2)
    with pytest.raises(FileNotFoundError, match="fineweb_train"):
        TokenLoader(tmp_path / "nowhere")
    assert TokenLoader(shards[0].parent).total_tokens == sum(SIZES)  # a folder means its train shards


@pytest.mark.gpu
def test_cuda_batches_match_cpu(shards):
    cpu, gpu = TokenLoader(shards, seed=5), TokenLoader(shards, seed=5)
    for _ in range(4):
        x, y = cpu.next_batch(256, 64, "cpu")
        gx, gy = gpu.next_batch(256, 64, "cuda")
        assert gx.is_cuda and torch.equal(gx.cpu(), x) and torch.equal(gy.cpu(), y)
