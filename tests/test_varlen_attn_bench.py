"""benchmarks/varlen_attn_bench.py on CPU: the segment offsets it feeds both attention kernels (the timing needs CUDA)."""

import json

import numpy as np
import pytest

import varlen_attn_bench as bench


def test_segments_start_at_every_bos_and_row_start_and_are_padded():
    toks = np.array([5, 1, 7, 7, 7, 1, 9, 9, 1, 4, 4, 4], dtype=np.int32)  # bos_id 1, rows of 4, 3 rows a window
    (cu,) = bench.segment_batches(toks, rows=3, seq_len=4, bos_id=1, count=1, pad_to=10)
    assert cu.tolist() == [0, 1, 4, 5, 8, 12, 12, 12, 12, 12]
    two = bench.segment_batches(np.tile(toks, 2), rows=3, seq_len=4, bos_id=1, count=2, pad_to=6)
    assert [c.tolist() for c in two] == [[0, 1, 4, 5, 8, 12]] * 2


def test_segments_name_the_window_and_shard_that_do_not_fit():
    toks = np.ones(8, dtype=np.int32)
    with pytest.raises(ValueError, match="window 0 has 9 offsets, more than --pad-to 4"):
        bench.segment_batches(toks, rows=2, seq_len=4, bos_id=1, count=1, pad_to=4)
    with pytest.raises(ValueError, match="fewer than 3 windows of 8"):
        bench.segment_batches(toks, rows=2, seq_len=4, bos_id=1, count=3, pad_to=16)


def test_cpu_run_checks_the_batches_and_writes_json(tmp_path):
    out = tmp_path / "a.json"
    assert bench.main(["--device", "cpu", "--rows", "2", "--seq-len", "512", "--out", str(out)]) == 1
    r = json.loads(out.read_text())
    assert r["tokens"] == 1024 and r["batches"] == 8 and 0 < r["segments_mean_len"] <= r["segments_max_len"] <= 512
    assert all("needs CUDA" in v["error"] for v in r["results"])


@pytest.mark.parametrize("variant", list(bench.FA4_FWD_OPTIONS))
def test_fa4_forward_options_reach_fa4_and_keep_fa4s_gradients(monkeypatch, variant):
    import torch

    from pgolf.model import attn_fa4
    from pgolf.model.attn_backends import padded_cu_seqlens
    from test_attn_fa4 import ReferenceFA4, ids_with_docs

    seen = []

    class WithOptions(ReferenceFA4):  # the reference, taking (and recording) FA4's forward options
        @classmethod
        def _flash_attn_fwd(cls, q, k, v, *, tile_mn=None, pack_gqa=None, **kw):
            seen.append({k: v for k, v in (("tile_mn", tile_mn), ("pack_gqa", pack_gqa)) if v is not None})
            return super()._flash_attn_fwd(q, k, v, **kw)

    monkeypatch.setattr(attn_fa4, "require_fa4", lambda: WithOptions)
    cu = padded_cu_seqlens(ids_with_docs(), bos_id=1, doc_isolated=True, size=16)
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(24, h, 8, generator=g).requires_grad_() for h in (4, 2, 2))
    fn = bench.make_fn(variant, heads=4, seq_len=12)
    out = fn(q, k, v, cu)
    grads = torch.autograd.grad(out.sum(), (q, k, v))
    ref = torch.ops.pgolf.fa4_varlen_fwd(q, k, v, cu, 12)[0]
    ref_grads = torch.autograd.grad(ref.sum(), (q, k, v))
    assert seen[0] == bench.FA4_FWD_OPTIONS[variant] and seen[1] == {}
    torch.testing.assert_close(out, ref)
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a, b)


def test_fa4_bwd_repeat_runs_the_backward_on_query_heads_and_keeps_fa4s_gradients(monkeypatch):
    import torch

    from pgolf.model import attn_fa4
    from pgolf.model.attn_backends import padded_cu_seqlens
    from test_attn_fa4 import ReferenceFA4, ids_with_docs

    bwd_kv_heads = []

    class Recording(ReferenceFA4):  # the reference, recording the K/V head count its backward gets
        @classmethod
        def _flash_attn_bwd(cls, q, k, *a, **kw):
            bwd_kv_heads.append(k.size(1))
            return super()._flash_attn_bwd(q, k, *a, **kw)

    monkeypatch.setattr(attn_fa4, "require_fa4", lambda: Recording)
    cu = padded_cu_seqlens(ids_with_docs(), bos_id=1, doc_isolated=True, size=16)
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(24, h, 8, generator=g).requires_grad_() for h in (4, 2, 2))
    w = torch.randn(24, 4, 8, generator=g)
    out = bench.make_fn("fa4_bwd_repeat", heads=4, seq_len=12)(q, k, v, cu)
    grads = torch.autograd.grad((out * w).sum(), (q, k, v))
    ref = torch.ops.pgolf.fa4_varlen_fwd(q, k, v, cu, 12)[0]
    ref_grads = torch.autograd.grad((ref * w).sum(), (q, k, v))
    assert bwd_kv_heads == [4, 2]  # repeated to the query heads; fa4's own backward on the 2 K/V heads
    torch.testing.assert_close(out, ref)
    for a, b, name in zip(grads, ref_grads, "qkv"):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5, msg=f"d{name}")


def test_attention_flops_count_each_segments_causal_pairs():
    import torch

    cu = torch.tensor([0, 1, 4, 5, 8, 12, 12], dtype=torch.int32)  # lengths 1, 3, 1, 3, 4 and one empty pad
    assert bench.attention_flops(cu, model_dim=2) == 6 * 2 * (2 + 12 + 2 + 12 + 20)
    rows = torch.arange(0, 12 + 1, 4)  # the dense variants: every 4-token row one segment
    assert bench.attention_flops(rows, model_dim=2) == 6 * 2 * 3 * 20


def test_dense_reference_attends_each_row_causally_with_grouped_kv_heads():
    import torch

    g = torch.Generator().manual_seed(0)
    rows, t, heads, kv, dim = 3, 5, 4, 2, 8
    q, k, v = (torch.randn(rows * t, h, dim, generator=g) for h in (heads, kv, kv))
    out = bench.make_fn("dense_flash", heads=heads, seq_len=t)(q, k, v, None)
    want = torch.empty_like(q)
    for r in range(rows):
        s = slice(r * t, (r + 1) * t)
        for h in range(heads):
            kh = h // (heads // kv)  # query head h reads K/V head h // group, as repeat_kv lays them out
            w = (q[s, h] @ k[s, kh].T) / dim ** 0.5
            w = w.masked_fill(torch.ones(t, t, dtype=torch.bool).triu(1), float("-inf")).softmax(-1)
            want[s, h] = w @ v[s, kh]
    torch.testing.assert_close(out, want, atol=1e-5, rtol=1e-5)
