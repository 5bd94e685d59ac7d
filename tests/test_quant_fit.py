"""Budget fitter: the artifact always lands at or under the limit: `pytest tests/test_quant_fit.py -q`."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from conftest import small_trained_like_gpt
from pgolf.config import QuantConfig
from pgolf.export.artifact import write_artifact
from pgolf.model.gpt import GPT
from pgolf.quant.export import MixedQuantizer, export_model
from pgolf.quant.fit import BudgetError, apply_prune, artifact_size, fit_to_budget, prune_order
from pgolf.quant.options import payload_codec
from pgolf.quant.plan import plan_tensors
from pgolf.quant.state import dequantize_state_dict

Q = QuantConfig(scheme="mixed", keep_float_max_numel=256, matrix_bits=6, embed_bits=6, clip="sdclip", codec="zlib",
                fit_budget=True, fit_alpha_min=0.5, fit_alpha_max=2.0, fit_max_iters=8, fit_tolerance_bytes=150)
META = {"run": "fit-test"}


@pytest.fixture(scope="module")
def model() -> GPT:
    return small_trained_like_gpt(128)


def _mq(model, q=Q) -> MixedQuantizer:
    return MixedQuantizer({k: v.detach() for k, v in model.state_dict().items()}, plan_tensors(model, q), q, None)


def _size_at(model, alpha, q=Q) -> int:
    mq = _mq(model, q)
    return artifact_size(mq.finalize(mq.build(alpha)), payload_codec(q), META)


def test_sizes_fall_with_alpha(model):
    sizes = [_size_at(model, a) for a in (0.5, 1.0, 2.0)]
    assert sizes[0] > sizes[1] > sizes[2]


@pytest.mark.parametrize("where", (0.3, 0.7))
def test_fit_upward_lands_under_limit(model, tmp_path, where):
    s1, s2 = _size_at(model, 1.0), _size_at(model, 2.0)
    limit = int(s2 + where * (s1 - s2))
    qs = export_model(model, Q, byte_limit=limit, meta=META)
    info = write_artifact(tmp_path / "a.pgz", qs, codec=payload_codec(Q), meta=META)
    assert info.file_bytes <= limit
    alpha = qs.tensors["blocks.0.mlp.fc.weight"].meta["alpha"]
    assert 1.0 < alpha <= 2.0
    assert torch.isfinite(dequantize_state_dict(qs)["tok_emb.weight"]).all()


def test_export_writes_the_fitted_trials_file_without_compressing_again(model, tmp_path, monkeypatch):
    """export_model(out_path=) with the fitter: the artifact is the chosen trial's file, byte for byte what a fresh
    write of its state gives, and the payload is compressed once per trial, not once more for the final file."""
    from pgolf.export import artifact

    s1, s2 = _size_at(model, 1.0), _size_at(model, 2.0)
    calls = []
    real = artifact.compress
    monkeypatch.setattr(artifact, "compress", lambda *a, **k: calls.append(1) or real(*a, **k))
    log = []
    qs = export_model(model, Q, byte_limit=(s1 + s2) // 2, meta=META, out_path=tmp_path / "a.pgz", log=log.append)
    trials = sum(m.startswith("quant:fit alpha:") for m in log)
    assert trials >= 2 and len(calls) == trials
    monkeypatch.setattr(artifact, "compress", real)
    fresh = write_artifact(tmp_path / "b.pgz", qs, codec=payload_codec(Q), meta=META)
    assert (tmp_path / "a.pgz").read_bytes() == (tmp_path / "b.pgz").read_bytes() and fresh.file_bytes <= (s1 + s2) // 2
    with pytest.raises(ValueError, match="needs meta"):
        export_model(model, Q, out_path=tmp_path / "c.pgz")


def test_fit_downward_uses_headroom(model):
    s_half, s1 = _size_at(model, 0.5), _size_at(model, 1.0)
    limit = int(s1 + 0.5 * (s_half - s1))
    log = []
    res = fit_to_budget(_mq(model), limit, codec=payload_codec(Q), meta=META, log=log.append)
    assert res.bytes <= limit and res.alpha < 1.0 and res.pruned == 0
    assert res.bytes == artifact_size(res.qs, payload_codec(Q), META)
    assert len(res.trials) <= Q.fit_max_iters + 1 and any("chose" in m for m in log)
    assert limit - res.bytes <= Q.fit_tolerance_bytes or len(res.trials) >= 3


def test_fit_with_alpha_min_one_only_acts_when_over(model):
    """fit_alpha_min=1 (the pr1855 preset): an artifact that fits is the unfitted export, in one trial, headroom
    unspent; one over the limit gets coarser steps until it fits."""
    q = dataclasses.replace(Q, fit_alpha_min=1.0)
    s1, s2 = _size_at(model, 1.0, q), _size_at(model, 2.0, q)
    res = fit_to_budget(_mq(model, q), s1 + 5 * q.fit_tolerance_bytes, codec=payload_codec(q), meta=META)
    assert res.alpha == 1.0 and res.bytes == s1 and len(res.trials) == 1
    res = fit_to_budget(_mq(model, q), (s1 + s2) // 2, codec=payload_codec(q), meta=META)
    assert 1.0 < res.alpha <= 2.0 and res.bytes <= (s1 + s2) // 2


def test_fit_prunes_when_alpha_is_not_enough(model):
    s2 = _size_at(model, 2.0)
    res = fit_to_budget(_mq(model), s2 - 150, codec=payload_codec(Q), meta=META)
    assert res.bytes <= s2 - 150 and res.pruned > 0 and res.alpha == 2.0
    with pytest.raises(BudgetError, match="cannot fit"):
        fit_to_budget(_mq(model), 1000, codec=payload_codec(Q), meta=META)


def test_prune_order_and_apply(model):
    mq = _mq(model)
    qs = mq.build(1.0)
    names = [n for n, p in mq.plans.items() if p.kind == "rows" and p.fit]
    order = prune_order(qs, names)
    assert order.shape[0] == 2 and order.shape[1] > 0
    def cost(t, i):
        qt = qs.tensors[names[int(t)]]
        return qt.parts["scale"].float()[int(i) // qt.parts["q"].shape[1]]

    costs = torch.stack([cost(t, i) for t, i in order.T[:50]])
    assert bool((costs[1:] >= costs[:-1]).all())  # cheapest (smallest row scale) first
    pruned = apply_prune(qs, order, names, 40)
    changed = sum(int((pruned.tensors[n].parts["q"] != qs.tensors[n].parts["q"]).sum()) for n in names)
    assert changed == 40
    for n in names:  # the original is untouched and pruned codes went from ±1 to 0
        diff = pruned.tensors[n].parts["q"] != qs.tensors[n].parts["q"]
        assert bool((qs.tensors[n].parts["q"][diff].abs() == 1).all())
        assert bool((pruned.tensors[n].parts["q"][diff] == 0).all())


def test_fit_with_pergroup_and_packing(model):
    q = dataclasses.replace(Q, compressor="pergroup", pack_bits=True, codec="zlib")
    s1 = _size_at(model, 1.0, q)
    res = fit_to_budget(_mq(model, q), s1 - 300, codec=payload_codec(q), meta=META)
    assert res.bytes <= s1 - 300
    assert res.bytes == artifact_size(res.qs, "pergroup", META)


class _LinearSizes:
    """A stand-in MixedQuantizer whose artifact shrinks by `per_unit` bytes per doubling of alpha; its `fit_numel`
    makes the fitter's first guess (fit_numel / 8 bytes per doubling) four times too timid."""

    def __init__(self, q: QuantConfig, size0: int, per_unit: int):
        self.q, self.size0, self.per_unit = q, size0, per_unit
        self.fit_numel, self.plans = 8 * 4 * per_unit, {}

    def build(self, alpha: float) -> float:
        return alpha

    def finalize(self, alpha: float) -> float:
        return alpha

    def size(self, alpha: float) -> int:
        import math
        return int(self.size0 - self.per_unit * math.log2(alpha))


def test_fit_steps_along_the_secant_when_the_first_guess_falls_short():
    """Over the limit and the slope guess too timid: the third trial follows the two measured sizes, not a jump
    to fit_alpha_max (alpha 4 and two more trials in a 2-GPU run, ~30 s each)."""
    q = dataclasses.replace(Q, fit_alpha_min=1.0, fit_alpha_max=4.0, fit_tolerance_bytes=1_000)
    mq = _LinearSizes(q, 1_000_000, 100_000)
    res = fit_to_budget(mq, 950_000, codec="zlib", meta=META, measure=mq.size)
    assert [t["fits"] for t in res.trials] == [False, False, True] and all(t["seconds"] >= 0 for t in res.trials)
    assert all(t["alpha"] < 4.0 for t in res.trials)
    assert 950_000 - 1_000 <= res.bytes <= 950_000
