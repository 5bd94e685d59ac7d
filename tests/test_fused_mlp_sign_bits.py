"""model.fused_mlp_sign_bits (model/fused_mlp.py, fused_mlp_triton.py): the fused MLP keeps post and pre's signs,
packed eight to a byte, for its backward instead of pre. The bit layout, the same forward and (up to rounding) the
same gradients as the exact path, what autograd keeps, opcheck, the model switch and its validation; the kernels in
Triton's interpreter and, on a GPU, against the torch bodies and in the compiled bf16 model."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import (
    assert_compiled_bf16_agree,
    assert_same_loss_and_grads,
    mlp_operands,
    needs_triton_interpreter,
    out_and_grads,
    run_in_triton_interpreter,
    switch_pair,
    token_batch,
)

from pgolf.config import ModelConfig
from pgolf.model import fused_mlp as fm
from pgolf.model.fused_mlp import fused_mlp, pack_signs, unpack_signs

MLP_KW = {"fused_mlp": True, "mlp_act": "leaky_relu2"}


def out_and_grads_of(args, slope, sign_bits, g_out):
    return out_and_grads(lambda *a: fused_mlp(*a, slope, sign_bits=sign_bits), args, g_out)


def test_pack_and_unpack_bit_layout():
    pre = torch.tensor([[1.0, -1.0, 2.0, 3.0, -1.0, 0.0, -2.0, 5.0] + [-1.0] * 7 + [1.0]])
    bits = pack_signs(pre)
    assert bits.dtype == torch.uint8 and bits.tolist() == [[1 + 4 + 8 + 128, 128]]  # bit j of byte g: column 8g+j
    assert torch.equal(unpack_signs(bits), pre > 0)
    rand = torch.randn(5, 64)
    assert torch.equal(unpack_signs(pack_signs(rand)), rand > 0)


@pytest.mark.parametrize("slope", [0.5, 0.0, 0.3])
def test_same_forward_and_gradients_as_the_exact_path(slope):
    args = mlp_operands()
    g_out = torch.randn(2, 20, 64, generator=torch.Generator().manual_seed(1))
    out_e, grads_e = out_and_grads_of(args, slope, False, g_out)
    out_b, grads_b = out_and_grads_of(args, slope, True, g_out)
    assert torch.equal(out_b, out_e)  # the forward does not change
    for name, a, b in zip(("x", "w_fc", "w_proj"), grads_b, grads_e, strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5, msg=name)  # fp32: sqrt(post) = |leaky(pre)|


def test_bf16_gradients_within_rounding_of_the_exact_path():
    args = mlp_operands(dtype=torch.bfloat16, seed=2)
    g_out = torch.randn(2, 20, 64, generator=torch.Generator().manual_seed(3)).bfloat16()
    ref = mlp_operands(dtype=torch.float64, seed=2)
    _, grads_ref = out_and_grads_of(ref, 0.5, False, g_out.double())
    err = {}
    for sign_bits in (False, True):
        _, grads = out_and_grads_of(args, 0.5, sign_bits, g_out)
        err[sign_bits] = [float((a.double() - want).norm() / want.norm()) for a, want in zip(grads, grads_ref)]
    for name, exact, bits in zip(("x", "w_fc", "w_proj"), err[False], err[True], strict=True):
        assert exact < 0.02 and bits < 1.25 * exact + 1e-3, (name, exact, bits)  # as close to fp64 as bf16 pre


def saved_hidden_tensors(sign_bits: bool) -> list[tuple[tuple[int, ...], torch.dtype]]:
    """Shapes and dtypes of what autograd keeps for the op's backward, (tokens x hidden)-sized or packed."""
    x, w_fc, w_proj = mlp_operands()
    kept = []

    def pack(t):
        kept.append((tuple(t.shape), t.dtype))
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fused_mlp(x, w_fc, w_proj, 0.5, sign_bits=sign_bits).sum().backward()
    return [k for k in kept if k[0][0] == 40 and k[0][1] != 64]


def test_the_backward_keeps_post_and_bits_not_pre():
    assert sorted(saved_hidden_tensors(False), key=str) == [((40, 256), torch.float32)] * 2  # pre, post
    assert sorted(saved_hidden_tensors(True), key=str) == sorted([((40, 256), torch.float32),
                                                                  ((40, 32), torch.uint8)], key=str)


def test_opcheck_with_sign_bits():
    x, w_fc, w_proj = (t.detach() for t in mlp_operands(m=16, h=128))
    x = x.flatten(0, 1)  # the op takes (tokens, d)
    torch.library.opcheck(torch.ops.pgolf.fused_mlp.default, (x.requires_grad_(), w_fc, w_proj, 0.5, True))
    _, bits, post = torch.ops.pgolf.fused_mlp(x.detach(), w_fc, w_proj, 0.5, True)
    torch.library.opcheck(torch.ops.pgolf.fused_mlp_pre_grad.default, (torch.randn(16, 64), w_proj, post, bits, 0.5))


def test_model_switch_same_loss_and_gradients():
    base, bits = switch_pair({"fused_mlp_sign_bits": True}, **MLP_KW)
    assert bits.blocks[0].mlp.sign_bits and not base.blocks[0].mlp.sign_bits
    assert_same_loss_and_grads(base, bits, *token_batch())


def test_default_off_and_needs_the_fused_mlp():
    assert ModelConfig().fused_mlp_sign_bits is False
    with pytest.raises(ValueError, match="fused_mlp_sign_bits needs model.fused_mlp=True"):
        ModelConfig(fused_mlp_sign_bits=True)
    with pytest.raises(ValueError, match="hidden 96"):
        ModelConfig(model_dim=32, mlp_mult=3.0, fused_mlp=True, fused_mlp_sign_bits=True)


# --- CPU, where triton is installed: the kernels' bit packing and epilogues in Triton's interpreter ---

INTERPRETED = """
import torch
from pgolf.model import fused_mlp_triton as k
from pgolf.model.fused_mlp import pack_signs, _fused_mlp_pre_grad
torch.manual_seed(0)
for (m, d, h, slope), cfg, tma in [((300, 64, 320, 0.5), 0, False), ((200, 64, 192, 0.0), 3, False),
                                     ((300, 64, 256, 0.5), 0, True), ((200, 64, 384, 0.3), 2, True)]:
    x, w_fc, w_proj = torch.randn(m, d), torch.randn(h, d) / d ** 0.5, torch.randn(d, h) / h ** 0.5
    config = (k.TMA_CONFIGS if tma else k.CONFIGS)[cfg]
    pre, post = k.gemm_act(x, w_fc, slope, config=config, tma=tma)
    bits, post2 = k.gemm_act(x, w_fc, slope, config=config, tma=tma, sign_bits=True)
    assert torch.equal(post2, post) and torch.equal(bits, pack_signs(pre)), (m, h, tma)
    g = torch.randn(m, d)
    got = k.gemm_act(g, w_proj.t(), slope, aux=post, bits=bits, config=config, tma=tma)
    exact = k.gemm_act(g, w_proj.t(), slope, aux=pre, config=config, tma=tma)
    body = ((g @ w_proj) * torch.where(pre > 0, 2 * post.sqrt(), -2 * slope * post.sqrt()))
    torch.testing.assert_close(got, body, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(got, exact, atol=1e-4, rtol=1e-4)
print("ok")
"""


@needs_triton_interpreter
def test_triton_kernels_with_sign_bits_in_the_interpreter():
    run_in_triton_interpreter(INTERPRETED)


# --- GPU ---

@pytest.mark.gpu
@pytest.mark.parametrize("tma", [True, False])
def test_gpu_kernels_match_the_torch_bodies(tma, monkeypatch):
    from pgolf.model import fused_mlp_triton as k

    x, w_fc, w_proj = (t.detach() for t in mlp_operands(m=1000, d=128, h=512, dtype=torch.bfloat16, device="cuda"))
    x = x.flatten(0, 1)
    bits, post = k.gemm_act(x, w_fc, 0.5, tma=tma, sign_bits=True)
    pre_ref = x @ w_fc.t()
    torch.testing.assert_close(post.float(), F.leaky_relu(pre_ref.float(), 0.5).square(), atol=2e-2, rtol=2e-2)
    agree = (unpack_signs(bits) == (pre_ref > 0)).float().mean()
    assert agree > 0.999  # near-zero pre may round differently in the kernel's accumulation order
    g = torch.randn(1000, 128, device="cuda", dtype=torch.bfloat16)
    got = k.gemm_act(g, w_proj.t().contiguous(), 0.5, aux=post, bits=bits, tma=tma)
    monkeypatch.setattr(fm, "HAS_TRITON", False)
    want = fm._fused_mlp_pre_grad(g, w_proj, post, bits, 0.5)
    torch.testing.assert_close(got.float(), want.float(), atol=3e-2, rtol=2e-2)


@pytest.mark.gpu
def test_gpu_compiled_bf16_model_matches_plain():
    base, bits = switch_pair({"fused_mlp_sign_bits": True}, model_dim=64, **MLP_KW)  # d % 64 == 0: the Triton path
    assert fm.uses_triton(torch.zeros(1, 64, device="cuda", dtype=torch.bfloat16))
    assert_compiled_bf16_agree(base.cuda(), bits.cuda(), *(t.cuda() for t in token_batch(5, (4, 64))))
