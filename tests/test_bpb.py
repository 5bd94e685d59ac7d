import math

import numpy as np
import torch

from pgolf.eval.bpb import BPBAccumulator, ByteLUT
from pgolf.eval.flat import evaluate_flat, flat_batch_shapes, usable_val_tokens


def toy_lut():
    # ids: 0 <pad>, 1 <s> (boundary), 2 "▁the" (3 bytes + space), 3 "cat" (3), 4 byte-fallback (1), 5 "▁é" (2 + space)
    base = np.array([0, 0, 3, 3, 1, 2], dtype=np.int16)
    space = np.array([0, 0, 1, 0, 0, 1], dtype=bool)
    boundary = np.array([1, 1, 0, 0, 0, 0], dtype=bool)
    return ByteLUT.from_numpy((base, space, boundary))


def test_target_bytes_leading_space_rule():
    lut = toy_lut()
    prev = torch.tensor([1, 2, 3, 5, 1])
    tgt = torch.tensor([2, 3, 5, 4, 1])
    # "▁the" after BOS: no space charged (3); "cat" 3; "▁é" after "cat": 2+1; byte 1; BOS target 0
    assert lut.target_bytes(prev, tgt).tolist() == [3, 3, 3, 1, 0]


def test_bpb_hand_computed():
    acc = BPBAccumulator()
    acc.add(torch.tensor([math.log(2), 2 * math.log(2), 0.5], dtype=torch.float64), torch.tensor([3, 3, 0]))
    r = acc.result()
    assert r.tokens == 3 and r.bytes == 6
    assert math.isclose(r.bpb, (3 * math.log(2) + 0.5) / math.log(2) / 6, rel_tol=1e-12)
    assert math.isclose(r.loss, (3 * math.log(2) + 0.5) / 3, rel_tol=1e-12)


def test_flat_eval_uniform_model_gives_log2_vocab_bits_per_token():
    lut = toy_lut()
    V, L = 6, 4
    stream = np.array([1, 2, 3, 5, 4, 1, 2, 3, 3, 5, 4, 2, 1, 3], dtype=np.uint16)
    uniform = lambda x, y: torch.full(y.shape, math.log(V), dtype=torch.float64)  # noqa: E731
    r = evaluate_flat(uniform, stream, lut, seq_len=L, batch_tokens=8, device=torch.device("cpu"))
    n = usable_val_tokens(len(stream), L)
    assert n == 13 and r.tokens == 12
    x, y = torch.tensor(stream[: n - 1].astype(np.int64)), torch.tensor(stream[1:n].astype(np.int64))
    nbytes = int(lut.target_bytes(x, y).sum())
    assert r.bytes == nbytes
    assert math.isclose(r.bpb, 12 * math.log2(V) / nbytes, rel_tol=1e-12)


def test_flat_batch_shapes_are_exactly_the_shapes_evaluate_flat_uses():
    # the compile warm-up primes these shapes; a missing one would recompile on the clock
    lut, stream = toy_lut(), np.random.default_rng(0).integers(0, 6, size=1000).astype(np.uint16)
    for L, batch, cap in ((16, 64, 0), (16, 64, 200), (32, 32, 0), (8, 1000, 0)):
        seen = set()

        def record(x, y):
            seen.add(tuple(x.shape))
            return torch.zeros(x.shape)

        evaluate_flat(record, stream, lut, seq_len=L, batch_tokens=batch, device=torch.device("cpu"), max_tokens=cap)
        assert sorted(seen) == flat_batch_shapes(len(stream), seq_len=L, batch_tokens=batch, max_tokens=cap)
    assert flat_batch_shapes(1000, seq_len=16, batch_tokens=64) == [(4, 16)]  # 62 windows = 15*4 + 2, tail padded


def test_flat_batch_shapes_per_rank_match_the_rank_split(monkeypatch):
    # under DDP each rank scores its own window range, so its tail batch (the shape primed) differs by rank
    import pgolf.eval.flat as flat

    lut, stream = toy_lut(), np.random.default_rng(1).integers(0, 6, size=1001).astype(np.uint16)
    for rank in range(3):
        monkeypatch.setattr(flat, "_rank_world", lambda r=rank: (r, 3))
        seen = set()

        def record(x, y):
            seen.add(tuple(x.shape))
            return torch.zeros(x.shape)

        flat.evaluate_flat(record, stream, lut, seq_len=10, batch_tokens=60, device=torch.device("cpu"))
        assert sorted(seen) == flat.flat_batch_shapes(len(stream), seq_len=10, batch_tokens=60)
    # still rank 2 of 3: windows 66..99 in batches of 2 (60 tokens / 3 ranks / 10 per window)
    assert flat.flat_batch_shapes(1001, seq_len=10, batch_tokens=60) == [(2, 10)]


def test_padded_tail_batch_scores_exactly_like_unpadded_batches():
    # the tail batch is padded to the full batch shape; the padding must not reach the sums
    lut, stream = toy_lut(), np.random.default_rng(2).integers(0, 6, size=1000).astype(np.uint16)

    def logit_free(x, y):  # a per-token loss that depends on the token, so any stray row would show
        return (y.float() + 1.0) * 0.1 + x.float() * 0.01

    a = evaluate_flat(logit_free, stream, lut, seq_len=16, batch_tokens=64, device=torch.device("cpu"))
    b = evaluate_flat(logit_free, stream, lut, seq_len=16, batch_tokens=16 * 62, device=torch.device("cpu"))
    assert (a.tokens, a.bytes) == (b.tokens, b.bytes) == (992, b.bytes)
    assert math.isclose(a.loss, b.loss, rel_tol=1e-12) and math.isclose(a.bpb, b.bpb, rel_tol=1e-12)
