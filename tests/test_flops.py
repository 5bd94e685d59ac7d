"""FLOPs per token (pgolf.report.flops): weights counted against real models and record #1855's banks, loops,
document-isolated causal attention by brute force, and the run average used for summary.json's MFU."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from pgolf.config import ModelConfig
from pgolf.model.gpt import GPT
from pgolf.model.layers import CastedLinear
from pgolf.presets import get_preset
from pgolf.report import flops as F


def _block_matmul_weights(model: GPT, layer: int) -> int:
    block = model.blocks[layer]
    n = sum(m.weight.numel() for m in block.modules() if isinstance(m, CastedLinear))
    gate = getattr(block.attn, "attn_gate_w", None)
    return n + (gate.numel() if gate is not None else 0)


@pytest.mark.parametrize("kw", [
    {},
    {"mlp_act": "swiglu", "mlp_mult": 3.0},
    {"sparse_attn_gate_width": 12, "mlp_act": "leaky_relu2"},
    {"attn_out_gate_width": 8},
    {"gated_attn": True},
])
def test_per_layer_weights_equal_the_model(kw):
    cfg = ModelConfig(vocab_size=300, num_layers=2, model_dim=64, num_heads=4, num_kv_heads=2, **kw)
    model = GPT(cfg)
    assert F.matmul_params_per_layer(cfg) == _block_matmul_weights(model, 0) == _block_matmul_weights(model, 1)


def test_once_per_token_weights_equal_the_model():
    cfg = ModelConfig(vocab_size=300, num_layers=2, model_dim=64, num_heads=4, num_kv_heads=2,
                      smear_gate="bos_fixed", smear_gate_width=12, bigram_buckets=32, bigram_dim=16)
    model = GPT(cfg)
    head = model.tok_emb.weight.numel()  # tied head
    assert F.matmul_params_once(cfg) == head + model.smear.gate_w.numel() + model.bigram.proj.weight.numel()
    assert F.matmul_params_once(cfg) == 300 * 64 + 12 + 16 * 64


def test_pr1855_weights_equal_the_record_banks():
    """Record #1855's log (techniques.md §5): qo 5,767,168 + kv 2,883,584 + mlp up 11,534,336 + mlp down
    11,534,336 + tok_emb 4,194,304 matrix weights; the sparse gate adds 8x12 per layer, the smear gate 12."""
    m = get_preset("pr1855").model
    gates = 11 * 96 + 12
    banks = 5_767_168 + 2_883_584 + 11_534_336 + 11_534_336 + 4_194_304
    assert 11 * F.matmul_params_per_layer(m) + F.matmul_params_once(m) == banks + gates
    assert F.virtual_layers(m) == (11, 17)


def test_pr1855_flops_by_hand():
    """No data: full causal rows, T_eff = 2048 + 1. F = 6 (L P_layer + P_once) + 6 L T_eff d."""
    pf = F.phase_flops(get_preset("pr1855"))
    assert pf.t_eff == 2049.0
    assert pf.flat == 6 * (11 * 2_883_680 + 4_194_316) + 6 * 11 * 2049 * 512 == 284_728_584
    assert pf.looped == 6 * (17 * 2_883_680 + 4_194_316) + 6 * 17 * 2049 * 512 == 426_308_232
    assert pf.switch_frac == 0.35
    measured = F.phase_flops(get_preset("pr1855"), t_eff=1000.0)
    assert measured.flat == 6 * (11 * 2_883_680 + 4_194_316) + 6 * 11 * 1000 * 512


def test_loops_multiply_block_flops_by_the_virtual_over_physical_ratio():
    cfg = get_preset("pr1855")
    pf = F.phase_flops(cfg, t_eff=1234.5)
    once = 6 * F.matmul_params_once(cfg.model)
    assert (pf.looped - once) / (pf.flat - once) == pytest.approx(17 / 11, rel=1e-12)
    flat = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, num_loops=0, loop_start=-1, loop_end=-1))
    pf0 = F.phase_flops(flat, t_eff=1234.5)
    assert pf0.flat == pf0.looped == pf.flat and pf0.switch_frac == 1.0


def test_t_eff_ignores_data_without_doc_isolation():
    cfg = get_preset("baseline")
    assert F.phase_flops(cfg, t_eff=10.0).t_eff == cfg.train.seq_len + 1


def test_causal_t_eff_by_hand_and_by_counting_allowed_pairs():
    assert F.causal_t_eff([1, 2, 3]) == pytest.approx((2 + 6 + 12) / 6)
    assert F.causal_t_eff([2048]) == 2049
    toks = np.array([5, 1, 7, 7, 1, 9, 9, 9, 9, 9])
    segs = F.doc_segment_lengths(toks, bos_id=1, seq_len=3)
    assert sorted(segs.tolist()) == [1, 3, 3, 3]
    assert F.t_eff_from_tokens(toks, 1, 3) == pytest.approx((2 + 12 + 12 + 12) / 10)
    # brute force on a random stream: keys a query may see (same document, same seq_len piece, not in the future)
    rng = np.random.default_rng(0)
    toks = rng.integers(2, 50, size=700)
    toks[rng.choice(700, size=25, replace=False)] = 1
    seq = 16
    doc = np.cumsum(toks == 1)
    start = np.zeros(700, dtype=int)
    for i in range(1, 700):
        start[i] = i if doc[i] != doc[i - 1] else start[i - 1]
    piece = (np.arange(700) - start) // seq
    q, k = np.meshgrid(np.arange(700), np.arange(700), indexing="ij")
    allowed = (k <= q) & (doc[q] == doc[k]) & (piece[q] == piece[k])
    assert F.t_eff_from_tokens(toks, 1, seq) == pytest.approx(2 * allowed.sum() / 700)


def test_t_eff_from_files_reads_official_shards(tmp_path):
    from pgolf.data.shards import write_shard

    toks = np.array([1, 4, 4, 4, 1, 5, 5, 1, 6] * 50, dtype=np.uint16)
    path = tmp_path / "fineweb_train_000000.bin"
    write_shard(path, toks)
    assert F.read_tokens([path], max_tokens=7).tolist() == toks[:7].tolist()
    assert F.t_eff_from_files([path], 1, 2048) == pytest.approx(F.t_eff_from_tokens(toks, 1, 2048))
    with pytest.raises(ValueError, match="bad magic"):
        bad = tmp_path / "bad.bin"
        bad.write_bytes(b"\0" * 2048)
        F.read_tokens([bad])


def test_summary_json_and_throughput_measure_t_eff_on_the_same_prefix(tmp_path, monkeypatch):
    """summary_flops (summary.json's MFU) and throughput.py (read_tokens' default) scan T_EFF_SCAN_TOKENS tokens:
    they had scanned 8 M and 20 M, and counted different attention FLOPs for one run."""
    from pgolf.data.shards import write_shard
    from pgolf.presets import get_preset

    toks = np.array([1, 4, 4, 4, 1, 5, 5, 1] + [6] * 40, dtype=np.uint16)  # a long document after 20 tokens
    path = tmp_path / "fineweb_train_000000.bin"
    write_shard(path, toks)
    monkeypatch.setattr(F, "T_EFF_SCAN_TOKENS", 20)
    assert F.read_tokens([path]).tolist() == toks[:20].tolist()
    cfg = get_preset("pr1855")
    assert cfg.model.doc_isolated
    out = F.summary_flops(cfg, [], steps=0, train_time_s=0.0, train_files=[path])
    assert out["t_eff"] == pytest.approx(F.t_eff_from_tokens(toks[:20], cfg.model.bos_id, cfg.train.seq_len))
    assert out["t_eff"] != pytest.approx(F.t_eff_from_tokens(toks, cfg.model.bos_id, cfg.train.seq_len))


def test_flat_steps_from_the_logged_curve():
    pts = [(5, 1.0), (10, 2.0), (15, 3.0)]
    assert F.flat_steps(pts, 15, switch_time=2.5) == pytest.approx(12.5)
    assert F.flat_steps(pts, 15, switch_time=0.5) == pytest.approx(2.5)  # between (0, 0) and (5, 1)
    assert F.flat_steps(pts, 15, switch_time=9.0) == 15.0
    assert F.flat_steps(pts, 15, switch_step=40) == 15.0
    assert F.flat_steps(pts, 15, switch_step=7) == 7.0


def test_run_mean_weights_the_phases_by_tokens():
    cfg = get_preset("pr1855")
    pf = F.phase_flops(cfg)
    curve = [{"step": s, "train_time_s": s * 0.5, "train_loss": 3.0} for s in range(5, 101, 5)]
    out = F.summary_flops(cfg, curve, steps=100, train_time_s=50.0)  # 600 s cap, reserve 0.5: switch at 209.8 s
    assert out["flat_steps"] == 100 and out["run_mean"] == pf.flat
    short = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, wallclock_s=40.5))  # switch at 14 s
    out = F.summary_flops(short, curve, steps=100, train_time_s=50.0)
    assert out["flat_steps"] == pytest.approx(28.0)
    assert out["run_mean"] == pytest.approx(0.28 * pf.flat + 0.72 * pf.looped)
    iters = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, wallclock_s=0.0, iterations=100))
    out = F.summary_flops(iters, [], steps=100, train_time_s=50.0)
    assert out["flat_steps"] == 35 and out["run_mean"] == pytest.approx(0.35 * pf.flat + 0.65 * pf.looped)


def test_summary_flops_is_the_baseline_formula_by_hand():
    # 9 layers x (d(2d + 2kv) + 2 d 2d) + V d, and causal rows of 1024 (+1 key): 6 x 9 x 1025 x 512
    expected = 6 * (9 * (512 * (1024 + 512) + 2 * 512 * 1024) + 1024 * 512) + 6 * 9 * 1025 * 512
    assert F.summary_flops(get_preset("baseline"), [], steps=0, train_time_s=0.0)["run_mean"] == expected


def test_peak_flops_by_name():
    assert F.peak_flops("NVIDIA H100 80GB HBM3") == 989e12
    assert F.peak_flops("cpu") is None
