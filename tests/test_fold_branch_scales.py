"""model.fold_branch_scales (model/block.py): attn_scale / mlp_scale folded into the rows of the branch's output
projection. Same logits and gradients as the unfolded model (sequential blocks, parallel lanes, loops, the fused
MLP's torch path, QAT), the same parameters, and the calibration hooks see the same inputs.
GPU (``pytest -m gpu tests/test_fold_branch_scales.py``): the compiled bf16 training step agrees with the unfolded one."""

from __future__ import annotations

import pytest
import torch
from conftest import (
    assert_compiled_bf16_agree,
    assert_same_loss_and_grads,
    loss_and_grads,
)

from pgolf.config import ModelConfig
from pgolf.model.gpt import GPT
from pgolf.model.layers import CastedLinear

STACK = {"num_layers": 5, "parallel_start_layer": 3, "num_loops": 1, "loop_start": 1, "loop_end": 2,
         "xsa_layers": "all", "mlp_act": "leaky_relu2", "ln_scale": True}


def pair(seed: int = 0, **kw) -> tuple[GPT, GPT]:
    """(unfolded, folded) models with the same perturbed weights; branch scales far from 1 and per channel."""
    def make(fold: bool) -> GPT:
        torch.manual_seed(seed)
        return GPT(ModelConfig(vocab_size=64, model_dim=32, num_heads=4, num_kv_heads=2, fold_branch_scales=fold, **kw))

    base, folded = make(False), make(True)
    with torch.no_grad():
        for p in base.parameters():
            p.add_(0.05 * torch.randn_like(p))
        for b in base.blocks:
            b.attn_scale.mul_(torch.linspace(0.2, 2.0, b.attn_scale.numel()))
            b.mlp_scale.mul_(torch.linspace(1.5, -0.5, b.mlp_scale.numel()))
    folded.load_state_dict(base.state_dict())
    return base, folded  # a fresh model runs its loops (end-of-training state)


def ids(seed: int = 0, shape=(2, 24)) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(2, 64, shape, generator=g), torch.randint(2, 64, shape, generator=g)


def test_default_off_and_no_new_parameters():
    assert ModelConfig().fold_branch_scales is False
    base, folded = pair(**STACK)
    assert [n for n, _ in folded.named_parameters()] == [n for n, _ in base.named_parameters()]
    assert not any(b.fold_scales for b in base.blocks) and all(b.fold_scales for b in folded.blocks)


@pytest.mark.parametrize("kw", [{}, STACK, {**STACK, "fused_mlp": True}], ids=["plain", "stack", "stack_fused_mlp"])
def test_same_logits_and_gradients(kw):
    base, folded = pair(**kw)
    x, y = ids()
    torch.testing.assert_close(folded.logits(x), base.logits(x), atol=1e-5, rtol=1e-5)
    gb = assert_same_loss_and_grads(base, folded, x, y)
    assert any("attn_scale" in n for n in gb) and any("mlp_scale" in n for n in gb)


def test_fold_goes_through_qat():
    from pgolf.train import qat

    x, y = ids(1)
    out = []
    for m in pair(**STACK):
        qat.attach(m, bits=4)
        qat.set_enabled(m, True)
        out.append(loss_and_grads(m, x, y))
    torch.testing.assert_close(out[1][0], out[0][0], atol=1e-6, rtol=1e-6)
    for name in out[0][1]:
        torch.testing.assert_close(out[1][1][name], out[0][1][name], atol=1e-6, rtol=1e-4, msg=name)


def test_scaled_weight_scales_rows():
    lin = CastedLinear(3, 2)
    s = torch.tensor([2.0, -1.0])
    torch.testing.assert_close(lin.scaled_weight(s), lin.weight * s[:, None])
    assert lin.scaled_weight() is lin.weight
    x = torch.randn(4, 3)
    torch.testing.assert_close(lin(x, s), s * lin(x))


def test_calibration_sees_the_same_inputs():
    from pgolf.quant.calib import collect_hessians

    x, _ = ids(2)
    stats = [collect_hessians(m, [x]) for m in pair(**STACK)]
    assert stats[0].hessians.keys() == stats[1].hessians.keys()
    for name, h in stats[0].hessians.items():
        torch.testing.assert_close(stats[1].hessians[name], h, atol=1e-5, rtol=1e-5, msg=name)


@pytest.mark.gpu
def test_gpu_compiled_bf16_step_matches_unfolded():
    base, folded = (m.cuda() for m in pair(**STACK, fused_mlp=True))
    x, y = (t.cuda() for t in ids(3, (4, 64)))
    assert_compiled_bf16_agree(base, folded, x, y)
