"""model.attn_gate_pointwise: the narrow attention gate as a multiply-sum over its inputs in fp32 instead of a GEMM.
Same function: equal losses and gradients (fp32), the same bf16 gate values as F.linear's, traced whole under a
compile; off is the GEMM as before."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import (
    assert_compiled_bf16_agree,
    assert_same_loss_and_grads,
    switch_pair,
    token_batch,
)

from pgolf.config import ModelConfig

GATES = [{"sparse_attn_gate_width": 6, "sparse_attn_gate_scale": 0.5}, {"attn_out_gate_width": 8}]


def gate_from(attn, z):
    """The gate's sigmoid over its pre-activation z, as CausalSelfAttention._gate applies it."""
    return 2.0 * torch.sigmoid(z) if attn.gate_kind == "out" else torch.sigmoid(attn.gate_scale * z)


@pytest.mark.parametrize("gate_kw", GATES)
@pytest.mark.parametrize("fused_xsa_gate", [False, True])
def test_model_switch_same_loss_and_gradients(gate_kw, fused_xsa_gate):
    base, other = switch_pair({"attn_gate_pointwise": True}, rope_dims=4, xsa_layers="all",
                              fused_xsa_gate=fused_xsa_gate, **gate_kw)
    assert all(b.attn.gate_pointwise for b in other.blocks) and not any(b.attn.gate_pointwise for b in base.blocks)
    assert_same_loss_and_grads(base, other, *token_batch())


@pytest.mark.parametrize("gate_kw", GATES)
def test_off_is_the_gemm_and_on_rounds_the_exact_sum_once(gate_kw):
    """Off: exactly the GEMM. On, in bf16: the float64 sum of the bf16 products rounded once to bf16 (products of
    bf16 numbers are exact in fp32, and these few fp32 sums round as float64's do), which a GEMM accumulating in
    fp32 gives too, up to a last bit where its summation order flips a rounding."""
    base, other = switch_pair({"attn_gate_pointwise": True}, **gate_kw)
    off, on = base.blocks[0].attn, other.blocks[0].attn
    x = torch.randn(4, 512, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        off.attn_gate_w.normal_(0.0, 0.5)  # off its zero init, so the gate depends on x
        on.attn_gate_w.copy_(off.attn_gate_w)
        gemm = F.linear(x[..., : off.gate_width], off.attn_gate_w)
        assert torch.equal(off._gate(x), gate_from(off, gemm))
        xb = x.bfloat16()
        exact = (xb[..., : on.gate_width].double().unsqueeze(-2) * on.attn_gate_w.bfloat16().double()).sum(-1)
        got = on._gate(xb)
        assert got.dtype == torch.bfloat16 and torch.equal(got, gate_from(on, exact.bfloat16()))
        torch.testing.assert_close(got.float(), off._gate(xb).float(), atol=0, rtol=2 ** -7)


def test_compiled_fullgraph_equals_eager():
    torch._dynamo.reset()
    base, other = switch_pair({"attn_gate_pointwise": True}, sparse_attn_gate_width=6, xsa_layers="all")
    x, y = token_batch(3)
    compiled = torch.compile(other, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(x, y), base(x, y), atol=1e-6, rtol=1e-6)


def test_default_off_and_needs_a_narrow_gate():
    assert ModelConfig().attn_gate_pointwise is False
    with pytest.raises(ValueError, match="attn_gate_pointwise=True computes a narrow attention gate"):
        ModelConfig(attn_gate_pointwise=True)
    with pytest.raises(ValueError, match="attn_gate_pointwise=True computes a narrow attention gate"):
        ModelConfig(attn_gate_pointwise=True, gated_attn=True)
    base, other = switch_pair({"attn_gate_pointwise": True}, attn_out_gate_width=4)
    assert [n for n, _ in base.named_parameters()] == [n for n, _ in other.named_parameters()]


@pytest.mark.gpu
@pytest.mark.parametrize("gate_kw", GATES)
def test_gpu_compiled_bf16_model_matches_plain(gate_kw):
    base, other = switch_pair({"attn_gate_pointwise": True}, rope_dims=4, xsa_layers="all", fused_xsa_gate=True,
                              **gate_kw)
    assert_compiled_bf16_agree(base.cuda(), other.cuda(), *(t.cuda() for t in token_batch(5, (4, 64))))
