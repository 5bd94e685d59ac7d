"""GPTQ, LQER and AWQ-lite on a synthetic layer with correlated inputs: `pytest tests/test_quant_gptq.py -q`."""

from __future__ import annotations

import pytest
import torch

from pgolf.quant.awq import group_saliency, protect_mask, select_groups
from pgolf.quant.gptq import gptq_quantize, hessian_error, layer_output_error
from pgolf.quant.lqer import lqer_correction, lqer_fit
from pgolf.quant.rowwise import Grid, RowSpec, row_grid


def _layer(rows=64, cols=128, n=4096, seed=0):
    """Inputs with a decaying spectrum and a shared offset (strongly correlated columns)."""
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(cols, cols, generator=g) * torch.logspace(0, -2, cols)[None, :]
    x = torch.randn(n, cols, generator=g) @ mix.T + 0.3 * torch.randn(n, 1, generator=g)
    w = torch.randn(rows, cols, generator=g)
    return x, w, x.T @ x / n


@pytest.mark.parametrize("bits", (4, 5, 6))
def test_gptq_beats_rounding(bits):
    x, w, h = _layer()
    grid = row_grid(w, RowSpec(bits=bits, clip="sdclip", k=3.0))
    rtn = layer_output_error(x, w, grid.dequantize(grid.quantize(w)))
    q = gptq_quantize(w, h, grid, block=32)
    assert float(q.abs().max()) <= 2 ** (bits - 1) - 1 and torch.equal(q, q.round())
    gptq = layer_output_error(x, w, grid.dequantize(q))
    assert gptq < 0.6 * rtn, (gptq, rtn)
    # act-order helps on top of plain GPTQ here; both beat rounding
    plain = layer_output_error(x, w, grid.dequantize(gptq_quantize(w, h, grid, block=32, act_order=False)))
    assert gptq < plain < rtn


def test_hessian_error_matches_layer_output():
    x, w, h = _layer(rows=16, cols=32, n=512)
    w_hat = w + 0.01 * torch.randn(16, 32)
    direct = float((x @ (w - w_hat).T).square().sum()) / x.shape[0]
    assert hessian_error(h, w, w_hat) == pytest.approx(direct, rel=1e-4)


def test_gptq_dead_columns_and_blocks():
    x, w, h = _layer(rows=8, cols=40, n=256)
    h[:, 5] = 0
    h[5, :] = 0  # an input that is never active
    grid = row_grid(w, RowSpec(bits=5, clip="absmax"))
    for block in (1, 7, 128):
        q = gptq_quantize(w, h, grid, block=block)
        assert bool((q[:, 5] == 0).all())
    with pytest.raises(ValueError, match="do not match"):
        gptq_quantize(w, h[:10, :10], grid)


def test_gptq_asymmetric_grid():
    x, w, h = _layer(rows=32, cols=64, n=1024, seed=2)
    w = w + 0.5
    grid = row_grid(w, RowSpec(bits=5, sym=False, clip="absmax"))
    q = gptq_quantize(w, h, grid)
    assert float(q.min()) >= -16 and float(q.max()) <= 15
    assert layer_output_error(x, w, grid.dequantize(q)) < layer_output_error(x, w, grid.dequantize(grid.quantize(w)))


@pytest.mark.parametrize("asym", (True, False))
def test_lqer_lowers_error_further(asym):
    x, w, h = _layer()
    grid = row_grid(w, RowSpec(bits=6, clip="sdclip", k=3.0))
    w_gptq = grid.dequantize(gptq_quantize(w, h, grid, block=32))
    base = layer_output_error(x, w, w_gptq)
    parts, meta = lqer_fit(w - w_gptq, rank=8, asym=asym, group=16, hessian=h)
    assert parts["lqer_qa"].shape == (64, 8) and parts["lqer_qb"].shape == (8, 128)
    if asym:
        assert int(parts["lqer_qa"].min()) >= -2 and int(parts["lqer_qa"].max()) <= 1
        assert int(parts["lqer_qb"].min()) >= -8 and int(parts["lqer_qb"].max()) <= 7
        assert parts["lqer_sb"].numel() == 8 * 128 // 16
    corrected = layer_output_error(x, w, w_gptq + lqer_correction(parts, meta))
    assert corrected < 0.9 * base, (corrected, base)
    # without whitening it still lowers ||E||_F
    parts2, meta2 = lqer_fit(w - w_gptq, rank=8, asym=asym, group=16)
    e = w - w_gptq
    assert float((e - lqer_correction(parts2, meta2)).norm()) < 0.9 * float(e.norm())


def test_awq_groups_and_protected_columns():
    x, w, h = _layer(rows=32, cols=128, n=2048, seed=4)
    w[:, 64:96] *= 6.0  # make one group clearly salient
    sal = group_saliency(w, h, 32)
    assert sal.shape == (4,) and int(sal.argmax()) == 2
    chosen = select_groups({"a": w, "b": w * 0.01}, {"a": h, "b": h}, group=32, top_k=1)
    assert chosen == {"a": [64]}
    assert select_groups({"a": w}, {"a": h}, group=32, top_k=2) == {"a": sorted([64, int(sal.argsort()[-2]) * 32])}
    grid = row_grid(w, RowSpec(bits=5, clip="sdclip", k=3.0))
    mask = protect_mask(128, [64], 32)
    hi = Grid((grid.scale * 15 / 127).half().float(), None, -127, 127)
    q = gptq_quantize(w, h, grid, hi=hi, protect=mask)
    assert float(q[:, mask].abs().max()) > 15  # the protected group uses the int8 range
    w_hat = grid.dequantize(q)
    w_hat[:, mask] = hi.dequantize(q[:, mask])
    plain = grid.dequantize(gptq_quantize(w, h, grid))
    assert layer_output_error(x, w, w_hat) < layer_output_error(x, w, plain)
    with pytest.raises(ValueError, match="hi"):
        gptq_quantize(w, h, grid, protect=mask)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gptq_on_cuda_matches_cpu():
    x, w, h = _layer()
    grid = row_grid(w, RowSpec(bits=6, clip="sdclip", k=3.0))
    q_cpu = gptq_quantize(w, h, grid, block=32)
    gc = Grid(grid.scale.cuda(), None, grid.qmin, grid.qmax)
    q_gpu = gptq_quantize(w.cuda(), h.cuda(), gc, block=32).cpu()
    assert float((q_cpu == q_gpu).float().mean()) > 0.99  # rounding ties may differ in a few codes
    rtn = layer_output_error(x, w, grid.dequantize(grid.quantize(w)))
    assert layer_output_error(x, w, grid.dequantize(q_gpu)) < 0.6 * rtn


def test_calibration_computes_one_gram_for_q_k_v(monkeypatch):
    """c_q, c_k and c_v see the same input tensor: one X^T X serves all three, and the sums stay separate."""
    from conftest import small_trained_like_gpt

    from pgolf.quant import calib

    m = small_trained_like_gpt()
    batches = [torch.randint(0, 96, (2, 16), generator=torch.Generator().manual_seed(i)) for i in range(2)]
    class Uncached(calib.HessianCollector):
        def add(self, name, x):
            self._last = None
            super().add(name, x)

    monkeypatch.setattr(calib, "HessianCollector", Uncached)
    want = calib.collect_hessians(m, batches).hessians
    monkeypatch.undo()
    seen = []
    real = calib.gram
    monkeypatch.setattr(calib, "gram", lambda x: seen.append(x.shape) or real(x))
    got = calib.collect_hessians(m, batches).hessians
    # per block: one gram for q/k/v, one each for attn.proj, mlp.fc, mlp.proj; plus the head's
    assert len(seen) == 2 * (4 * len(m.blocks) + 1)
    assert got.keys() == want.keys()
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=0, atol=0, msg=name)
    q, k = (got[f"blocks.0.attn.c_{s}.weight"] for s in "qk")
    assert torch.equal(q, k) and q.data_ptr() != k.data_ptr()


@pytest.mark.gpu
def test_gram_bf16_tensor_cores_match_fp32():
    from pgolf.quant.calib import gram

    x = torch.randn(4096, 256, device="cuda").bfloat16()
    got = gram(x)
    want = x.float().T @ x.float()
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-3)
