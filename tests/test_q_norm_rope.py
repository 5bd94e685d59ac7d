"""model.fused_q_norm (model/q_norm_rope.py): q's rms_norm, partial RoPE and q_gain as one autograd function.
float64 gradcheck, the same values and gradients as the composed ops, the model switch on and off, fullgraph compile."""

from __future__ import annotations

import pytest
import torch
from conftest import (
    assert_grads_aligned,
    compiled_bf16_loss_and_grads,
    loss_and_grads,
    perturbed_gpt,
)

from pgolf.model.attn_rope import apply_partial_rotary, rope_inv_freq, rope_tables
from pgolf.model.layers import rms_norm
from pgolf.model.q_norm_rope import q_norm_rope


def tables(T: int, k: int, dtype=torch.float64):
    cos, sin = rope_tables(T, rope_inv_freq(k, 10000.0), dtype)
    return cos.transpose(1, 2), sin.transpose(1, 2)  # (1, T, 1, k/2), as CausalSelfAttention.rotary


def composed(q, cos, sin, k, gain):
    return apply_partial_rotary(rms_norm(q), cos, sin, k) * gain[None, None, :, None]


def sample(k: int, seed: int = 0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    q = (3.0 * torch.randn(2, 5, 3, 8, generator=g)).to(dtype).requires_grad_()
    gain = torch.tensor([0.5, -1.5, 2.0], dtype=dtype).requires_grad_()
    cos, sin = tables(5, k, dtype)
    return q, cos, sin, gain


@pytest.mark.parametrize("k", [2, 4, 8])
def test_gradcheck(k):
    q, cos, sin, gain = sample(k)
    assert torch.autograd.gradcheck(lambda a, b: q_norm_rope(a, cos, sin, k, b), (q, gain))


@pytest.mark.parametrize("k", [4, 8])
def test_matches_composed_ops(k):
    q, cos, sin, gain = sample(k, seed=1, dtype=torch.float32)
    dout = torch.randn(q.shape, generator=torch.Generator().manual_seed(2))
    out = q_norm_rope(q, cos, sin, k, gain)
    ref = composed(q, cos, sin, k, gain)
    torch.testing.assert_close(out, ref, atol=1e-6, rtol=1e-5)
    got = torch.autograd.grad(out, (q, gain), dout)
    want = torch.autograd.grad(ref, (q, gain), dout)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_bf16_is_the_plain_path_up_to_rounding():
    """Small q, where the norm's eps shows: F.rms_norm on bf16 adds fp32's epsilon, not bf16's."""
    q, cos, sin, gain = sample(4, seed=3, dtype=torch.float32)
    qb = (0.01 * q.detach()).bfloat16()
    out = q_norm_rope(qb, cos.bfloat16(), sin.bfloat16(), 4, gain.detach())
    assert out.dtype == torch.bfloat16
    ref = composed(qb, cos.bfloat16(), sin.bfloat16(), 4, gain.detach().bfloat16())
    torch.testing.assert_close(out.float(), ref.float(), atol=0.03, rtol=0.02)


def test_model_switch_same_loss_and_gradients():
    kw = {"rope_dims": 4, "xsa_layers": "all"}
    base, fused = perturbed_gpt(**kw), perturbed_gpt(**kw, fused_q_norm=True)
    fused.load_state_dict(base.state_dict())
    assert not base.blocks[0].attn.fused_q_norm and fused.blocks[0].attn.fused_q_norm
    x = torch.randint(2, 64, (2, 16), generator=torch.Generator().manual_seed(0))
    y = torch.roll(x, -1, 1)
    lb, gb = loss_and_grads(base, x, y)
    lf, gf = loss_and_grads(fused, x, y)
    torch.testing.assert_close(lf, lb, atol=1e-6, rtol=1e-6)
    assert gf.keys() == gb.keys() and any("q_gain" in n for n in gb)
    for name in gb:
        torch.testing.assert_close(gf[name], gb[name], atol=1e-6, rtol=1e-4, msg=name)


def test_fullgraph_compile_matches_eager():
    q, cos, sin, gain = sample(4, seed=4, dtype=torch.float32)
    fn = torch.compile(lambda a, b: q_norm_rope(a, cos, sin, 4, b), fullgraph=True, backend="aot_eager")
    out = fn(q, gain)
    torch.testing.assert_close(out, q_norm_rope(q, cos, sin, 4, gain))
    got = torch.autograd.grad(out.square().sum(), (q, gain))
    want = torch.autograd.grad(composed(q, cos, sin, 4, gain).square().sum(), (q, gain))
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


@pytest.mark.gpu
def test_gpu_compiled_bf16_model_matches_plain():
    kw = {"rope_dims": 4, "xsa_layers": "all", "sparse_attn_gate_width": 4}
    base, fused = perturbed_gpt(**kw).cuda(), perturbed_gpt(**kw, fused_q_norm=True).cuda()
    fused.load_state_dict(base.state_dict())
    x = torch.randint(2, 64, (4, 64), generator=torch.Generator().manual_seed(5)).cuda()
    y = torch.roll(x, -1, 1)
    (lb, gb), (lf, gf) = (compiled_bf16_loss_and_grads(m, x, y) for m in (base, fused))
    torch.testing.assert_close(lf, lb, atol=2e-2, rtol=1e-2)
    assert_grads_aligned(gf, gb)
