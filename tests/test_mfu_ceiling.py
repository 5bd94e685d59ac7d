"""benchmarks/mfu_ceiling.py: a profiled micro-step's MFU from its kinds and the preset's FLOPs, and the scenario
with attention at a chosen efficiency and inductor's kernels at the HBM floor."""

from __future__ import annotations

import json

import mfu_ceiling as mc
import numpy as np
import pytest

from pgolf.data.shards import write_shard
from pgolf.presets import get_preset
from pgolf.report.flops import attention_flops_per_token, phase_flops, t_eff_from_tokens

PEAK = 989e12  # H200 bf16 dense
KINDS = {"attention": 50.0, "matmul": 48.0, "fused": 22.0, "other": 5.0}


def step_file(tmp_path, *, result: dict, name: str = "model_step_p1.0.json", progress: float = 1.0) -> tuple:
    data = tmp_path / "proxy_sp8192"
    data.mkdir(exist_ok=True)
    toks = np.array(([1] + [7] * 99) * 30, dtype=np.uint16)  # documents of 100 tokens
    write_shard(data / "fineweb_train_000000.bin", toks)
    path = tmp_path / name
    path.write_text(json.dumps({"device": "NVIDIA H200", "preset": "pr1855", "data": str(data), "progress": progress,
                                "sets": ["model.attn_backend=varlen"], "results": [result]}))
    return path, toks


def base(**kw) -> dict:
    return {"variant": "base", "overrides": [], "ms_median": 132.0, "kinds": dict(KINDS), **kw}


def test_mfu_and_scenario_from_the_presets_flops(tmp_path):
    path, toks = step_file(tmp_path, result=base())
    join = tmp_path / "join.json"
    join.write_text(json.dumps({"step": {"file": str(path), "variant": "base", "step_lost_ms": 6.0}}))
    out = tmp_path / "c.json"
    assert mc.main([str(path), "--attention-efficiency", "0.25", "--inductor-join", str(join), "--out", str(out)]) == 0
    r = json.loads(out.read_text())
    cfg = get_preset("pr1855")
    t_eff = t_eff_from_tokens(toks, cfg.model.bos_id, cfg.train.seq_len)  # measured on the data's train shard
    pf = phase_flops(cfg, t_eff)
    tokens = cfg.train.micro_batch_tokens
    attn = attention_flops_per_token(pf.layers[1], t_eff, cfg.model.model_dim) * tokens / PEAK * 1e3
    mm = pf.looped * tokens / PEAK * 1e3 - attn
    assert (r["phase"], r["tokens"]) == ("looped", tokens) and r["t_eff"] == pytest.approx(t_eff)
    assert r["ideal_ms"] == pytest.approx({"attention": attn, "matmul": mm})
    assert r["mfu"]["measured"] == pytest.approx((attn + mm) / 132.0)
    assert r["mfu"]["busy"] == pytest.approx((attn + mm) / 125.0)
    sc = r["scenario"]
    assert sc["kinds_ms"] == pytest.approx({"attention": attn / 0.25, "matmul": 48.0, "fused": 16.0, "other": 5.0})
    assert sc["mfu"] == pytest.approx((attn + mm) / (attn / 0.25 + 48.0 + 16.0 + 5.0))


def test_flat_phase_and_an_older_file_without_kinds(tmp_path):
    kernels = [{"name": "void pytorch_flash::flash_fwd_kernel<...>", "us_per_step": 20000.0},
               {"name": "nvjet_sm90_tst_256x128", "us_per_step": 30000.0},
               {"name": "gemm_act_tma_kernel", "us_per_step": 10000.0},
               {"name": "triton_per_fused_add_mul_1", "us_per_step": 15000.0}]
    path, _ = step_file(tmp_path, result=base(kinds=None, kernels=kernels), progress=0.0)
    out = tmp_path / "c.json"
    assert mc.main([str(path), "--t-eff", "1000", "--out", str(out)]) == 0
    r = json.loads(out.read_text())
    assert r["phase"] == "flat" and r["t_eff"] == 1000.0
    assert r["kinds_ms"] == pytest.approx({"attention": 20.0, "matmul": 40.0, "fused": 15.0})
    assert r["scenario"]["kinds_ms"] == r["kinds_ms"]  # nothing asked: the scenario is the step as measured


@pytest.mark.parametrize("args, message", [
    (["--variant", "nope"], "no variant 'nope' (has ['base'])"),
    (["--attention-efficiency", "1.5"], "--attention-efficiency 1.5: expected a share of peak in (0, 1]"),
    (["--inductor-join", "{join}"], "joins other.json (base), not model_step_p1.0.json (base)"),
])
def test_bad_input_is_named_and_nothing_is_written(tmp_path, capsys, args, message):
    path, _ = step_file(tmp_path, result=base())
    join = tmp_path / "join.json"
    join.write_text(json.dumps({"step": {"file": "other.json", "variant": "base", "step_lost_ms": 1.0}}))
    out = tmp_path / "c.json"
    with pytest.raises(SystemExit):
        mc.main([str(path), *(a.format(join=join) for a in args), "--out", str(out)])
    assert message in capsys.readouterr().err
    assert not out.exists()
