"""`pgolf inspect`: per-tensor table, group totals, byte budget and the PNG: `pytest tests/test_quant_inspect.py -q`."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import small_trained_like_gpt
from pgolf.config import QuantConfig
from pgolf.export.artifact import write_artifact
from pgolf.export.inspect import format_report, inspect_artifact
from pgolf.quant.export import export_model
from pgolf.quant.options import payload_codec


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("run")
    m = small_trained_like_gpt(96)
    q = QuantConfig(scheme="mixed", keep_float_max_numel=256, matrix_bits=6, embed_bits=8, clip="sdclip",
                    lqer_rank=2, lqer_top_k=1, compressor="pergroup")
    qs = export_model(m, q)
    write_artifact(d / "artifact.pgz", qs, codec=payload_codec(q), meta={"quant": "test"})
    torch.save({k: v.float() for k, v in m.state_dict().items()}, d / "model_fp32.pt")
    return d


def test_report_rows_groups_and_budget(run_dir):
    rep = inspect_artifact(run_dir / "artifact.pgz", code_bytes=12_345, png=run_dir / "bytes.png")
    rows = {r["name"]: r for r in rep["tensors"]}
    assert list(rows) == list(torch.load(run_dir / "model_fp32.pt", weights_only=True))  # every tensor, in order
    emb = rows["tok_emb.weight"]
    assert emb["shape"] == [96, 32] and emb["scheme"] == "int_row" and emb["bits"] == 8
    assert 0 < emb["rel_err"] < 0.05 and 0 < emb["compressed_bytes"] < emb["stored_bytes"]
    assert rows["blocks.0.mlp.fc.weight"]["bits"] == 6 and rows["blocks.0.mlp.fc.weight"]["group"] == "mlp.fc"
    assert rows["blocks.0.attn_scale"]["group"] == "control" and rows["blocks.0.attn_scale"]["rel_err"] < 1e-3
    assert sum(1 for r in rows.values() if "lqer" in r["extras"]) == 1
    assert list(rep["groups"])[:2] == ["tok_emb", "attn.c_q"]
    assert sum(g["tensors"] for g in rep["groups"].values()) == len(rows)
    b = rep["bytes"]
    assert b["model"] == (run_dir / "artifact.pgz").stat().st_size and b["code"] == 12_345
    assert b["total"] == b["model"] + 12_345 and b["headroom"] == 16_000_000 - b["total"]
    assert b["header_and_manifest"] + b["payload"] == b["model"]
    assert 0.5 * b["payload"] < b["attributed"] < 2.0 * b["payload"]
    png = run_dir / "bytes.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    text = format_report(rep, max_rows=5)
    assert "tok_emb.weight" in text and "headroom" in text and "mlp.fc" in text
    assert len([ln for ln in text.splitlines() if ln.startswith("blocks.")]) <= 5
    json.dumps(rep)  # JSON-able


def test_cli_inspect(run_dir, monkeypatch, capsys):
    import pgolf.export.code
    from pgolf.cli import build_parser

    monkeypatch.setattr(pgolf.export.code, "shipped_code_bytes", lambda: 1000)
    args = build_parser().parse_args(["inspect", str(run_dir / "artifact.pgz"), "--json", str(run_dir / "r.json"),
                                      "--top", "3"])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "compressed" in out and "code bytes  1,000" in out and "chart:" in out
    assert (run_dir / "artifact.bytes.png").exists()
    rep = json.loads((run_dir / "r.json").read_text())
    assert rep["bytes"]["code"] == 1000 and rep["fp32"].endswith("model_fp32.pt")


def test_split_groups_report_under_their_role(tmp_path):
    """pergroup@N names parts mlp.fc#0, mlp.fc#1, ...: the report attributes them to mlp.fc with the part's codec."""
    from pgolf.export.artifact import read_artifact
    from pgolf.export.inspect import _pergroup_codecs
    from pgolf.quant.pergroup import read_header

    q = QuantConfig(scheme="mixed", keep_float_max_numel=256, matrix_bits=6, compressor="pergroup",
                    pergroup_split_bytes=64)
    qs = export_model(small_trained_like_gpt(96), q)
    path = tmp_path / "a.pgz"
    write_artifact(path, qs, codec=payload_codec(q), meta={})
    _, manifest = read_artifact(path)
    data = path.read_bytes()
    header, _ = read_header(data[len(data) - int(manifest["payload_bytes"]):])
    parts = {g[0]: (g[1], g[2]) for g in header["g"]}
    codecs = _pergroup_codecs(path, manifest)
    assert "mlp.fc#1" in parts and "mlp.fc" in codecs and not any("#" in k for k in codecs)
    assert codecs["mlp.fc"] == parts["mlp.fc#0"]
    rep = inspect_artifact(path, code_bytes=0)
    assert rep["codec"] == "pergroup@64" and rep["groups"]["mlp.fc"]["compressed_bytes"] > 0
