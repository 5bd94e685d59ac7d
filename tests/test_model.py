import torch

from pgolf.config import ModelConfig
from pgolf.model.gpt import GPT, count_params


def small_cfg(**kw):
    return ModelConfig(vocab_size=64, num_layers=3, model_dim=32, num_heads=4, num_kv_heads=2, **kw)


def test_baseline_parameter_count_matches_official():
    # the official train_gpt.py logs model_params:17059912 for the naive baseline
    assert count_params(GPT(ModelConfig())) == 17_059_912


def test_blocks_are_identity_at_init():
    torch.manual_seed(0)
    m = GPT(small_cfg())
    x = torch.randint(0, 64, (2, 16))
    h = torch.nn.functional.rms_norm(m.tok_emb(x), (32,))
    # zero-init projections: every block returns its input; the skips add encoder outputs == x0
    skips = m.num_encoder_layers
    expected = torch.nn.functional.rms_norm(h * (1 + min(skips, m.num_decoder_layers)), (32,))
    torch.testing.assert_close(m.hidden(x), expected, atol=1e-5, rtol=1e-5)


def test_causality_future_tokens_never_change_past_logits():
    torch.manual_seed(0)
    m = GPT(small_cfg())
    for p in m.parameters():  # leave the zero init so attention really mixes positions
        p.data.add_(0.05 * torch.randn_like(p))
    x = torch.randint(0, 64, (1, 24))
    base = m.logits(x)
    for t in (0, 7, 22):
        x2 = x.clone()
        x2[0, t + 1:] = torch.randint(0, 64, (23 - t,))
        torch.testing.assert_close(m.logits(x2)[0, : t + 1], base[0, : t + 1])
        if t < 22:
            assert not torch.allclose(m.logits(x2)[0, t + 1:], base[0, t + 1:])


def test_token_losses_match_mean_loss():
    torch.manual_seed(0)
    m = GPT(small_cfg())
    x, y = torch.randint(0, 64, (2, 16)), torch.randint(0, 64, (2, 16))
    torch.testing.assert_close(m.token_losses(x, y).mean(), m(x, y))


def test_softcap_bounds_logits():
    m = GPT(small_cfg(logit_softcap=5.0))
    m.tok_emb.weight.data.mul_(1000)
    assert m.logits(torch.randint(0, 64, (1, 8))).abs().max() <= 5.0


def test_attention_gates_route_to_scalar_adam():
    from pgolf.optim.policy import policy_for, resolve_policy

    cfg = small_cfg(attn_out_gate_width=8)
    rows = resolve_policy(GPT(cfg).named_parameters(), policy_for(cfg))
    gate = [n for n in rows if "attn_gate_w" in n]
    assert gate and all(rows[n].optim == "adam" and rows[n].lr_key == "scalar_lr" for n in gate)
