"""export_model, calibration hooks and artifact round trips: `pytest tests/test_quant_export.py -q`."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from conftest import small_trained_like_gpt
from pgolf.config import QuantConfig, RunConfig, TrainConfig, apply_overrides
from pgolf.export.artifact import pack_state, read_artifact, write_artifact
from pgolf.model.gpt import GPT, control_param
from pgolf.quant.calib import collect_hessians, train_config_with_reserve
from pgolf.quant.export import export_model, needs_calibration
from pgolf.quant.int8 import quantize_state_dict
from pgolf.quant.options import payload_codec
from pgolf.quant.plan import plan_tensors
from pgolf.quant.state import dequantize_state_dict

MIXED = dict(scheme="mixed", keep_float_max_numel=256, matrix_bits=6, embed_bits=7, clip="sdclip")


def _model(seed=0) -> GPT:
    return small_trained_like_gpt(96, seed)


def _batches(n=3, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 96, (2, 24), generator=g) for _ in range(n)]


def test_default_is_the_baseline_int8_path(tmp_path):
    m = _model()
    q = QuantConfig()
    assert payload_codec(q) == "zlib" and not needs_calibration(q)
    sd = m.state_dict()
    ref = quantize_state_dict(sd, q, keep_fp32=lambda n: control_param(n, sd[n]))
    got = export_model(m, q, calib=None)
    assert pack_state(got) == pack_state(ref)
    a = write_artifact(tmp_path / "a.pgz", got, codec=payload_codec(q), meta={"m": 1})
    b = write_artifact(tmp_path / "b.pgz", ref, codec=q.codec, meta={"m": 1})
    assert a.sha256 == b.sha256


def test_hessian_hooks_see_the_right_inputs():
    m = _model()
    stats = collect_hessians(m, _batches(), max_batches=2)
    assert stats.batches == 2
    names = set(stats.hessians)
    for i in range(2):
        for s in ("attn.c_q", "attn.c_k", "attn.c_v", "attn.proj", "mlp.fc", "mlp.proj"):
            assert f"blocks.{i}.{s}.weight" in names
    assert "tok_emb.weight" in names
    h = stats.hessians
    assert torch.equal(h["blocks.0.attn.c_q.weight"], h["blocks.0.attn.c_k.weight"])  # shared attention input
    assert h["blocks.0.mlp.proj.weight"].shape == (64, 64)  # post-activation hidden of the MLP
    # the LM head's H is the final-norm output's second moment
    xs = torch.cat([m.hidden(b).reshape(-1, 32) for b in _batches()[:2]]).detach()
    torch.testing.assert_close(h["tok_emb.weight"], xs.T @ xs / xs.shape[0], rtol=1e-4, atol=1e-6)
    assert stats.counts["tok_emb.weight"] == 2 * 2 * 24
    with pytest.raises(ValueError, match="calibration"):
        collect_hessians(m, None)


def test_plan_follows_policy_and_classes():
    m = _model()
    q = QuantConfig(**MIXED, control_dtype="float16")
    plans = plan_tensors(m, q)
    assert plans["tok_emb.weight"].spec.bits == 7 and plans["tok_emb.weight"].spec.k == q.clip_k_embed
    assert plans["blocks.0.attn.c_q.weight"].spec.k == q.clip_k_attn
    assert plans["blocks.0.mlp.fc.weight"].spec.k == q.clip_k_mlp and plans["blocks.0.mlp.fc.weight"].fit
    assert plans["blocks.0.attn_scale"].kind == "float16" and plans["blocks.0.attn_scale"].cls == "control"
    small = plan_tensors(m, dataclasses.replace(q, keep_float_max_numel=4096))
    assert small["blocks.0.attn.c_q.weight"].kind == "float16"
    assert plan_tensors(m, dataclasses.replace(q, embed_bits=16))["tok_emb.weight"].kind == "float16"
    assert plan_tensors(m, dataclasses.replace(q, control_dtype="int8"))["blocks.0.resid_mix"].kind == "rows"


@pytest.mark.parametrize("extra", [
    dict(clip="search", codec="zstd"),
    dict(asym=True, clip="percentile", pack_bits=True, codec="brotli", byte_shuffle=2),
    dict(gptq=True, awq_top_k=2, awq_group=16, lqer_rank=2, lqer_top_k=2, lqer_group=16, lqer_whiten=True,
         compressor="pergroup", control_dtype="int8"),
    dict(gptq=True, matrix_bits=5, asym=True, pack_bits=True, lqer_rank=1, lqer_top_k=1, lqer_asym=False,
         compressor="pergroup"),
    {"compressor": "pergroup", "pergroup_split_bytes": 512},
])
def test_artifact_round_trip_new_schemes(tmp_path, extra):
    m = _model()
    q = QuantConfig(**{**MIXED, **extra})
    qs = export_model(m, q, calib=_batches())
    info = write_artifact(tmp_path / "x.pgz", qs, codec=payload_codec(q), meta={"quant": dataclasses.asdict(q)})
    back, manifest = read_artifact(tmp_path / "x.pgz")
    assert manifest["codec"] == payload_codec(q) and info.file_bytes == (tmp_path / "x.pgz").stat().st_size
    a, b = dequantize_state_dict(qs), dequantize_state_dict(back)
    sd = m.state_dict()
    for name, t in sd.items():
        assert torch.equal(a[name], b[name]), name
        assert b[name].dtype == t.dtype and b[name].shape == t.shape
        rel = float((b[name].float() - t.float()).norm() / t.float().norm().clamp_min(1e-12))
        assert rel < 0.5, (name, rel)  # coarse on purpose (int5, k = 13); exactness is checked above
    if q.gptq:
        assert any(t.meta.get("method") == "gptq" for t in qs.tensors.values())
    if q.lqer_rank and q.lqer_top_k:
        assert any("lqer" in t.meta for t in qs.tensors.values())
    if q.awq_top_k:
        assert sum(len(t.parts.get("awq_cols", [])) for t in qs.tensors.values()) == 2
    if q.pack_bits:
        assert any(t.meta.get("packed") for t in qs.tensors.values())
    # the model loads the decoded weights and runs
    m2 = _model(seed=9)
    m2.load_state_dict(b)
    assert torch.isfinite(m2(_batches()[0], _batches()[0])).all()


def test_gate_tensors_int8_rows():
    class Gated(nn.Module):
        def __init__(self):
            super().__init__()
            self.blocks = nn.ModuleList([nn.Module()])
            self.blocks[0].attn_gate_w = nn.Parameter(torch.randn(8, 12))
            self.blocks[0].mat = nn.Parameter(torch.randn(64, 64))

    q = QuantConfig(**{**MIXED, "keep_float_max_numel": 1024}, gate_int8=True)
    qs = export_model(Gated(), q)
    gate = qs.tensors["blocks.0.attn_gate_w"]
    assert gate.scheme == "int_row" and gate.meta["bits"] == 8 and gate.meta["clip"] == "absmax"
    assert qs.tensors["blocks.0.mat"].meta["bits"] == 6
    off = export_model(Gated(), dataclasses.replace(q, gate_int8=False))
    assert off.tensors["blocks.0.attn_gate_w"].scheme == "float"


def test_deterministic_byte_stream(tmp_path):
    q = QuantConfig(**MIXED, gptq=True, awq_top_k=1, awq_group=16, lqer_rank=2, lqer_top_k=2, compressor="pergroup")
    shas = []
    for i in range(2):
        qs = export_model(_model(), q, calib=_batches())
        shas.append(write_artifact(tmp_path / f"{i}.pgz", qs, codec=payload_codec(q), meta={}).sha256)
    assert shas[0] == shas[1]


def test_reserve_and_config_checks():
    cfg = RunConfig(train=TrainConfig(wallclock_s=90.0))
    assert train_config_with_reserve(cfg) is cfg.train
    r = apply_overrides(cfg, ["quant.gptq_reserve_s=4"])
    assert train_config_with_reserve(r).wallclock_s == 86.0
    with pytest.raises(ValueError, match="gptq_reserve_s"):
        train_config_with_reserve(apply_overrides(cfg, ["quant.gptq_reserve_s=90"]))
    with pytest.raises(ValueError, match="quant.matrix_bits"):
        QuantConfig(matrix_bits=9)
    with pytest.raises(ValueError, match="quant.gptq"):
        QuantConfig(gptq=True)  # needs scheme=mixed
    with pytest.raises(ValueError, match="quant.awq_top_k"):
        QuantConfig(scheme="mixed", awq_top_k=1)  # AWQ-lite runs inside GPTQ
    with pytest.raises(ValueError, match="quant.clip"):
        QuantConfig(scheme="mixed", clip="median")
    assert payload_codec(QuantConfig(codec="brotli", byte_shuffle=2)) == "shuf2+brotli"
    assert payload_codec(QuantConfig(compressor="pergroup")) == "pergroup"
    assert payload_codec(QuantConfig(compressor="pergroup", pergroup_split_bytes=3_000_000)) == "pergroup@3000000"
    assert payload_codec(QuantConfig(codec="zstd", pergroup_split_bytes=1000)) == "zstd"  # single codec: unused
    with pytest.raises(ValueError, match="quant.pergroup_split_bytes=-1"):
        QuantConfig(compressor="pergroup", pergroup_split_bytes=-1)
    with pytest.raises(ValueError, match="fit_budget"):
        export_model(_model(), QuantConfig(**MIXED, fit_budget=True))


def test_pipeline_mixed_export_end_to_end(byte_dataset, tmp_path, monkeypatch):
    from conftest import tiny_run_config
    from pgolf.pipeline import run

    monkeypatch.setattr("pgolf.pipeline.shipped_code_bytes", lambda: 50_000)  # minifying the package takes seconds

    cfg = tiny_run_config(byte_dataset, tmp_path / "runs", iterations=3, wallclock_s=600.0)
    q = QuantConfig(**{**MIXED, "keep_float_max_numel": 512}, gptq=True, gptq_calib_batches=2, gptq_reserve_s=1.0,
                    lqer_rank=2, lqer_top_k=1, compressor="pergroup", fit_budget=True, fit_max_iters=2)
    summary = run(dataclasses.replace(cfg, quant=q), run_id="mixed")
    run_dir = tmp_path / "runs" / "mixed"
    log = (run_dir / "train.log").read_text()
    assert "quant:calibration hessians:" in log and "batches:2" in log and "quant:fit chose alpha:" in log
    _, manifest = read_artifact(run_dir / "artifact.pgz")
    assert manifest["codec"] == "pergroup" and manifest["scheme"] == "mixed"
    assert summary["valid"] and 0 < summary["val_bpb"]["roundtrip"] < 8.5
    assert abs(summary["quant_tax_bpb"]) < 0.05


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_export_on_cuda_model(tmp_path):
    from pgolf.model.gpt import cast_for_training

    m = cast_for_training(_model(), torch.device("cuda"))  # bf16 embedding, fp32 linears, as after training
    q = QuantConfig(**MIXED, gptq=True, awq_top_k=1, awq_group=16, lqer_rank=2, lqer_top_k=2, lqer_whiten=True,
                    compressor="pergroup")
    qs = export_model(m, q, calib=[b.cuda() for b in _batches()])
    write_artifact(tmp_path / "g.pgz", qs, codec=payload_codec(q), meta={})
    back, _ = read_artifact(tmp_path / "g.pgz")
    sd = dequantize_state_dict(back)
    assert sd["tok_emb.weight"].dtype == torch.bfloat16
    m.load_state_dict(sd)
    x = _batches()[0].cuda()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        assert torch.isfinite(m(x, x))
