"""The pr1855 preset against record #1855's numbers (README run command, train_seed42.log header;
techniques.md §5.1)."""

from __future__ import annotations

import pytest

from pgolf.config import apply_overrides
from pgolf.presets import PRESETS, get_preset, proxy_form

RECORD_1855 = [  # (config field, value in the record's run)
    ("data.tokenizer", "sp8192"), ("model.vocab_size", 8192),
    ("model.num_layers", 11), ("model.model_dim", 512), ("model.num_heads", 8), ("model.num_kv_heads", 4),
    ("model.mlp_mult", 4.0), ("model.mlp_act", "leaky_relu2"), ("model.mlp_leaky_slope", 0.5),
    ("model.tie_embeddings", True), ("model.tied_embed_init_std", 0.005), ("model.logit_softcap", 30.0),
    ("model.rope_base", 10000.0), ("model.rope_dims", 16), ("model.ln_scale", True), ("model.qk_gain_init", 5.0),
    ("model.xsa_layers", "all"), ("model.skip_gates", True),
    ("model.num_loops", 2), ("model.loop_start", 3), ("model.loop_end", 5), ("model.loop_enable_at", 0.35),
    ("model.parallel_start_layer", 8), ("model.parallel_final_lane", "mean"),
    ("model.sparse_attn_gate_width", 12), ("model.sparse_attn_gate_scale", 0.5),
    ("model.smear_gate", "bos_fixed"), ("model.smear_gate_width", 12), ("model.doc_isolated", True), ("model.attn_backend", "varlen"),
    ("model.init", "orthogonal"), ("model.fused_ce", True), ("model.fused_mlp", True),  # its fused CE, MLP
    ("train.batch_tokens", 786_432), ("train.micro_batch_tokens", 98_304), ("train.seq_len", 2048),
    ("train.wallclock_s", 600.0), ("train.warmup_steps", 20), ("train.warmdown_frac", 0.85), ("train.min_lr", 0.1),
    ("train.ema_decay", 0.9965), ("train.loader", "docpack"), ("train.seed", 42),
    ("optim.muon_ns", "polar_express"), ("optim.muon_backend_steps", 5), ("optim.muon_row_normalize", True),
    ("optim.muon_wd", 0.095), ("optim.embed_wd", 0.085), ("optim.adam_wd", 0.02), ("optim.beta1", 0.9),
    ("optim.beta2", 0.99), ("optim.adam_eps", 1e-8), ("optim.matrix_lr", 0.026), ("optim.scalar_lr", 0.02),
    ("optim.tied_embed_lr", 0.03), ("optim.muon_momentum", 0.97), ("optim.muon_momentum_warmup_start", 0.92),
    ("optim.muon_momentum_warmup_steps", 1500), ("optim.grad_clip_norm", 0.3),
    ("quant.matrix_bits", 6), ("quant.embed_bits", 7), ("quant.clip", "sdclip"), ("quant.clip_k_attn", 13.0),
    ("quant.clip_k_mlp", 11.5), ("quant.clip_k_embed", 14.0), ("quant.clip_k_other", 12.85),
    ("quant.gptq", True), ("quant.gptq_calib_batches", 16), ("quant.gptq_reserve_s", 0.5),
    ("quant.lqer_rank", 4), ("quant.lqer_top_k", 3), ("quant.lqer_group", 64), ("quant.lqer_asym", True),
    ("quant.lqer_factor_bits", 4), ("quant.gate_int8", True), ("quant.control_dtype", "float16"),
    ("quant.compressor", "pergroup"), ("eval.seq_len", 2048),
]


def _get(cfg, dotted):
    sec, name = dotted.split(".")
    return getattr(getattr(cfg, sec), name)


def test_registered():
    assert "pr1855" in PRESETS and get_preset("pr1855").name == "pr1855"


@pytest.mark.parametrize("field,value", RECORD_1855, ids=[f for f, _ in RECORD_1855])
def test_pr1855_matches_the_record(field, value):
    assert _get(get_preset("pr1855"), field) == value


def test_pr1855_leaves_inductors_mix_order_reduction_off():  # on: 162.5 vs 155.6 ms per looped micro-step (H100)
    assert not get_preset("pr1855").train.mix_order_reduction and not get_preset("baseline").train.mix_order_reduction


def test_pr1855_shape_on_one_and_eight_gpus():
    cfg = get_preset("pr1855")
    assert cfg.train.grad_accum(1) == 8 and cfg.train.grad_accum(8) == 1  # 48 x 2048 per micro-step
    assert cfg.model.head_dim == 64 and cfg.model.mlp_hidden == 2048


def test_pr1855_proxy_form_scales_the_momentum_warmup():
    p = proxy_form(get_preset("pr1855"))
    assert (p.train.batch_tokens, p.train.micro_batch_tokens, p.train.wallclock_s) == (98_304, 98_304, 90.0)
    assert p.optim.muon_momentum_warmup_steps == 225 and p.data.corpus == "proxy"


def test_pr1855_fits_the_budget_only_when_over():
    """The budget fitter keeps the record's clip steps (alpha 1) unless the artifact is over the limit."""
    q = get_preset("pr1855").quant
    assert q.fit_budget and q.fit_alpha_min == 1.0 and q.fit_alpha_max > 1.0


def test_pr1855_accepts_the_throughput_overrides():
    import throughput as tp
    cfg = apply_overrides(get_preset("pr1855"), list(tp.QUICK_EXPORT))
    assert cfg.quant.scheme == "int8_rowwise" and not cfg.quant.gptq and cfg.quant.gptq_reserve_s == 0
    assert cfg.model == get_preset("pr1855").model and cfg.train.batch_tokens == 786_432
