"""Row-wise int2..8 quantization, clip rules and bit packing: `pytest tests/test_quant_rowwise.py -q`."""

from __future__ import annotations

import itertools

import pytest
import torch

from pgolf.quant.int8 import abs_quantile
from pgolf.quant.rowwise import (
    SEARCH_PERCENTILES,
    RowSpec,
    as_rows,
    pack_qtensor,
    q_matrix,
    quantize_rowwise,
    row_grid,
)
from pgolf.quant.state import QuantizedState, dequantize_state_dict, dequantize_tensor


def _weights(rows=48, cols=96, seed=0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(rows, cols, generator=g) * torch.logspace(-3, 0, rows)[:, None]
    w[::5, 7] *= 12.0  # outliers for the clip rules
    w[3] += 0.2  # a row with a non-zero mean (asymmetric grid)
    return w


def _clip_mask(w: torch.Tensor, qt) -> tuple[torch.Tensor, torch.Tensor]:
    """Per element: step s and whether w lies inside the representable range of its row."""
    s = qt.parts["scale"].double()[:, None]
    b = qt.meta["bits"]
    if qt.scheme == "int_row":
        r = 2 ** (b - 1) - 1
        lo, hi = -r * s, r * s
    else:
        z = qt.parts["zero"].double()[:, None]
        lo, hi = (-(2 ** (b - 1)) - z) * s, (2 ** (b - 1) - 1 - z) * s
    wd = w.double()
    return s.expand_as(wd), (wd >= lo - 1e-12) & (wd <= hi + 1e-12)


@pytest.mark.parametrize("bits,sym,clip", list(itertools.product((5, 6, 7, 8), (True, False),
                                                                   ("percentile", "search", "sdclip", "absmax"))))
def test_error_bound_every_scheme(bits, sym, clip):
    w = _weights()
    spec = RowSpec(bits=bits, sym=sym, clip=clip, k=4.0, percentile=99.9)
    qt = quantize_rowwise(w, spec)
    assert qt.scheme == ("int_row" if sym else "int_row_asym")
    assert qt.parts["q"].dtype == torch.int8 and qt.parts["scale"].dtype == torch.float16
    q = qt.parts["q"].to(torch.int16)
    if sym:
        assert int(q.abs().max()) <= 2 ** (bits - 1) - 1
    else:
        assert int(q.min()) >= -(2 ** (bits - 1)) and int(q.max()) <= 2 ** (bits - 1) - 1
    w_hat = dequantize_tensor("w", qt)
    assert w_hat.shape == w.shape and w_hat.dtype == w.dtype
    s, inside = _clip_mask(w, qt)
    err = (w.double() - w_hat.double()).abs()
    assert bool((err <= s / 2 * (1 + 1e-6) + 1e-12)[inside].all()), float((err - s / 2)[inside].max())
    assert inside.float().mean() > 0.9
    if clip == "absmax":  # nothing is clipped beyond the fp16 rounding of the scale
        assert bool((err <= 0.6 * s).all())
    # error is small relative to the weights for unclipped values
    rel = float((w - w_hat)[inside].norm() / w[inside].norm())
    assert rel < {5: 0.25, 6: 0.15, 7: 0.1, 8: 0.05}[bits]


def test_sdclip_scale_is_k_std_over_r():
    w = _weights()
    for bits, k in ((6, 12.85), (5, 11.5), (8, 14.0)):
        qt = quantize_rowwise(w, RowSpec(bits=bits, clip="sdclip", k=k))
        expect = (k * w.std(dim=1) / (2 ** (bits - 1) - 1)).half()
        assert torch.equal(qt.parts["scale"], expect)
        assert qt.meta["k"] == k and qt.meta["clip"] == "sdclip"


def test_percentile_and_alpha():
    w = _weights()
    qt = quantize_rowwise(w, RowSpec(bits=6, clip="percentile", percentile=99.5))
    expect = (abs_quantile(w, 0.995, dim=1) / 31).half()
    assert torch.equal(qt.parts["scale"], expect)
    qt2 = quantize_rowwise(w, RowSpec(bits=6, clip="percentile", percentile=99.5), alpha=2.0)
    torch.testing.assert_close(qt2.parts["scale"].float(), (2 * abs_quantile(w, 0.995, dim=1) / 31).half().float())
    assert qt2.meta["alpha"] == 2.0
    # a wider step gives fewer distinct codes
    assert qt2.parts["q"].abs().float().mean() < qt.parts["q"].abs().float().mean()


@pytest.mark.parametrize("sym", (True, False))
def test_search_picks_the_row_minimum(sym):
    w = _weights(seed=3)
    spec = RowSpec(bits=5, sym=sym, clip="search")
    best = dequantize_tensor("w", quantize_rowwise(w, spec))
    mse_best = (w - best).square().mean(dim=1)
    for p in SEARCH_PERCENTILES:
        alt = quantize_rowwise(w, RowSpec(bits=5, sym=sym, clip="percentile", percentile=100 * p))
        mse = (w - dequantize_tensor("w", alt)).square().mean(dim=1)
        assert bool((mse_best <= mse * (1 + 1e-5) + 1e-12).all()), p


def test_asym_beats_sym_on_shifted_rows():
    g = torch.Generator().manual_seed(5)
    w = torch.rand(32, 64, generator=g) + 0.5  # all positive: half of a symmetric grid is wasted
    e_sym = (w - dequantize_tensor("w", quantize_rowwise(w, RowSpec(bits=5, sym=True, clip="absmax")))).norm()
    e_asym = (w - dequantize_tensor("w", quantize_rowwise(w, RowSpec(bits=5, sym=False, clip="absmax")))).norm()
    assert e_asym < 0.6 * e_sym


@pytest.mark.parametrize("bits,sym", [(5, True), (6, False), (7, True), (2, False)])
def test_packed_round_trip(bits, sym):
    w = _weights(rows=33, cols=29)  # odd sizes: the packed stream ends mid-byte
    qt = quantize_rowwise(w, RowSpec(bits=bits, sym=sym, clip="sdclip", k=3.0))
    pk = pack_qtensor(qt)
    assert pk.meta["packed"] and pk.parts["q"].dtype == torch.uint8
    assert pk.parts["q"].numel() == (33 * 29 * bits + 7) // 8
    assert torch.equal(q_matrix(pk), qt.parts["q"])
    assert torch.equal(dequantize_tensor("w", pk), dequantize_tensor("w", qt))
    assert pack_qtensor(pk) is pk  # idempotent


def test_other_ranks_and_registry():
    g = torch.Generator().manual_seed(1)
    sd = {"v": torch.randn(300, generator=g), "t3": torch.randn(4, 8, 16, generator=g).bfloat16()}
    qs = QuantizedState(scheme="mixed")
    for n, t in sd.items():
        qs.tensors[n] = quantize_rowwise(t, RowSpec(bits=8, clip="absmax"))
    out = dequantize_state_dict(qs)
    for n, t in sd.items():
        assert out[n].shape == t.shape and out[n].dtype == t.dtype
        assert float((out[n].float() - t.float()).norm() / t.float().norm()) < 0.02
    assert as_rows(sd["t3"]).shape == (4, 128)


def test_degenerate_rows_and_bad_specs():
    w = torch.zeros(4, 16)
    w[1] = 1e-12  # below the fp16 range: scale floors at 2^-24
    qt = quantize_rowwise(w, RowSpec(bits=6, clip="sdclip"))
    assert bool(torch.isfinite(qt.parts["scale"].float()).all()) and float(qt.parts["scale"].float().min()) > 0
    assert float(dequantize_tensor("w", qt).abs().max()) < 1e-6
    with pytest.raises(ValueError, match="bits"):
        RowSpec(bits=9)
    with pytest.raises(ValueError, match="clip rule 'nope'"):
        RowSpec(clip="nope")
    with pytest.raises(ValueError, match="alpha"):
        row_grid(w, RowSpec(), alpha=0.0)
    with pytest.raises(ValueError, match="fp16 range"):
        quantize_rowwise(torch.full((2, 4), 1e7), RowSpec(bits=2, clip="absmax"))
