"""Attention techniques (issue 4): off => bit-identical, identity at init where promised, causality, document
isolation, the XSA / partial-RoPE / scaling math, config validation, torch.compile(fullgraph=True)."""

from __future__ import annotations

import importlib.util

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from pgolf.config import ModelConfig
from pgolf.model.attention import CausalSelfAttention, xsa_project_out
from pgolf.model.attn_backends import (
    CU_BUCKET,
)
from pgolf.model.gpt import GPT, cast_for_training, cast_parameters_bf16
from pgolf.model.layers import rms_norm
from pgolf.optim.policy import policy_for, resolve_policy


# The foundation commit's full-RoPE formulas, kept here as the reference the new code must reproduce.
def rotary_tables(seq_len: int, dim: int, base: float, device: torch.device, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """cos/sin tables of shape (1, 1, T, dim/2), computed in fp32 then cast to the activation dtype.

    The official script keeps ``inv_freq`` in a buffer that its ``.bfloat16()`` call also casts, so its
    positions are built in bf16 and rounded above 256; here the tables are always built in fp32.
    """
    inv_freq = 1.0 / (base ** (torch.arange(0, dim, 2, device=device, dtype=torch.float32) / dim))
    freqs = torch.outer(torch.arange(seq_len, device=device, dtype=torch.float32), inv_freq)
    return freqs.cos()[None, None].to(dtype), freqs.sin()[None, None].to(dtype)


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate-half RoPE over the whole last dimension of x (B, H, T, D)."""
    half = x.size(-1) // 2
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat((x1 * cos + x2 * sin, x2 * cos - x1 * sin), dim=-1)


V, T, BOS = 64, 24, 1
HEAD_DIM = 8  # model_dim 32 / 4 heads


def cfg(**kw) -> ModelConfig:
    base = dict(vocab_size=V, num_layers=4, model_dim=32, num_heads=4, num_kv_heads=2)
    base.update(kw)
    return ModelConfig(**base)


def build(**kw) -> GPT:
    torch.manual_seed(0)
    return GPT(cfg(**kw))


@torch.no_grad()
def perturb(model: torch.nn.Module, seed: int = 1, scale: float = 0.05) -> torch.nn.Module:
    """Move every weight off its init (zero projections too) so attention really mixes positions."""
    g = torch.Generator().manual_seed(seed)
    for p in model.parameters():
        p.add_(scale * torch.randn(p.shape, generator=g))
    return model


def tokens(batch: int = 2, seed: int = 0, bos_at: tuple[int, ...] = ()) -> torch.Tensor:
    """Random ids without BOS, except at `bos_at`."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(2, V, (batch, T), generator=g)
    x[:, list(bos_at)] = BOS
    return x


def variant_on_perturbed_baseline(base_kw: dict | None = None, **kw) -> tuple[GPT, GPT]:
    """A perturbed model built from `base_kw` and one with technique `kw` on top, carrying the same shared weights;
    the technique's own parameters keep their init."""
    base_kw = base_kw or {}
    base = perturb(build(**base_kw))
    var = build(**base_kw, **kw)
    missing, unexpected = var.load_state_dict(base.state_dict(), strict=False)
    assert not unexpected
    assert all(k.endswith(("attn_gate_w", "xsa_alpha")) for k in missing), missing
    return base, var


# ---------------------------------------------------------------- (1) off => bit-identical to the baseline

OFF = [
    {},
    {"rope_dims": 0, "rope_scaling": "none", "rope_train_seq_len": 8},
    {"xsa_layers": "none", "xsa_gated": False},
    {"attn_out_gate_width": 0},
    {"sparse_attn_gate_width": 0, "sparse_attn_gate_scale": 0.5},
    {"gated_attn": False, "gated_attn_init_std": 0.02, "gated_attn_quant_gate": False},
    {"doc_isolated": False, "attn_backend": "sdpa"},
    {"num_kv_heads": 2},
    {"fused_qkv": False},
]


@pytest.mark.parametrize("kw", OFF, ids=lambda kw: ",".join(kw) or "defaults")
def test_off_is_bit_identical_to_baseline(kw):
    base, var = perturb(build()), perturb(build(**kw))
    assert list(var.state_dict()) == list(base.state_dict())  # no parameters appear while a technique is off
    x = tokens(bos_at=(0, 9))
    assert torch.equal(var.logits(x), base.logits(x))


def _reference_baseline_attention(attn: CausalSelfAttention, x: torch.Tensor) -> torch.Tensor:
    """The foundation commit's attention forward, kept verbatim in spirit, to pin the refactor to it."""
    B, T_, D = x.shape
    q = attn.c_q(x).view(B, T_, attn.num_heads, attn.head_dim).transpose(1, 2)
    k = attn.c_k(x).view(B, T_, attn.num_kv_heads, attn.head_dim).transpose(1, 2)
    v = attn.c_v(x).view(B, T_, attn.num_kv_heads, attn.head_dim).transpose(1, 2)
    q, k = rms_norm(q), rms_norm(k)
    cos, sin = rotary_tables(T_, attn.head_dim, attn.rope_base, x.device, q.dtype)
    q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
    q = q * attn.q_gain.to(q.dtype)[None, :, None, None]
    y = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=attn.num_kv_heads != attn.num_heads)
    return attn.proj(y.transpose(1, 2).reshape(B, T_, D))


@pytest.mark.parametrize("kv", [1, 2, 4])
def test_fused_qkv_is_the_same_attention_and_gradients(kv):
    kw = dict(num_kv_heads=kv, xsa_layers="all", rope_dims=4)
    base, fused = perturb(build(**kw)), build(**kw, fused_qkv=True)
    fused.load_state_dict(base.state_dict())  # the same parameters under the same names
    x = tokens(bos_at=(0, 9))
    torch.testing.assert_close(fused.logits(x), base.logits(x), atol=1e-6, rtol=1e-6)
    fused(x, x).backward()
    base(x, x).backward()
    for (name, a), (_, b) in zip(fused.named_parameters(), base.named_parameters()):
        torch.testing.assert_close(a.grad, b.grad, atol=1e-6, rtol=1e-5, msg=name)


def test_fused_qkv_reads_each_weight_through_qat():
    from pgolf.train import qat

    x = tokens(bos_at=(0, 9))
    out = {}
    for fused in (False, True):
        m = perturb(build(fused_qkv=fused))
        qat.attach(m, bits=3)
        plain = m.logits(x)
        qat.set_enabled(m, True)
        out[fused] = m.logits(x)
        assert not torch.allclose(out[fused], plain)  # the fake-quantized weights reach the fused GEMM
    torch.testing.assert_close(out[True], out[False], atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("kv", [1, 2, 4])
def test_baseline_attention_equals_foundation_forward(kv):
    torch.manual_seed(0)
    attn = perturb(CausalSelfAttention(cfg(num_kv_heads=kv), 0))
    x = torch.randn(2, T, 32)
    assert torch.equal(attn(x), _reference_baseline_attention(attn, x))


# ---------------------------------------------------------------- (2) on at init => identity where promised

IDENTITY_AT_INIT = [  # (model it is compared with, technique switched on top)
    ({}, {"attn_out_gate_width": 12}),
    ({}, {"attn_out_gate_width": 32}),
    ({}, {"xsa_layers": "all", "xsa_gated": True}),
    ({"num_kv_heads": 1}, {"xsa_layers": "last:2", "xsa_gated": True}),
    ({}, {"rope_scaling": "ntk", "rope_train_seq_len": T}),
    ({}, {"rope_scaling": "yarn", "rope_train_seq_len": T}),
    ({"rope_dims": 4}, {"rope_scaling": "yarn", "rope_train_seq_len": 4 * T}),
    ({"rope_dims": 4}, {"rope_scaling": "ntk", "rope_train_seq_len": T}),
    ({}, {"rope_dims": HEAD_DIM}),
    ({"xsa_layers": "all"}, {"attn_out_gate_width": 8}),
]


@pytest.mark.parametrize("base_kw, kw", IDENTITY_AT_INIT,
                         ids=lambda kw: ",".join(f"{k}={v}" for k, v in kw.items()) or "baseline")
def test_identity_at_init(base_kw, kw):
    base, var = variant_on_perturbed_baseline(base_kw, **kw)
    x = tokens(bos_at=(0, 9))
    assert torch.equal(var.logits(x), base.logits(x))


@pytest.mark.parametrize("kw", [
    {"xsa_layers": "all"},
    {"rope_dims": 4},
    {"sparse_attn_gate_width": 12},
    {"gated_attn": True},
    {"rope_scaling": "ntk", "rope_train_seq_len": T // 2},
    {"rope_scaling": "yarn", "rope_train_seq_len": T // 2},
    {"doc_isolated": True},
], ids=lambda kw: ",".join(kw))
def test_techniques_that_change_the_output_do(kw):
    """The counterpart of the identity tests: these switches are NOT the identity, so the tests above can fail."""
    base, var = variant_on_perturbed_baseline(**kw)
    x = tokens(bos_at=(0, 9))
    assert not torch.allclose(var.logits(x), base.logits(x), atol=1e-5)


def _attn_pair(**kw) -> tuple[CausalSelfAttention, CausalSelfAttention]:
    torch.manual_seed(0)
    base = perturb(CausalSelfAttention(cfg(), 0))
    var = CausalSelfAttention(cfg(**kw), 0)
    var.load_state_dict(base.state_dict(), strict=False)
    return base, var


@pytest.mark.parametrize("scale", [1.0, 0.5])
def test_sparse_attn_gate_is_exactly_half_at_init(scale):
    # SparseAttnGate (TOP): sigmoid(s * 0) = 0.5, so the layer's output is halved at step 0 (not the identity).
    base, var = _attn_pair(sparse_attn_gate_width=12, sparse_attn_gate_scale=scale)
    x = torch.randn(2, T, 32)
    assert torch.equal(var(x), 0.5 * base(x))


@pytest.mark.parametrize("kw, expect", [
    ({"attn_out_gate_width": 12}, lambda z: 2 * torch.sigmoid(z)),
    ({"sparse_attn_gate_width": 12, "sparse_attn_gate_scale": 0.5}, lambda z: torch.sigmoid(0.5 * z)),
])
def test_narrow_gates_read_only_the_first_w_dims(kw, expect):
    base, var = _attn_pair(**kw)
    with torch.no_grad():
        var.attn_gate_w.normal_(0, 1.0)
    x = torch.randn(2, T, 32)
    g = var._gate(x)
    torch.testing.assert_close(g, expect(x[..., :12] @ var.attn_gate_w.T))
    x2 = x.clone()
    x2[..., 12:] += 1.0  # dims past the window change the attention but not the gate
    assert torch.equal(var._gate(x2), g)
    assert not torch.allclose(var(x), base(x))


def test_dense_gated_attn_init_halves_the_output():
    base, var = _attn_pair(gated_attn=True, gated_attn_init_std=0.005)
    assert var.attn_gate_w.shape == (4, 32)
    assert 0.003 < var.attn_gate_w.std().item() < 0.007
    x = torch.randn(2, T, 32)
    g = var._gate(x)  # sigmoid of W x with |W x| ~ 0.005 * sqrt(32): close to 0.5 everywhere
    assert g.shape == (2, T, 4) and (g - 0.5).abs().max() < 0.05
    ref = base(x)
    torch.testing.assert_close(var(x), 0.5 * ref, atol=0.02 * ref.abs().max().item(), rtol=0)


# ---------------------------------------------------------------- XSA math

def test_xsa_removes_the_own_value_component_gqa_aware():
    g = torch.Generator().manual_seed(0)
    B, H, Hkv, D = 2, 6, 3, 8
    y, v = torch.randn(B, H, T, D, generator=g), torch.randn(B, Hkv, T, D, generator=g)
    out = xsa_project_out(y, v)
    v_rep = F.normalize(v, dim=-1).repeat_interleave(H // Hkv, dim=1)  # query head h uses KV head h // group
    torch.testing.assert_close((out * v_rep).sum(-1), torch.zeros(B, H, T), atol=1e-5, rtol=0)
    torch.testing.assert_close(out + (y * v_rep).sum(-1, keepdim=True) * v_rep, y)  # only that component goes
    coef = torch.tanh(torch.linspace(-1, 1, H))
    gated = xsa_project_out(y, v, coef)
    torch.testing.assert_close((gated * v_rep).sum(-1), (1 - coef)[None, :, None] * (y * v_rep).sum(-1),
                               atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------- (3) causality and document isolation

CAUSAL = [
    {},
    {"xsa_layers": "all"},
    {"xsa_layers": "last:2", "xsa_gated": True, "num_kv_heads": 1},
    {"num_kv_heads": 4, "xsa_layers": "all"},
    {"attn_out_gate_width": 12},
    {"sparse_attn_gate_width": 8, "sparse_attn_gate_scale": 0.5},
    {"gated_attn": True},
    {"rope_dims": 4, "rope_scaling": "yarn", "rope_train_seq_len": 8},
    {"rope_scaling": "ntk", "rope_train_seq_len": 8},
    {"doc_isolated": True},
    {"attn_backend": "flex"},
    {"doc_isolated": True, "attn_backend": "flex"},
    {"attn_backend": "varlen"},
    {"doc_isolated": True, "attn_backend": "varlen", "num_kv_heads": 2},
    {"doc_isolated": True, "attn_backend": "flex", "xsa_layers": "last:2", "xsa_gated": True,
     "attn_out_gate_width": 8, "rope_dims": 4, "rope_scaling": "yarn", "rope_train_seq_len": 8},
]


@pytest.mark.parametrize("kw", CAUSAL, ids=lambda kw: ",".join(f"{k}={v}" for k, v in kw.items()) or "baseline")
def test_future_tokens_never_change_past_logits(kw):
    m = perturb(build(**kw))
    g = torch.Generator().manual_seed(3)
    x = torch.randint(0, V, (2, T), generator=g)  # BOS (1) may appear anywhere: documents come and go
    x[:, 0] = BOS
    with torch.no_grad():
        base = m.logits(x)
        for t in (0, 8, T - 2):
            x2 = x.clone()
            x2[:, t + 1:] = torch.randint(0, V, (2, T - 1 - t), generator=g)
            out = m.logits(x2)
            torch.testing.assert_close(out[:, : t + 1], base[:, : t + 1], atol=1e-6, rtol=1e-6)
            assert not torch.allclose(out[:, t + 1:], base[:, t + 1:])


@pytest.mark.parametrize("backend", ["sdpa", "flex", "varlen"])
def test_doc_isolated_other_documents_never_change_this_one(backend):
    m = perturb(build(doc_isolated=True, attn_backend=backend, xsa_layers="all"))
    plain = perturb(build(attn_backend=backend, xsa_layers="all"))
    x = tokens(bos_at=(0, 9, 17))
    x[1] = tokens(batch=1, seed=5, bos_at=(0, 4))[0]  # rows pack different document layouts
    g = torch.Generator().manual_seed(4)
    with torch.no_grad():
        base, base_plain = m.logits(x), plain.logits(x)
        x2 = x.clone()
        x2[0, 1:9] = torch.randint(2, V, (8,), generator=g)  # rewrite document 0 of row 0 (BOS kept)
        x2[1, 1:4] = torch.randint(2, V, (3,), generator=g)  # and document 0 of row 1
        out = m.logits(x2)
        torch.testing.assert_close(out[0, 9:], base[0, 9:], atol=1e-6, rtol=1e-6)  # BOS at 9 starts a new doc
        torch.testing.assert_close(out[1, 4:], base[1, 4:], atol=1e-6, rtol=1e-6)
        assert not torch.allclose(out[0, 1:9], base[0, 1:9])
        assert not torch.allclose(plain.logits(x2)[0, 9:], base_plain[0, 9:])  # without isolation it leaks
        x3 = x.clone()
        x3[0, 10:17] = torch.randint(2, V, (7,), generator=g)  # the middle document
        out = m.logits(x3)
        torch.testing.assert_close(out[0, :10], base[0, :10], atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(out[0, 17:], base[0, 17:], atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("backend", ["sdpa", "flex", "varlen"])
def test_doc_isolated_single_document_equals_plain_causal(backend):
    iso, plain = perturb(build(doc_isolated=True, attn_backend=backend)), perturb(build())
    x = tokens(bos_at=(0,))
    x[1, 0] = 5  # a row with no BOS at all is one document as well
    with torch.no_grad():
        torch.testing.assert_close(iso.logits(x), plain.logits(x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("backend", ["flex", "varlen"])
def test_backend_equals_sdpa_on_cpu(backend):
    x = tokens(bos_at=(0, 7, 15))
    with torch.no_grad():
        for doc in (False, True):
            a = perturb(build(doc_isolated=doc)).logits(x)
            b = perturb(build(doc_isolated=doc, attn_backend=backend)).logits(x)
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_varlen_takes_padded_cu_seqlens_from_outside_and_trains():
    m = perturb(build(doc_isolated=True, attn_backend="varlen", num_kv_heads=2))
    x = tokens(bos_at=(0, 9))
    extra = m.attn_inputs(x)
    cu = extra["cu_seqlens"]
    assert cu.dtype == torch.int32 and cu.numel() % CU_BUCKET == 0
    assert cu[:4].tolist() == [0, 9, T, T + 9] and (cu[5:] == 2 * T).all()  # 2 rows x 2 docs, then padding
    with torch.no_grad():
        torch.testing.assert_close(m.logits(x, **extra), m.logits(x), atol=0, rtol=0)
    loss = m(x, x, **extra)
    loss.backward()
    assert torch.isfinite(loss) and m.blocks[0].attn.c_q.weight.grad.abs().sum() > 0
    assert build(attn_backend="sdpa", doc_isolated=True).attn_inputs(x) == {}  # other backends need nothing


def test_segment_backends_refuse_to_build_cu_seqlens_inside_a_compiled_graph(monkeypatch):
    import pgolf.model.attn_backends as ab

    m = build(doc_isolated=True, attn_backend="varlen")
    monkeypatch.setattr(ab.torch.compiler, "is_compiling", lambda: True)
    with pytest.raises(RuntimeError, match=r"needs cu_seqlens.*attn_inputs"):
        m.logits(tokens(bos_at=(0, 9)))


def test_flex_trains_on_cpu_through_the_dense_fallback():
    m = perturb(build(doc_isolated=True, attn_backend="flex"))
    x = tokens(bos_at=(0, 9))
    m(x, x).backward()
    assert m.blocks[0].attn.c_q.weight.grad.abs().sum() > 0


# ---------------------------------------------------------------- config, GQA, backends, optimizer policy, compile

@pytest.mark.parametrize("kw, field", [
    ({"rope_dims": 3}, "model.rope_dims"),
    ({"rope_dims": 16}, "model.rope_dims"),
    ({"rope_scaling": "linear"}, "model.rope_scaling"),
    ({"rope_train_seq_len": 0}, "model.rope_train_seq_len"),
    ({"rope_scaling": "ntk", "rope_dims": 2}, "model.rope_scaling"),
    ({"xsa_layers": "last:9"}, "model.xsa_layers"),
    ({"xsa_layers": "bogus"}, "model.xsa_layers"),
    ({"xsa_gated": True}, "model.xsa_gated"),
    ({"attn_out_gate_width": 33}, "model.attn_out_gate_width"),
    ({"sparse_attn_gate_width": -1}, "model.sparse_attn_gate_width"),
    ({"sparse_attn_gate_width": 12, "sparse_attn_gate_scale": 0.0}, "model.sparse_attn_gate_scale"),
    ({"attn_out_gate_width": 12, "sparse_attn_gate_width": 12}, "mutually exclusive"),
    ({"attn_out_gate_width": 12, "gated_attn": True}, "mutually exclusive"),
    ({"sparse_attn_gate_width": 12, "gated_attn": True}, "model.gated_attn"),
    ({"gated_attn": True, "gated_attn_init_std": -1.0}, "model.gated_attn_init_std"),
    ({"gated_attn_quant_gate": True}, "model.gated_attn_quant_gate"),
    ({"attn_backend": "xformers"}, "model.attn_backend"),
])
def test_config_errors_name_the_field(kw, field):
    with pytest.raises(ValueError, match=field.replace(".", r"\.")):
        cfg(**kw)


@pytest.mark.skipif(importlib.util.find_spec("flash_attn_interface") is not None, reason="FA3 is installed")
def test_fa3_backend_missing_is_a_clear_error_at_build():
    with pytest.raises(ImportError, match="model.attn_backend='fa3'.*flash_attn_interface"):
        build(attn_backend="fa3")


@pytest.mark.parametrize("kv", [1, 2, 4])
def test_gqa_any_kv_count_with_every_technique(kv):
    m = perturb(build(num_kv_heads=kv, xsa_layers="all", xsa_gated=True, attn_out_gate_width=8,
                      rope_dims=4, doc_isolated=True))
    assert m.blocks[0].attn.c_k.weight.shape == (kv * HEAD_DIM, 32)
    x = tokens(bos_at=(0, 9))
    loss = m(x, x)
    loss.backward()
    assert torch.isfinite(loss) and m.blocks[3].attn.xsa_alpha.grad is not None
    assert m.blocks[3].attn.attn_gate_w.grad.abs().sum() > 0


def test_xsa_layer_pattern_and_parameter_names():
    m = build(xsa_layers="last:2", xsa_gated=True, sparse_attn_gate_width=12)
    assert [b.attn.use_xsa for b in m.blocks] == [False, False, True, True]
    names = {n for n, _ in m.named_parameters()}
    assert "blocks.3.attn.xsa_alpha" in names and "blocks.0.attn.xsa_alpha" not in names
    assert {f"blocks.{i}.attn.attn_gate_w" for i in range(4)} <= names
    table = resolve_policy(m.named_parameters(), policy_for(m.cfg))  # every new parameter lands in one row
    assert table["blocks.3.attn.xsa_alpha"].optim == "adam" and table["blocks.3.attn.xsa_alpha"].lr_key == "scalar_lr"


def test_gates_stay_fp32_in_the_training_cast():
    m = build(attn_out_gate_width=12, xsa_layers="all", xsa_gated=True)
    # cast_for_training keeps everything fp32 off CUDA; check the dtype rule it applies on CUDA
    from pgolf.model.gpt import control_param

    assert control_param("blocks.0.attn.attn_gate_w", m.blocks[0].attn.attn_gate_w)
    assert control_param("blocks.0.attn.xsa_alpha", m.blocks[0].attn.xsa_alpha)
    assert cast_for_training(m, torch.device("cpu")).blocks[0].attn.attn_gate_w.dtype == torch.float32
    cast_parameters_bf16(m)  # the rule itself, as applied on CUDA
    assert m.blocks[0].attn.attn_gate_w.dtype == torch.float32 and m.blocks[0].attn.c_q.weight.dtype == torch.float32
    assert m.tok_emb.weight.dtype == torch.bfloat16
    assert m.blocks[0].attn.rope_cos.dtype == torch.float32  # buffers are not parameters: the RoPE tables stay fp32


@pytest.mark.parametrize("backend", ["sdpa", "flex", "varlen"])
def test_compiles_fullgraph_with_every_attention_technique(backend):
    torch._dynamo.reset()
    m = perturb(build(num_layers=2, doc_isolated=True, attn_backend=backend, xsa_layers="all", xsa_gated=True,
                      attn_out_gate_width=8, rope_dims=4, rope_scaling="yarn", rope_train_seq_len=8, fused_qkv=True))
    x = tokens(bos_at=(0, 9))
    with torch.no_grad():  # FlexAttention has no CPU backward; the GPU test below covers training
        eager = m.logits(x)
        compiled = torch.compile(m.logits, fullgraph=True, backend="eager")(x, **m.attn_inputs(x))
    torch.testing.assert_close(compiled, eager, atol=1e-6, rtol=1e-6)


# ---------------------------------------------------------------- GPU

def _compiled_doc_isolated(backend: str) -> tuple[Tensor, float]:
    """bf16 logits and training loss of a compiled doc-isolated model with XSA, gate and partial RoPE on CUDA, after
    one compiled backward; cu_seqlens (varlen) from outside the graph, as the training loop passes them."""
    dev = torch.device("cuda")
    kw = dict(vocab_size=1024, num_layers=4, model_dim=256, num_heads=4, num_kv_heads=2, doc_isolated=True,
              xsa_layers="all", attn_out_gate_width=12, rope_dims=16)
    g = torch.Generator().manual_seed(0)
    x = torch.randint(2, 1024, (4, 512), generator=g)
    for row, starts in enumerate(((0, 100, 101, 300), (0, 511), (7,), (0, 128, 256, 384))):
        x[row, list(starts)] = BOS
    x = x.to(dev)
    torch.manual_seed(0)
    model = cast_for_training(perturb(GPT(ModelConfig(attn_backend=backend, **kw)), scale=0.02), dev)
    extra = model.attn_inputs(x)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss = torch.compile(model, dynamic=False, fullgraph=True)(x, x, **extra)
        loss.backward()
        with torch.no_grad():
            logits = torch.compile(model.logits, dynamic=False, fullgraph=True)(x, **extra)
    assert torch.isfinite(model.blocks[0].attn.c_q.weight.grad).all()
    return logits, loss.item()


# Skipped, not xfailed: a CUDA fault is sticky and would fail every later GPU test of the process.
# benchmarks/diag_doc_isolated.py re-checks it in child processes.
FLEX_NO_GRAD_FAULT = pytest.mark.skipif(
    torch.__version__.startswith("2.11"),
    reason="H100, torch 2.11: the compiled no-grad graph of flex with a per-document BlockMask over B > 1 rows "
           "faults (illegal address); training graphs do not (benchmarks/results/diag_doc_isolated_h100_narrowing.json)")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("backend", [pytest.param("flex", marks=FLEX_NO_GRAD_FAULT), "varlen", "fa4"])
def test_gpu_doc_isolated_backend_agrees_with_sdpa_under_compile(backend):
    if backend == "fa4" and importlib.util.find_spec("flash_attn") is None:
        pytest.skip("needs flash-attn-4 (benchmarks/fa4_wheels.sh)")
    (ref, ref_loss), (out, loss) = _compiled_doc_isolated("sdpa"), _compiled_doc_isolated(backend)
    torch.testing.assert_close(out, ref, atol=0.1, rtol=0.05)
    assert abs(loss - ref_loss) < 2e-2


def test_sdpa_priority_sets_and_restores_the_process_kernel_order():
    from pgolf.model.gpt import cast_for_training

    cudnn = int(torch.nn.attention.SDPBackend.CUDNN_ATTENTION)
    before = torch._C._get_sdp_priority_order()
    try:
        cast_for_training(GPT(ModelConfig(num_layers=1, model_dim=64, sdpa_priority="cudnn")), torch.device("cpu"))
        assert torch._C._get_sdp_priority_order()[0] == cudnn and torch.backends.cuda.cudnn_sdp_enabled()
        assert sorted(torch._C._get_sdp_priority_order()) == sorted(before)
        cast_for_training(GPT(ModelConfig(num_layers=1, model_dim=64)), torch.device("cpu"))  # the next model
        assert torch._C._get_sdp_priority_order() == before
    finally:
        torch._C._set_sdp_priority_order(before)
    with pytest.raises(ValueError, match="model.sdpa_priority"):
        ModelConfig(sdpa_priority="fastest")


@pytest.mark.gpu
def test_gpu_cudnn_sdpa_priority_matches_default_under_compile():
    from pgolf.model.gpt import cast_for_training

    dev = torch.device("cuda")
    x = torch.randint(0, 1024, (4, 1024), device=dev)
    losses = {}
    for prio in ("cudnn", "default"):
        torch._dynamo.reset()
        torch.manual_seed(0)
        model = cast_for_training(perturb(GPT(ModelConfig(sdpa_priority=prio)), scale=0.02), dev)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = torch.compile(model, dynamic=False, fullgraph=True)(x, x)
            loss.backward()
        losses[prio] = (loss.item(), model.blocks[0].attn.c_q.weight.grad.norm().item())
    assert abs(losses["cudnn"][0] - losses["default"][0]) < 2e-2
    assert abs(losses["cudnn"][1] / losses["default"][1] - 1) < 5e-2
