"""model.fused_q_norm (model/q_norm_rope.py): q's rms_norm, partial RoPE and q_gain as one autograd function;
model.norm_rope_kernel: the same math for q and k as custom ops (Triton on CUDA). float64 gradcheck, the same
values and gradients as the composed ops, opcheck, the model switches on and off, fullgraph compile; on a GPU the
Triton kernels against the torch bodies and the compiled bf16 model against the plain one."""

from __future__ import annotations

import pytest
import torch
from conftest import (
    assert_compiled_bf16_agree,
    assert_same_loss_and_grads,
    assert_triton_matches_torch_body,
    needs_triton_interpreter,
    run_in_triton_interpreter,
    switch_pair,
    token_batch,
)

from pgolf.model.attn_rope import apply_partial_rotary, rope_inv_freq, rope_tables
from pgolf.model.layers import rms_norm
from pgolf.model.q_norm_rope import norm_rope, q_norm_rope


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
    base, fused = switch_pair({"fused_q_norm": True}, rope_dims=4, xsa_layers="all")
    assert not base.blocks[0].attn.fused_q_norm and fused.blocks[0].attn.fused_q_norm
    assert any("q_gain" in n for n in assert_same_loss_and_grads(base, fused, *token_batch()))


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
@pytest.mark.parametrize("switch", ["fused_q_norm", "norm_rope_kernel"])
def test_gpu_compiled_bf16_model_matches_plain(switch):
    base, fused = switch_pair({switch: True}, rope_dims=4, xsa_layers="all", sparse_attn_gate_width=4)
    assert_compiled_bf16_agree(base.cuda(), fused.cuda(), *(t.cuda() for t in token_batch(5, (4, 64))))


def strided(q):
    """q as a (B, T, H, hd) slice of a wider projection output (the layout of a fused qkv split)."""
    wide = torch.cat([q.detach(), torch.zeros_like(q)], dim=2)
    return wide[:, :, : q.shape[2]].requires_grad_()


@pytest.mark.parametrize("with_gain", [False, True])
@pytest.mark.parametrize("k", [2, 8])
def test_norm_rope_op_gradcheck(k, with_gain):
    q, cos, sin, gain = sample(k)
    q = strided(q)
    args = (q, gain) if with_gain else (q,)
    assert torch.autograd.gradcheck(lambda *a: norm_rope(a[0], cos, sin, k, a[1] if with_gain else None), args)


@pytest.mark.parametrize("with_gain", [False, True])
def test_norm_rope_op_matches_composed_ops_and_opcheck(with_gain):
    q, cos, sin, gain = sample(4, seed=5, dtype=torch.float32)
    g = gain if with_gain else None
    out = norm_rope(q, cos, sin, 4, g)
    ref = composed(q, cos, sin, 4, gain if with_gain else torch.ones_like(gain))
    assert out.is_contiguous()
    torch.testing.assert_close(out, ref, atol=1e-6, rtol=1e-5)
    dout = torch.randn(q.shape, generator=torch.Generator().manual_seed(6))
    inputs = (q, gain) if with_gain else (q,)
    for a, b in zip(torch.autograd.grad(out, inputs, dout), torch.autograd.grad(ref, inputs, dout)):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    torch.library.opcheck(torch.ops.pgolf.norm_rope.default, (strided(q), cos, sin, g, 4))
    torch.library.opcheck(torch.ops.pgolf.norm_rope_bwd.default,
                          (dout, q.detach(), cos, sin, None if g is None else g.detach(), 4))


def test_defaults_off():
    from pgolf.config import ModelConfig

    d = ModelConfig()
    assert d.fused_q_norm is False and d.norm_rope_kernel is False


@pytest.mark.parametrize("fused_q_norm,scaling", [(False, "none"), (True, "none"), (False, "yarn")])
def test_norm_rope_kernel_switch_same_loss_and_gradients(fused_q_norm, scaling):
    """Also past the training length with YaRN (T = 16 > 8): the stretched tables and the logit temperature."""
    base, fused = switch_pair({"norm_rope_kernel": True, "fused_q_norm": fused_q_norm}, rope_dims=4,
                              xsa_layers="all", rope_scaling=scaling, rope_train_seq_len=8)
    assert fused.blocks[0].attn.norm_rope_kernel and not base.blocks[0].attn.norm_rope_kernel
    assert any("q_gain" in n for n in assert_same_loss_and_grads(base, fused, *token_batch()))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("with_gain", [False, True])
@pytest.mark.parametrize("k", [16, 64])
def test_gpu_norm_rope_triton_matches_torch_body(k, with_gain, dtype):
    from pgolf.model import q_norm_rope as op

    g = torch.Generator().manual_seed(8)
    q = (3.0 * torch.randn(2, 96, 16, 64, generator=g))[:, :, 4:12].cuda().to(dtype)  # strided, 8 heads
    cos, sin = (t.cuda().to(dtype) for t in tables(96, k, torch.float32))
    gain = torch.randn(8, generator=g).cuda() if with_gain else None
    dout = torch.randn(q.shape, generator=g).cuda().to(dtype)
    assert op.uses_triton(q, cos)
    assert_triton_matches_torch_body(
        lambda: (op._norm_rope(q, cos, sin, gain, k), *op._norm_rope_bwd(dout, q, cos, sin, gain, k)),
        ("out", "dq", "dot"), dtype)


# --- CPU, where triton is installed: the kernels' indexing and math in Triton's interpreter ---

INTERPRETED = """
import torch
from pgolf.model import q_norm_rope as op, q_norm_rope_triton as k
from pgolf.model.attn_rope import rope_inv_freq, rope_tables
torch.manual_seed(0)
B, T, H, D = 2, 6, 3, 16  # 36 rows: the second program of 32 rows is partly masked
for rope_dims in (4, 8, 16):
    cos, sin = (t.transpose(1, 2) for t in rope_tables(T, rope_inv_freq(rope_dims, 10000.0), torch.float32))
    for gain in (None, torch.randn(H)):
        x = (3 * torch.randn(B, T, 2 * H, D))[:, :, H:]  # strided
        dout = torch.randn(B, H, T, 2 * D).transpose(1, 2)[..., ::2]  # hd of stride 2: copied, not misread
        torch.testing.assert_close(k.forward(x, cos, sin, gain, rope_dims), op._norm_rope(x, cos, sin, gain, rope_dims),
                                   atol=1e-5, rtol=1e-5)
        got, want = k.backward(dout, x, cos, sin, gain, rope_dims), op._norm_rope_bwd(dout, x, cos, sin, gain, rope_dims)
        for a, b in zip(got, want):
            assert a.shape == b.shape and a.dtype == b.dtype
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
print("ok")
"""


@needs_triton_interpreter
def test_triton_kernels_in_the_interpreter():
    run_in_triton_interpreter(INTERPRETED)
