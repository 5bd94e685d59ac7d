"""report.throughput.mfu_budget and ``benchmarks/throughput.py --mfu-budget``: a profiled step's GPU time by kernel
kind against its FLOPs (efficiency per kind, MFU with a kind gone, the step a target MFU needs), the profiled
phase read from the switch step or given, attention's FLOPs from the preset's width."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import throughput as tp

from pgolf.presets import get_preset
from pgolf.report.throughput import mfu_budget

KINDS = {"matmul": {"ms_per_step": 200.0}, "attention": {"ms_per_step": 100.0}, "fused": {"ms_per_step": 100.0}}


def test_budget_by_kind():
    # at 1e15 FLOP/s: GEMMs worth 100 ms, attention 20 ms, of a 400 ms busy step
    b = mfu_budget(KINDS, 1e14, 2e13, 1e15, target=0.4)
    assert b["busy_ms"] == 400.0 and b["useful_ms"] == pytest.approx(120.0) and b["mfu"] == pytest.approx(0.3)
    mm, at, fu = b["kinds"]["matmul"], b["kinds"]["attention"], b["kinds"]["fused"]
    assert list(b["kinds"]) == ["matmul", "attention", "fused"]  # by time, largest first
    assert mm["efficiency"] == pytest.approx(0.5) and at["efficiency"] == pytest.approx(0.2)
    assert mm["mfu_at_full_efficiency"] == pytest.approx(120 / 300)
    assert fu["mfu_without"] == pytest.approx(120 / 300) and "efficiency" not in fu
    assert b["target"]["busy_ms"] == pytest.approx(300.0) and b["target"]["cut_share"] == pytest.approx(0.25)


def test_budget_refuses_a_profile_without_gemm_or_attention_kinds():
    with pytest.raises(ValueError, match=r"no \['attention'\] kind"):
        mfu_budget({"matmul": {"ms_per_step": 1.0}}, 1e12, 0.0, 1e15)


def throughput_json(path: Path, *, skip: int, switch_step: int | None) -> Path:
    run = {"command": "python3 -m pgolf train --preset tiny --run-id x", "batch_tokens": 1000,
           "switch_step": switch_step,
           "flops_per_token": {"flat": 1e9, "looped": 1.5e9, "virtual_layers": [4, 6], "t_eff": 100.0,
                               "switch_frac": 0.35},
           "profile": {"skip": skip, "steps": 5, "kinds": KINDS}}
    path.write_text(json.dumps({"device": "NVIDIA H100 80GB HBM3", "pgolf": run}))
    return path


@pytest.mark.parametrize("skip,phase,layers", [(0, "flat", 4), (30, "looped", 6)])
def test_cli_reads_the_profiled_phase_and_the_presets_width(tmp_path, skip, phase, layers):
    src = throughput_json(tmp_path / "t.json", skip=skip, switch_step=20)
    out = tmp_path / "b.json"
    assert tp.main(["--mfu-budget", str(src), "--out", str(out)]) == 0
    b = json.loads(out.read_text())
    attn = 6 * layers * 100.0 * get_preset("tiny").model.model_dim * 1000
    assert (b["phase"], b["preset"]) == (phase, "tiny")
    assert b["kinds"]["attention"]["ideal_ms"] == pytest.approx(attn / 989e12 * 1e3)
    flops = (1e9 if phase == "flat" else 1.5e9) * 1000
    assert b["useful_ms"] == pytest.approx(flops / 989e12 * 1e3)


def test_cli_refuses_an_unknown_or_straddling_phase(tmp_path, capsys):
    with pytest.raises(SystemExit, match="span the loop switch at step 20"):
        tp.main(["--mfu-budget", str(throughput_json(tmp_path / "a.json", skip=18, switch_step=20)),
                 "--out", str(tmp_path / "b.json")])
    unknown = throughput_json(tmp_path / "c.json", skip=0, switch_step=None)
    with pytest.raises(SystemExit, match="logged no switch step; say which phase was profiled"):
        tp.main(["--mfu-budget", str(unknown), "--out", str(tmp_path / "b.json")])
    assert tp.main(["--mfu-budget", str(unknown), "--phase", "looped", "--out", str(tmp_path / "b.json")]) == 0
    assert json.loads((tmp_path / "b.json").read_text())["phase"] == "looped"
