import math

import pytest

from pgolf.config import RunConfig, apply_overrides, from_dict
from pgolf.presets import PRESETS, get_preset, proxy_form


def test_overrides_coerce_types_and_follow_tokenizer():
    cfg = apply_overrides(RunConfig(), ["train.wallclock_s=90", "model.num_layers=11", "train.compile=false",
                                       "data.tokenizer=sp8192"])
    assert cfg.train.wallclock_s == 90.0 and cfg.model.num_layers == 11 and cfg.train.compile is False
    assert cfg.model.vocab_size == 8192


@pytest.mark.parametrize("bad, needle", [("train.nope=1", "train.nope"), ("nosuch.x=1", "nosuch"),
                                         ("model.num_layers=abc", "model.num_layers"), ("train", "section.field"),
                                         ("data.tokenizer=sp9999", "data.tokenizer")])
def test_bad_overrides_name_the_field(bad, needle):
    with pytest.raises(ValueError, match=needle.replace(".", r"\.")):
        apply_overrides(RunConfig(), [bad])


def test_invalid_values_are_rejected():
    with pytest.raises(ValueError, match="num_kv_heads"):
        apply_overrides(RunConfig(), ["model.num_kv_heads=3"])
    with pytest.raises(ValueError, match="vocab_size"):
        apply_overrides(RunConfig(), ["model.vocab_size=512"])


def test_round_trip_dict_and_presets():
    for name in PRESETS:
        cfg = get_preset(name)
        assert from_dict(cfg.to_dict()) == cfg


def test_grad_accum_keeps_global_batch():
    tc = RunConfig().train
    assert tc.grad_accum(1) == 8 and tc.grad_accum(8) == 1 and tc.grad_accum(2) == 4
    with pytest.raises(ValueError, match="batch_tokens"):
        tc.grad_accum(3)


def test_proxy_form_scales_step_horizons():
    cfg = proxy_form(get_preset("baseline"))
    assert cfg.train.batch_tokens == 98_304 and cfg.train.micro_batch_tokens == 98_304
    assert cfg.train.wallclock_s == 90 and cfg.data.corpus == "proxy"
    # one GPU instead of 8, 90 of 600 s, 524,288/98,304 more steps per token: 0.1 of the steps
    assert cfg.optim.muon_momentum_warmup_steps == round(500 * 90 / 600 * 524_288 / 98_304 / 8) == 50
    assert cfg.train.warmdown_iters == 120


def test_proxy_form_scales_weight_averaging_horizons():
    import dataclasses as dc

    p = proxy_form(get_preset("pr1855"))  # 0.15 of the steps: an EMA horizon of 1/(1-d) steps shrinks with them
    assert math.isclose(1 / (1 - p.train.ema_decay), 0.15 * 1 / (1 - 0.9965), rel_tol=1e-9)
    assert round(p.train.ema_decay, 4) == 0.9767
    base = get_preset("baseline")
    assert proxy_form(base).train.ema_decay == 0.0 and proxy_form(base).train.swa_every == 0  # off stays off
    swa = dc.replace(base, train=dc.replace(base.train, swa_every=50))
    assert proxy_form(swa).train.swa_every == 5
    bad = dc.replace(base, train=dc.replace(base.train, ema_decay=0.01))  # 1 - 0.99/0.1 < 0: cannot scale
    with pytest.raises(ValueError, match="train.ema_decay=0.01"):
        proxy_form(bad)
