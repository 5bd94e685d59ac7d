"""RoPE (model/attn_rope.py and the attention module's cached tables): full and partial rotation, NTK / YaRN
scaling past the training length, the tables cached up to it."""

from __future__ import annotations

import math

import pytest
import torch
from test_attention import HEAD_DIM, T, apply_rotary, cfg, rotary_tables

from pgolf.config import ModelConfig
from pgolf.model.attention import CausalSelfAttention
from pgolf.model.attn_rope import (
    apply_partial_rotary,
    rope_inv_freq,
    rope_tables,
    scaled_inv_freq,
)


def test_rope_tables_equal_layers_rotary_at_full_dims():
    cos0, sin0 = rotary_tables(T, HEAD_DIM, 10000.0, torch.device("cpu"), torch.float32)
    cos1, sin1 = rope_tables(T, rope_inv_freq(HEAD_DIM, 10000.0), torch.float32)
    assert torch.equal(cos0, cos1) and torch.equal(sin0, sin1)


@pytest.mark.parametrize("kw", [{}, {"rope_dims": 4}, {"rope_dims": 4, "rope_scaling": "yarn"},
                                {"rope_scaling": "ntk", "rope_base": 500.0}])
def test_cached_rope_tables_equal_tables_built_per_call(kw):
    attn = CausalSelfAttention(cfg(rope_train_seq_len=T, **kw), 0)
    k = attn.rope_dims
    assert "rope_cos" not in attn.state_dict()  # a cache, not part of the artifact
    for t in (1, T // 2, T, 2 * T):  # up to the training length from the cache, past it stretched per call
        inv, temp = scaled_inv_freq(k, attn.rope_base, attn.rope_scaling, t, T)
        cos, sin = rope_tables(t, inv, torch.float32)
        got_cos, got_sin, got_temp = attn.rotary(t, torch.float32)
        assert got_cos.shape == (1, t, 1, k // 2) and got_temp == temp
        assert torch.equal(got_cos, cos.transpose(1, 2)) and torch.equal(got_sin, sin.transpose(1, 2))
    assert attn.rotary(T, torch.bfloat16)[0].dtype == torch.bfloat16


def test_rope_tables_follow_the_module_to_another_device_and_scaled_tables_are_built_there():
    attn = CausalSelfAttention(cfg(rope_train_seq_len=T, rope_scaling="ntk"), 0).to("meta")
    assert attn.rope_cos.device.type == "meta" and attn.rotary(2 * T, torch.float32)[0].device.type == "meta"


def test_partial_rope_rotates_only_the_first_k_dims():
    k = 4
    inv = rope_inv_freq(k, 10000.0)
    torch.testing.assert_close(inv, torch.tensor([1.0, 10000.0 ** (-2 / k)]))  # base^(-2i/k)
    cos, sin = rope_tables(T, inv, torch.float32)
    x = torch.randn(2, 3, T, HEAD_DIM)
    out = apply_partial_rotary(x, cos, sin, k)
    assert torch.equal(out[..., k:], x[..., k:])
    assert torch.equal(out[..., :k], apply_rotary(x[..., :k], cos, sin))  # rotate-half inside the k dims
    assert not torch.allclose(out[..., 1:, :k], x[..., 1:, :k])
    pairs = lambda z: z[..., : k // 2] ** 2 + z[..., k // 2: k] ** 2
    torch.testing.assert_close(pairs(out), pairs(x))  # each (i, i + k/2) pair is rotated, norm kept


def test_rope_scaling_formulas():
    k, base, L = 8, 10000.0, 16
    for scaling in ("none", "ntk", "yarn"):  # identity up to the training length
        inv, temp = scaled_inv_freq(k, base, scaling, L, L)
        assert torch.equal(inv, rope_inv_freq(k, base)) and temp == 1.0
    s = 4.0
    inv, temp = scaled_inv_freq(k, base, "ntk", int(s * L), L)
    torch.testing.assert_close(inv, rope_inv_freq(k, base * s ** (k / (k - 2))))
    assert temp == 1.0
    L = 1024
    theta = rope_inv_freq(k, base)
    inv, temp = scaled_inv_freq(k, base, "yarn", int(s * L), L)
    rotations = L * theta / (2 * math.pi)
    fast, slow = rotations > 32, rotations < 1
    assert fast.any() and slow.any()
    torch.testing.assert_close(inv[fast], theta[fast])  # high frequencies extrapolate (unchanged)
    torch.testing.assert_close(inv[slow], theta[slow] / s)  # low frequencies interpolate (PI)
    mid = ~(fast | slow)
    assert ((inv[mid] < theta[mid]) & (inv[mid] > theta[mid] / s)).all()
    assert temp == pytest.approx((0.1 * math.log(s) + 1) ** 2)


def test_run_config_ties_rope_train_seq_len_to_train_seq_len():
    from pgolf.config import RunConfig, TrainConfig, apply_overrides

    run = RunConfig(train=TrainConfig(seq_len=1024), model=ModelConfig(rope_scaling="ntk", rope_train_seq_len=1024))
    with pytest.raises(ValueError, match=r"model\.rope_train_seq_len=1024.*train\.seq_len=2048"):
        apply_overrides(run, ["train.seq_len=2048"])
    assert apply_overrides(run, ["train.seq_len=2048", "model.rope_train_seq_len=2048"]).train.seq_len == 2048
