"""Baseline int8 quantization and byte codecs: `pytest tests/test_quant.py -q`."""

from __future__ import annotations

import os

import pytest
import torch

from pgolf.config import QuantConfig
from pgolf.quant.codecs import CODECS, compress, decompress
from pgolf.quant.int8 import (
    CONTROL_TENSOR_PATTERNS,
    abs_quantile,
    dequantize_state_dict,
    quantize_int8_rowwise,
    quantize_state_dict,
    tensor_error_stats,
)
from pgolf.quant.state import QTensor, QuantizedState

CFG = QuantConfig()


def _heavy_matrix(rows: int, cols: int, seed: int = 0) -> torch.Tensor:
    """Rows of very different magnitudes (some below the 1/127 scale floor), with outliers."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(rows, cols, generator=g)
    row_scale = torch.logspace(-3, 1, rows)[:, None]  # 0.001 .. 10
    w = w * row_scale
    w[::7, 3] *= 40.0  # outliers that the percentile clip must cut
    return w


def test_abs_quantile_matches_torch_quantile():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(9, 301, generator=g)
    for q in (0.0, 0.5, 0.9, 0.9999984, 1.0):
        ref = torch.quantile(x.abs(), q, dim=1)
        torch.testing.assert_close(abs_quantile(x, q, dim=1), ref, rtol=0, atol=0)
        torch.testing.assert_close(abs_quantile(x, q), torch.quantile(x.abs().flatten(), q), rtol=0, atol=0)


def test_rowwise_error_bound_per_row():
    w = _heavy_matrix(256, 512)  # 131,072 elements > keep_float_max_numel
    qs = quantize_state_dict({"m.weight": w}, CFG, keep_fp32=())
    qt = qs.tensors["m.weight"]
    assert qt.scheme == "int8_row" and qt.parts["q"].dtype == torch.int8 and qt.parts["scale"].dtype == torch.float16
    assert qt.parts["q"].shape == (256, 512) and qt.parts["scale"].shape == (256,)
    assert int(qt.parts["q"].abs().max()) <= 127
    w_hat = dequantize_state_dict(qs)["m.weight"]
    s = qt.parts["scale"].double()[:, None]
    clip = abs_quantile(w, CFG.clip_percentile / 100.0, dim=1).double()[:, None]
    wd, err = w.double(), (w.double() - w_hat.double()).abs()
    unclipped = wd.abs() <= clip
    assert (~unclipped).sum() > 0, "test matrix should have clipped values"
    tol = 1e-6 * s
    assert bool((err <= s / 2 + tol)[unclipped].all()), float((err - s / 2)[unclipped].max())
    # clipped values land within s/2 of ±clip, so their error is at most |w| - clip + s/2
    bound = wd.abs() - clip + s / 2 + tol
    assert bool((err <= bound)[~unclipped].all())
    # scale = max(clip/127, 1/127) in fp16: small rows sit at the floor, large ones follow the clip
    expect = (clip.squeeze(1).float() / 127).clamp_min(1 / 127).half()
    assert torch.equal(qt.parts["scale"], expect)
    assert float(qt.parts["scale"][0]) == pytest.approx(1 / 127, rel=1e-3)
    assert float(qt.parts["scale"][-1]) > 0.1


def test_other_large_tensors_are_per_tensor_int8():
    g = torch.Generator().manual_seed(2)
    sd = {"v": torch.randn(70_000, generator=g), "t3": torch.randn(3, 200, 200, generator=g) * 3}
    qs = quantize_state_dict(sd, CFG, keep_fp32=())
    out = dequantize_state_dict(qs)
    for name, w in sd.items():
        qt = qs.tensors[name]
        assert qt.scheme == "int8_tensor" and qt.parts["scale"].dtype == torch.float32 and qt.parts["scale"].ndim == 0
        s = float(qt.parts["scale"])
        clip = float(abs_quantile(w, CFG.clip_percentile / 100.0))
        assert s == pytest.approx(clip / 127, rel=1e-6)
        err = (w - out[name]).abs()
        inside = w.abs() <= clip
        assert float(err[inside].max()) <= s / 2 * (1 + 1e-5)
        assert out[name].shape == w.shape and out[name].dtype == w.dtype


def test_small_and_nonfloat_tensors_pass_through():
    g = torch.Generator().manual_seed(3)
    sd = {
        "blocks.0.attn_scale": torch.randn(512, generator=g),  # control → fp32 exact
        "blocks.0.norm.weight": torch.randn(512, generator=g),  # small fp32 → fp16 storage
        "emb.bias": torch.randn(64, generator=g).bfloat16(),  # small bf16 → fp16 storage, back to bf16
        "half": torch.randn(8, 8, generator=g).half(),
        "scalar": torch.tensor(0.125),
        "empty": torch.zeros(0, 4),
        "steps": torch.arange(10, dtype=torch.int64),
        "mask": torch.rand(5, 5, generator=g) > 0.5,
        "big_bf16": torch.randn(300, 300, generator=g).bfloat16(),
    }
    qs = quantize_state_dict(sd, CFG, keep_fp32=CONTROL_TENSOR_PATTERNS)
    out = dequantize_state_dict(qs)
    assert list(out) == list(sd)
    for name, t in sd.items():
        assert out[name].dtype == t.dtype and out[name].shape == t.shape, name
    assert qs.tensors["blocks.0.attn_scale"].parts["w"].dtype == torch.float32
    assert torch.equal(out["blocks.0.attn_scale"], sd["blocks.0.attn_scale"])
    assert qs.tensors["blocks.0.norm.weight"].parts["w"].dtype == torch.float16
    assert torch.equal(out["blocks.0.norm.weight"], sd["blocks.0.norm.weight"].half().float())
    assert not torch.equal(out["blocks.0.norm.weight"], sd["blocks.0.norm.weight"])  # fp16 really was used
    assert torch.equal(out["emb.bias"], sd["emb.bias"].half().bfloat16())
    for name in ("half", "scalar", "steps", "mask", "empty"):
        assert torch.equal(out[name], sd[name]), name
    assert qs.tensors["steps"].scheme == "passthrough" and qs.tensors["mask"].scheme == "passthrough"
    assert qs.tensors["big_bf16"].scheme == "int8_row"
    # a predicate works the same as a pattern collection
    qs2 = quantize_state_dict(sd, CFG, keep_fp32=lambda n: n.endswith("attn_scale"))
    assert qs2.tensors["blocks.0.attn_scale"].parts["w"].dtype == torch.float32
    assert qs2.tensors["blocks.0.norm.weight"].parts["w"].dtype == torch.float16


def test_meta_is_jsonable_and_stats():
    import json

    w = torch.randn(256, 300) * 2.0
    sd = {"w": w, "b": torch.randn(300), "i": torch.ones(3, dtype=torch.int32)}
    qs = quantize_state_dict(sd, CFG, keep_fp32={"b"})
    for qt in qs.tensors.values():
        meta = json.loads(json.dumps(qt.meta))
        assert {"shape", "dtype", "bits"} <= set(meta)
    assert qs.tensors["w"].meta == {"shape": [256, 300], "dtype": "float32", "bits": 8, "clip_percentile": 99.99984}
    out = dequantize_state_dict(qs)
    stats = tensor_error_stats(sd, out, qs)
    expect = float((w.double() - out["w"].double()).norm() / w.double().norm())
    assert stats["w"]["rel_err"] == pytest.approx(expect)
    assert 0 < stats["w"]["rel_err"] < 0.02
    assert stats["b"]["rel_err"] == 0.0 and stats["i"]["rel_err"] == 0.0
    assert stats["w"]["scheme"] == "int8_row" and stats["w"]["stored_bytes"] == 256 * 300 + 256 * 2
    assert qs.summary()["by_scheme"]["int8_row"]["tensors"] == 1


def test_bad_inputs_raise_with_names():
    w = torch.randn(300, 300)
    w[5, 5] = float("nan")
    with pytest.raises(ValueError, match="'bad.weight'"):
        quantize_state_dict({"bad.weight": w}, CFG, keep_fp32=())
    with pytest.raises(ValueError, match="2-D"):
        quantize_int8_rowwise(torch.randn(4), 99.0)
    qs = QuantizedState("x", {"t": QTensor("int3_magic", {}, {"shape": [1], "dtype": "float32", "bits": 3})})
    with pytest.raises(ValueError, match="int3_magic"):
        dequantize_state_dict(qs)


@pytest.mark.parametrize("codec", [c for c in CODECS])
def test_codecs_round_trip(codec):
    rnd = os.urandom(50_000)
    w = _heavy_matrix(128, 600, seed=4)
    qt = quantize_int8_rowwise(w, CFG.clip_percentile)
    qbytes = qt.parts["q"].numpy().tobytes() + qt.parts["scale"].numpy().tobytes()
    for data in (b"", rnd, qbytes):
        blob = compress(data, codec)
        assert decompress(blob, codec) == data
        assert compress(data, codec) == blob  # deterministic
    if codec != "none":
        assert len(compress(qbytes, codec)) < 0.8 * len(qbytes)


def test_unknown_codec_is_named():
    with pytest.raises(ValueError, match="'lz4'"):
        compress(b"abc", "lz4")
    with pytest.raises(ValueError, match="'snappy'"):
        decompress(b"abc", "snappy")
