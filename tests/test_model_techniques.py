"""Issue 4, MLP / residual stream / token mixing / head / init techniques: off = baseline, identity at init where
claimed, causality, document isolation of the BOS-fixed SmearGate and BigramHash, parameter policy, counts."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

from pgolf.config import ModelConfig, OptimConfig
from pgolf.model import gpt as gpt_mod
from pgolf.model.gpt import GPT, count_params
from pgolf.model.layers import rms_norm
from pgolf.model.mlp import mlp_hidden_dim
from pgolf.model.recurrence import layer_order
from pgolf.optim.builder import build_optimizers
from pgolf.optim.policy import policy_for, resolve_policy

V, L = 64, 5
LOOPS = dict(num_loops=2, loop_start=1, loop_end=2, loop_enable_at=0.35)
# technique name -> config fields that switch it on (tiny model: 5 layers, plain split 2 | 3)
ON = {
    "leaky_relu2": dict(mlp_act="leaky_relu2"),
    "leaky_relu2_03": dict(mlp_act="leaky_relu2", mlp_leaky_slope=0.3),
    "swiglu": dict(mlp_act="swiglu"),
    "mlp3": dict(mlp_mult=3.0),
    "skip_gates": dict(skip_gates=True),
    "ln_scale": dict(ln_scale=True),
    "parallel": dict(parallel_start_layer=3),
    "parallel_attn_lane": dict(parallel_start_layer=3, parallel_final_lane="attn"),
    "loops": LOOPS,
    "smear_v1": dict(smear_gate="v1"),
    "smear_bos": dict(smear_gate="bos_fixed", smear_gate_width=8),
    "bigram": dict(bigram_buckets=37, bigram_dim=16),
    "orthogonal": dict(init="orthogonal"),
    "overtone": dict(embed_init="overtone"),
    "softcap15": dict(logit_softcap=15.0),
}
ALL_ON = dict(mlp_act="leaky_relu2", mlp_mult=3.0, skip_gates=True, ln_scale=True, parallel_start_layer=4, **LOOPS,
              smear_gate="bos_fixed", bigram_buckets=37, bigram_dim=16, init="orthogonal", embed_init="overtone")
# hyper-parameters of a technique set to non-default values while its switch stays off
OFF_BUT_TUNED = {
    "mlp_leaky_slope": dict(mlp_leaky_slope=0.3),
    "parallel_final_lane": dict(parallel_final_lane="attn"),
    "loop_enable_at": dict(loop_enable_at=0.5),
    "smear_gate_width": dict(smear_gate_width=32),
    "bigram_dim": dict(bigram_dim=64),
    "bos_id": dict(bos_id=3),
}


def cfg(layers: int = L, **kw) -> ModelConfig:
    return ModelConfig(vocab_size=V, num_layers=layers, model_dim=32, num_heads=4, num_kv_heads=2, **kw)


def build(seed: int = 0, layers: int = L, **kw) -> GPT:
    torch.manual_seed(seed)
    return GPT(cfg(layers, **kw))


@torch.no_grad()
def perturb(model: GPT, seed: int = 1, scale: float = 0.05) -> GPT:
    """Move every weight off its init (zero projections, zero gates) by noise drawn per parameter name."""
    for name, p in model.named_parameters():
        g = torch.Generator().manual_seed(seed + sum(map(ord, name)))
        p.add_(scale * torch.randn(p.shape, generator=g))
    return model


def tokens(seed: int = 0, shape=(2, 24)) -> torch.Tensor:
    return torch.randint(2, V, shape, generator=torch.Generator().manual_seed(seed))  # 0/1 (BOS) not drawn


@torch.no_grad()
def reference_baseline_logits(m: GPT, ids: torch.Tensor) -> torch.Tensor:
    """The naive baseline forward written out once more (the pre-issue-4 gpt.py/block.py), using m's weights."""
    x = x0 = rms_norm(m.tok_emb(ids))
    enc = m.cfg.num_layers // 2
    skips = []
    for i, b in enumerate(m.blocks):
        if i >= enc and skips:
            x = x + m.skip_weights[i - enc] * skips.pop()
        x = b.resid_mix[0] * x + b.resid_mix[1] * x0
        x = x + b.attn_scale * b.attn(rms_norm(x))
        x = x + b.mlp_scale * b.mlp.proj(torch.relu(b.mlp.fc(rms_norm(x))).square())
        if i < enc:
            skips.append(x)
    raw = F.linear(rms_norm(x), m.tok_emb.weight)
    return m.cfg.logit_softcap * torch.tanh(raw / m.cfg.logit_softcap)


# ---------------------------------------------------------------- off => bit-identical to the baseline


def test_default_model_is_the_baseline_bit_for_bit():
    m = perturb(build())
    ids = tokens()
    assert torch.equal(m.logits(ids), reference_baseline_logits(m, ids))


@pytest.mark.parametrize("name", sorted(OFF_BUT_TUNED))
def test_technique_off_is_bit_identical_to_baseline(name):
    base, m = build(), build(**OFF_BUT_TUNED[name])
    assert [n for n, _ in m.named_parameters()] == [n for n, _ in base.named_parameters()]
    for (_, a), (_, b) in zip(base.named_parameters(), m.named_parameters()):
        assert torch.equal(a, b)  # same RNG stream
    perturb(base), perturb(m)
    ids = tokens()
    assert torch.equal(m.logits(ids), base.logits(ids))


# ---------------------------------------------------------------- on at init


@torch.no_grad()
def baseline_weights_into(m: GPT, seed: int = 0) -> GPT:
    """Copy a perturbed baseline's weights into m; technique parameters keep their init. With loops m has more
    skip slots: the baseline's fill the first rows (the plain order uses only those)."""
    for name, p in perturb(build(seed)).named_parameters():
        mine = m.get_parameter(name)
        mine[: p.shape[0]].copy_(p) if name == "skip_weights" else mine.copy_(p)
    return m


@pytest.mark.parametrize("name", ["smear_bos", "bigram", "loops_before_enable", "bigram+smear_bos+loops"])
def test_identity_at_init_whatever_the_other_weights(name):
    kw = {"smear_bos": ON["smear_bos"], "bigram": ON["bigram"], "loops_before_enable": LOOPS,
          "bigram+smear_bos+loops": {**ON["bigram"], **ON["smear_bos"], **LOOPS}}[name]
    base, m = perturb(build()), build(**kw)
    for n, a in build().named_parameters():  # created after the baseline's: its weights are untouched
        assert torch.equal(m.get_parameter(n)[: a.shape[0]], a), n
    baseline_weights_into(m)
    m.set_progress(0.0)  # loops: still before loop_enable_at
    ids = tokens()
    assert torch.equal(m.logits(ids), base.logits(ids))


@pytest.mark.parametrize("name", ["skip_gates", "smear_v1", "ln_scale", "leaky_relu2", "parallel", "loops"])
def test_not_identity_once_weights_move(name):
    """skip gates (0.5/0.5 blend), SmearGate v1 (0.5 blend), ln_scale, LeakyReLU², parallel lanes (resid 1.1,
    skips into lane 0 only) and active loops are different functions of the same weights."""
    base, m = perturb(build()), baseline_weights_into(build(**ON[name]))
    ids = tokens()
    assert not torch.allclose(m.logits(ids), base.logits(ids), atol=1e-4)


def test_zero_branches_hide_ln_scale_act_and_orthogonal_at_step_0():
    """With zero-init output projections every block is the identity at step 0, so techniques that only change
    what happens inside a branch give the baseline's logits at init (they differ from the first update on).
    (SwiGLU and other MLP widths change weight shapes, hence the RNG stream and every later weight.)"""
    ids = tokens()
    want = build().logits(ids)
    for name in ("ln_scale", "leaky_relu2", "leaky_relu2_03", "orthogonal"):
        torch.testing.assert_close(build(**ON[name]).logits(ids), want, rtol=0, atol=0, msg=name)


def test_parallel_lanes_match_baseline_at_init_up_to_rounding():
    """At init every branch is zero, so every block output, skip and lane is a multiple of x0 (lanes grow by 1.1
    per block, skips enter lane 0 only) and the final rms_norm removes the factor: equal up to rounding.
    Once weights move, the lanes are a different function (test_not_identity_once_weights_move)."""
    ids = tokens()
    want = build().logits(ids)
    for start in (2, 3, 4):
        got = build(parallel_start_layer=start).logits(ids)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_skip_gates_start_as_half_blend():
    m = build(skip_gates=True)
    x, s = torch.randn(1, 3, 32), torch.randn(1, 3, 32)
    torch.testing.assert_close(m.skip(0, x, s), 0.5 * x + 0.5 * m.skip_weights[0] * s)


def test_smear_v1_starts_as_half_blend_with_previous_position():
    m = build(smear_gate="v1")
    x = torch.randn(2, 5, 32)
    prev = torch.cat((torch.zeros(2, 1, 32), x[:, :-1]), dim=1)
    torch.testing.assert_close(m.smear(x), 0.5 * x + 0.5 * prev)


# ---------------------------------------------------------------- the two-lane block and the loops


def test_forward_lanes_data_flow():
    m = perturb(build(parallel_start_layer=3))
    b = m.blocks[3]
    with torch.no_grad():
        b.lane_resid.copy_(torch.tensor([1.3, 0.7]))
        b.lane_post.copy_(torch.tensor([[0.2, 0.5], [0.9, 1.7]]))
    l0, l1, x0 = torch.randn(3, 1, 6, 32).unbind(0)
    mix = b.resid_mix
    a = b.attn_scale * b.attn(rms_norm(mix[0] * l0 + mix[1] * x0))
    mm = b.mlp_scale * b.mlp(rms_norm(l1))
    n0, n1 = b.forward_lanes(l0, l1, x0)
    torch.testing.assert_close(n0, 1.3 * l0 + 0.2 * a + 0.9 * mm)
    torch.testing.assert_close(n1, 0.7 * l1 + 0.5 * a + 1.7 * mm)
    assert not hasattr(m.blocks[2], "lane_resid") and m.blocks[4].parallel


def test_loop_orders_match_top():
    o = layer_order(ModelConfig(num_layers=11, num_loops=2, loop_start=3, loop_end=5))
    assert o.plain == ((0, 1, 2, 3, 4), (5, 6, 7, 8, 9, 10))
    assert o.looped == ((0, 1, 2, 3, 4, 5, 3, 4), (5, 3, 4, 5, 6, 7, 8, 9, 10))
    assert o.num_skips == 8 and layer_order(ModelConfig(num_layers=11)).num_skips == 5


def test_loop_switch_follows_set_progress():
    m = perturb(build(**LOOPS))
    ids = tokens()
    assert m.looping  # a fresh model is in its end-of-training state, as eval of a loaded artifact needs
    looped = m.logits(ids)
    m.set_progress(0.34)
    plain = m.logits(ids)
    assert not m.looping and not torch.allclose(plain, looped, atol=1e-4)
    m.set_progress(0.35)
    assert m.looping and torch.equal(m.logits(ids), looped)


def test_loop_switch_is_not_constant_folded_by_compile():
    """`looping` is a plain bool: dynamo must guard on it and build the looped graph when it flips (the records'
    late-QAT bug was a flag that compile had folded into the graph). aot_eager: no C compiler needed on CPU."""
    torch._dynamo.reset()
    m = perturb(build(layers=3, num_loops=1, loop_start=1, loop_end=1, loop_enable_at=0.35))
    c = torch.compile(m, backend="aot_eager", fullgraph=True)
    x, y = tokens(0), tokens(1)
    with torch.no_grad():
        m.set_progress(0.0)
        plain = c(x, y)
        assert torch.equal(plain, m(x, y))
        m.set_progress(1.0)
        looped = c(x, y)
        assert torch.equal(looped, m(x, y)) and not torch.equal(looped, plain)
        m.set_progress(0.1)
        assert torch.equal(c(x, y), plain)


# ---------------------------------------------------------------- causality and document isolation


@pytest.mark.parametrize("name", sorted(ON) + ["all"])
def test_causality(name):
    m = perturb(build(**(ALL_ON if name == "all" else ON[name])))
    ids = tokens(shape=(1, 20))
    base = m.logits(ids)
    for t in (0, 6, 18):
        ids2 = ids.clone()
        ids2[0, t + 1:] = tokens(7 + t, (1, 19 - t))
        out = m.logits(ids2)
        assert torch.equal(out[0, : t + 1], base[0, : t + 1]), f"{name}: position <= {t} saw the future"
        assert not torch.allclose(out[0, t + 1:], base[0, t + 1:])


def no_attention(m: GPT) -> GPT:
    """Zero every attention output projection: the only cross-position paths left are the embedding's."""
    with torch.no_grad():
        for b in m.blocks:
            b.attn.proj.weight.zero_()
    return m


@pytest.mark.parametrize("kw", [ON["smear_bos"], ON["bigram"], {**ALL_ON, "mlp_act": "swiglu"}],
                         ids=["smear_bos", "bigram", "all"])
def test_previous_document_never_reaches_the_next_one(kw):
    """Packed stream [doc A][BOS doc B]: changing A's last token leaves B's logits from its BOS on unchanged."""
    m = no_attention(perturb(build(**kw)))
    ids = tokens(shape=(1, 16))
    bos = 9
    ids[0, bos] = m.cfg.bos_id
    other = ids.clone()
    other[0, bos - 1] = (ids[0, bos - 1] + 5) % V
    a, b = m.logits(ids), m.logits(other)
    assert torch.equal(a[0, bos:], b[0, bos:])
    assert not torch.allclose(a[0, bos - 1], b[0, bos - 1])
    # the same position without a BOS does see its predecessor (the mask, not luck, isolates the documents)
    ids[0, bos] = other[0, bos] = 5
    assert not torch.allclose(m.logits(ids)[0, bos], m.logits(other)[0, bos])


def test_document_isolation_with_attention_and_all_embedding_mixers():
    """With document-isolated attention (the attention helper's doc_isolated) the full model, BOS-fixed SmearGate
    and BigramHash included, never lets document A reach document B."""
    m = perturb(build(doc_isolated=True, **{**ALL_ON, "smear_gate": "bos_fixed"}))
    ids = tokens(shape=(1, 20))
    ids[0, 11] = m.cfg.bos_id
    other = ids.clone()
    other[0, :11] = tokens(5, (1, 11))
    a, b = m.logits(ids), m.logits(other)
    assert torch.equal(a[0, 11:], b[0, 11:]) and not torch.allclose(a[0, :11], b[0, :11])


def test_bigram_buckets():
    m = build(**ON["bigram"])
    ids = torch.tensor([[5, 7, 1, 9]])
    want = [36, (36313 * 7 ^ 27191 * 5) % 36, 36, (36313 * 9 ^ 27191 * 1) % 36]
    assert m.bigram.bucket_ids(ids).tolist() == [want]
    assert m.bigram.scale.item() == pytest.approx(0.05) and not m.bigram.table.any() and m.bigram.proj.weight.any()


# ---------------------------------------------------------------- MLP widths, init options


def test_swiglu_width_matches_relu2_parameters():
    for mult in (2.0, 3.0, 4.0):
        c = ModelConfig(mlp_mult=mult, mlp_act="swiglu")
        h = mlp_hidden_dim(c)
        assert h % 8 == 0 and abs(3 * h - 2 * c.mlp_hidden) <= 12
        relu = 2 * c.model_dim * c.mlp_hidden
        assert abs(3 * c.model_dim * h - relu) / relu < 0.01
    m = build(mlp_act="swiglu")
    assert tuple(m.blocks[0].mlp.fc.weight.shape) == (2 * mlp_hidden_dim(m.cfg), 32)


def test_orthogonal_init():
    m = build(layers=3, init="orthogonal", mlp_mult=2.0)
    for b in m.blocks:
        for lin in (b.attn.c_q, b.attn.c_k, b.attn.c_v, b.mlp.fc):
            w = lin.weight
            gram = w @ w.T if w.shape[0] <= w.shape[1] else w.T @ w
            torch.testing.assert_close(gram, torch.eye(gram.shape[0]), atol=1e-5, rtol=0)
        assert not b.attn.proj.weight.any() and not b.mlp.proj.weight.any()


def test_overtone_embedding_spectrum():
    base, m = build(), build(embed_init="overtone")
    s0 = torch.linalg.svdvals(base.tok_emb.weight)
    s = torch.linalg.svdvals(m.tok_emb.weight)
    k = torch.arange(1, s.numel() + 1, dtype=s.dtype)
    torch.testing.assert_close(s, s0[0] / k.sqrt(), rtol=1e-4, atol=1e-6)


# ---------------------------------------------------------------- policy, counts, config errors


def test_policy_covers_every_parameter_with_all_techniques_on():
    for tie in (True, False):
        c = cfg(**ALL_ON, tie_embeddings=tie)
        m = GPT(c)
        table = resolve_policy(m.named_parameters(), policy_for(c))
        assert set(table) == {n for n, _ in m.named_parameters()}
        rows = {n: r.name for n, r in table.items()}
        assert rows["bigram.table"] == "bigram_table" and table["bigram.table"].optim == "adam"
        assert rows["bigram.proj.weight"] == "bigram_proj" and table["bigram.proj.weight"].optim == "muon"
        for n in ("skip_gates", "blocks.4.lane_post", "blocks.4.lane_resid", "smear.gate_w", "smear.lam",
                  "bigram.scale", "skip_weights"):
            assert rows[n] == "control", n
        assert rows["blocks.0.mlp.fc.weight"] == "block_matrix"
        for n, p in m.named_parameters():
            assert (rows[n] == "control") == gpt_mod.control_param(n, p), n
        assert build_optimizers(m, OptimConfig()).policy == table  # every row's LR / WD key exists
    swiglu = cfg(mlp_act="swiglu", smear_gate="v1")
    table = resolve_policy(GPT(swiglu).named_parameters(), policy_for(swiglu))
    assert table["blocks.0.mlp.fc.weight"].optim == "muon" and table["smear.gate"].name == "control"


def test_top_shape_parameter_count():
    """11L, d=512, 8/4 heads, MLP 4x, vocab 8192, tied, loop 3..5 x2, parallel from 8, skip gates, BOS SmearGate."""
    c = ModelConfig(vocab_size=8192, num_layers=11, mlp_mult=4.0, num_loops=2, loop_start=3, loop_end=5,
                    loop_enable_at=0.35, parallel_start_layer=8, skip_gates=True, ln_scale=True,
                    smear_gate="bos_fixed", mlp_act="leaky_relu2")
    with torch.device("meta"):
        n = count_params(GPT(c))
    d, kv, hid, layers = 512, 256, 2048, 11
    per_layer = d * d * 2 + kv * d * 2 + 2 * d * hid + (d + d + 2 * d + 8)  # q,o; k,v; fc,proj; scales,mix,q_gain
    skips = 8 * d * 2  # 17 virtual layers: 8 encoder, 9 decoder -> 8 skip slots, weights + gates
    lanes = 3 * (2 + 4)  # layers 8, 9, 10: lane_resid (2) + lane_post (2x2)
    smear = 12 + 1
    assert n == 8192 * d + layers * per_layer + skips + lanes + smear == 35_944_567
    # TOP logs 35,945,671: it also has SparseAttnGate (11 x 96) and keeps lambdas for all 11 layers (66, not 18)
    assert n + 11 * 96 + 66 - 18 == 35_945_671


@pytest.mark.parametrize("kw,field", [
    (dict(mlp_act="gelu"), "model.mlp_act"), (dict(mlp_leaky_slope=1.5), "model.mlp_leaky_slope"),
    (dict(loop_start=1), "model.num_loops"), (dict(num_loops=1, loop_start=3, loop_end=9), "model.loop_end"),
    (dict(num_loops=1, loop_start=1, loop_end=2, loop_enable_at=2.0), "model.loop_enable_at"),
    (dict(parallel_start_layer=1), "model.parallel_start_layer"),
    (dict(parallel_start_layer=2, **LOOPS), "model.parallel_start_layer"),
    (dict(parallel_final_lane="sum"), "model.parallel_final_lane"), (dict(smear_gate="v2"), "model.smear_gate"),
    (dict(smear_gate_width=0), "model.smear_gate_width"), (dict(bos_id=64), "model.bos_id"),
    (dict(bigram_buckets=1), "model.bigram_buckets"), (dict(init="xavier"), "model.init"),
    (dict(embed_init="svd"), "model.embed_init"), (dict(mlp_mult=0.0), "model.mlp_mult"),
    (dict(smear_gate="v1", doc_isolated=True), "model.smear_gate"),
])
def test_config_errors_name_the_field(kw, field):
    with pytest.raises(ValueError, match=field.replace(".", r"\.")):
        cfg(**kw)


def test_config_fields_default_off():
    d = ModelConfig()
    assert (d.mlp_act, d.skip_gates, d.ln_scale, d.parallel_start_layer, d.num_loops, d.smear_gate,
            d.bigram_buckets, d.init, d.embed_init) == ("relu2", False, False, -1, 0, "none", 0, "default", "normal")
    assert dataclasses.replace(d, num_loops=2, loop_start=3, loop_end=5).num_loops == 2
    assert math.isclose(ModelConfig(mlp_mult=3.0).mlp_hidden, 1536)


@pytest.mark.gpu
def test_gpu_all_techniques_compile_and_switch_loops():
    """On CUDA: the bf16 training layout with every technique of this file, inductor-compiled; the loop switch
    must reach the compiled graph (python -m pytest -m gpu tests/test_model_techniques.py)."""
    from pgolf.model.gpt import cast_for_training

    torch._dynamo.reset()
    dev = torch.device("cuda")
    torch.manual_seed(0)
    m = cast_for_training(perturb(GPT(cfg(**ALL_ON))), dev)
    c = torch.compile(m, dynamic=False, fullgraph=True)
    x, y = tokens(0).to(dev), tokens(1).to(dev)
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        m.set_progress(0.0)
        plain = c(x, y)
        m.set_progress(1.0)
        looped = c(x, y)
        assert torch.isfinite(plain) and torch.isfinite(looped) and not torch.equal(plain, looped)
        torch.testing.assert_close(looped, m(x, y), rtol=2e-2, atol=2e-2)
