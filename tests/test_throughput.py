"""benchmarks/throughput.py on CPU: the record's and pgolf's log formats, phase rates, the literal patches of the
record script, its cu_seqlens bucket, the FlashAttention-3 shim, and one tiny pgolf run end to end."""

from __future__ import annotations

import ast
import importlib.util
import json
import math
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import throughput as tp
import torch

from pgolf.report import throughput as TP

ROOT = Path(__file__).resolve().parents[1]
MIRROR = Path("/work/.mirror/openai+parameter-golf/repo")
RECORD = "records/track_10min_16mb/2026-04-27_SP8192_LQER_SparseGate_BOSSmearFix_9HpStack_1.0611/train_gpt.py"


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod  # dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


rec = sys.modules["record1855"]  # imported by throughput.py from its folder
shim = _load("fa3_shim_under_test", ROOT / "benchmarks" / "shims" / "flash_attn_interface.py")


def record_source() -> str:
    local = ROOT / ".peers" / "pr1855_train_gpt.py"
    if local.exists():
        return local.read_text()
    if not MIRROR.exists():
        pytest.skip("record #1855 train_gpt.py not available (no .peers copy, no repo mirror)")
    r = subprocess.run(["git", "-C", str(MIRROR), "show", f"HEAD:{RECORD}"], capture_output=True, text=True)
    if r.returncode:
        pytest.skip(f"record script not in the mirror: {r.stderr.strip()}")
    return r.stdout


# Lines from the record's train_seed42.log (8xH100; its header, step lines, loop switch and end of training).
RECORD_LOG = """\
Hyperparameters:
  enable_looping_at: 0.35
  grad_accum_steps: 1
  num_layers: 11
  smear_gate_enabled: True
  train_batch_tokens: 786432
train_shards: 80
val_tokens: 47851520
model_params:35945671
warmup_cu_buckets:64,128,192,256 iters_each:3
1/20000 train_loss: 9.0087 train_time: 0.0m tok/s: 17921784
5/20000 train_loss: 7.9438 train_time: 0.0m tok/s: 6200017
500/20000 train_loss: 2.5615 train_time: 0.8m tok/s: 8217810
1000/20000 train_loss: 2.8022 train_time: 1.6m tok/s: 8195099
1500/20000 train_loss: 2.6163 train_time: 2.4m tok/s: 8184986
2000/20000 train_loss: 2.6506 train_time: 3.2m tok/s: 8167705
layer_loop:enabled step:2178 frac:0.350 encoder:[0, 1, 2, 3, 4, 5, 3, 4] decoder:[5, 3, 4, 5, 6, 7, 8, 9, 10]
2500/20000 train_loss: 2.5404 train_time: 4.3m tok/s: 7705526
3000/20000 train_loss: 2.5556 train_time: 5.4m tok/s: 7245517
4500/20000 train_loss: 2.2771 train_time: 9.0m tok/s: 6589668
4945/20000 val_loss: 2.3539 val_bpb: 1.0756
stopping_early: wallclock_cap train_time: 599592ms step: 4945/20000
peak memory allocated: 41717 MiB reserved: 47140 MiB
"""

# pgolf's train.log format (train/loop.py)
PGOLF_LOG = """\
model_params:17059912 world_size:1 grad_accum:1 micro_batch_tokens:98304 batch_tokens:98304 seq_len:1024
warmup:20 steps primed, state restored
step:1/20000 loss:6.9130 lr_mul:1.000 train_time:0.1s tok/s:1.032M epoch:0.002 eta:1m29s
step:5/20000 loss:6.5434 lr_mul:1.000 train_time:0.4s tok/s:1.424M epoch:0.011 eta:1m29s
step:200/20000 loss:3.3360 lr_mul:1.000 train_time:11.5s tok/s:1.728M epoch:0.454 eta:1m18s
step:400/20000 loss:2.5280 lr_mul:1.000 train_time:22.8s tok/s:1.731M epoch:0.909 eta:1m07s
stopped:wallclock step:1584 train_time:90.0s epochs:3.599
"""


def test_parse_record_log():
    r = rec.parse_record_log(RECORD_LOG)
    tr = r["trace"]
    assert (tr.steps, tr.train_time_s, tr.switch_step, tr.batch_tokens) == (4945, 599.592, 2178.0, 786_432)
    assert (r["peak_mem_mib"], r["peak_reserved_mib"], r["model_params"]) == (41717, 47140, 35945671)
    assert r["hparams"] == {"enable_looping_at": "0.35", "grad_accum_steps": "1", "num_layers": "11",
                            "smear_gate_enabled": "True", "train_batch_tokens": "786432"}
    assert tr.points[2] == (500, pytest.approx(500 * 786432 / 8217810))  # cumulative tok/s -> seconds
    st = TP.phase_stats(tr)
    t5, t2000 = 5 * 786432 / 6200017, 2000 * 786432 / 8167705
    t2500, t4500 = 2500 * 786432 / 7705526, 4500 * 786432 / 6589668
    assert st["flat"]["tokens_per_s"] == pytest.approx(1995 * 786432 / (t2000 - t5))
    assert st["looped"]["tokens_per_s"] == pytest.approx(2000 * 786432 / (t4500 - t2500))
    assert (st["looped"]["from_step"], st["looped"]["to_step"]) == (2500, 4500)
    assert st["flat"]["step_time_s"] == pytest.approx(0.0962, abs=1e-3)  # techniques.md §5: ~96 ms
    assert st["looped"]["step_time_s"] == pytest.approx(0.141, abs=1e-3)  # ~141 ms
    assert st["overall"]["tokens_per_s"] == pytest.approx(4945 * 786432 / 599.592)


def test_record_log_cut_by_a_crash_after_the_last_step_line():
    text = RECORD_LOG.split("4945/20000 val_loss")[0] + "Traceback (most recent call last):\n  TypeError: x\n"
    r = rec.parse_record_log(text)
    assert r["traceback"] and not r["stopped_by_cap"] and r["peak_mem_mib"] is None
    assert r["trace"].steps == 4500 and r["trace"].train_time_s == pytest.approx(4500 * 786432 / 6589668)


def test_parse_pgolf_log():
    r = TP.parse_pgolf_log(PGOLF_LOG)
    assert r["points"] == [(1, 0.1), (5, 0.4), (200, 11.5), (400, 22.8)]
    assert (r["steps"], r["train_time_s"], r["stopped_by"], r["batch_tokens"]) == (1584, 90.0, "wallclock", 98304)
    assert r["peak_mem_mib"] is None
    new = PGOLF_LOG.replace("train_time:90.0s epochs:3.599", "train_time:90.012s epochs:3.599 peak_mem_mib:10547")
    assert TP.parse_pgolf_log(new)["train_time_s"] == 90.012 and TP.parse_pgolf_log(new)["peak_mem_mib"] == 10547
    both = TP.parse_pgolf_log(new.replace("peak_mem_mib:10547", "peak_mem_mib:10547 peak_reserved_mib:12001"))
    assert (both["peak_mem_mib"], both["peak_reserved_mib"]) == (10547, 12001)
    assert TP.parse_pgolf_log(new)["peak_reserved_mib"] is None  # logs from before the field
    cut = TP.parse_pgolf_log(PGOLF_LOG.split("stopped:")[0])  # stopped before the end of training
    assert (cut["steps"], cut["train_time_s"], cut["stopped_by"]) == (400, 22.8, None)


def test_clock_warnings_are_read_and_stop_the_targets_being_judged(monkeypatch):
    """The watch's lines (train/watch.py, as the loop logs them) reach the benchmark's pgolf block; a run that
    compiled or stalled inside its clock gets no verdict on the targets."""
    from pgolf.train import watch as watch_mod

    monkeypatch.setattr(watch_mod, "compiled_graphs", lambda: 0)
    w = watch_mod.ClockWatch(base=0)
    lines = w.check(1, 1, 1.0) + w.check(2, 1, 1.0)
    monkeypatch.setattr(watch_mod, "compiled_graphs", lambda: 2)
    lines += w.check(3, 1, 9.0)
    assert len(lines) == 2
    text = PGOLF_LOG.replace("stopped:", "\n".join(lines) + "\nstopped:")
    assert TP.parse_pgolf_log(text)["clock_warnings"] == lines and TP.parse_pgolf_log(PGOLF_LOG)["clock_warnings"] == []
    phases = {"overall": {"tokens_per_s": 2.0}, "flat": {"tokens_per_s": 2.0}, "looped": None}
    rec_phases = {"overall": {"tokens_per_s": 1.0}, "flat": {"tokens_per_s": 1.0}, "looped": None}
    clean = tp.compare({"record": {"phases": rec_phases}, "pgolf": {"phases": phases, "mfu": {"overall": 0.5}}})
    assert clean["meets_targets"] == {"tokens_per_s_ratio": True, "mfu": True}
    dirty = tp.compare({"record": {"phases": rec_phases},
                        "pgolf": {"phases": phases, "mfu": {"overall": 0.5}, "clock_warnings": lines}})
    assert dirty["meets_targets"] is None and dirty["not_judged"].startswith("2 clock warning(s)")


def test_load_pgolf_run_prefers_the_summary_curve(tmp_path):
    from pgolf.fileio import atomic_write_json
    from pgolf.presets import get_preset

    cfg = get_preset("pr1855")
    atomic_write_json(tmp_path / "config.json", cfg.to_dict())
    (tmp_path / "train.log").write_text(PGOLF_LOG)
    tr, summary, log, got = TP.load_pgolf_run(tmp_path)
    assert got == cfg and summary == {} and tr.points == log["points"] and tr.steps == 1584
    assert tr.switch_time == pytest.approx(0.35 * 599.5) and tr.switch_step is None and tr.batch_tokens == 786_432
    curve = [{"step": 5, "train_time_s": 0.412, "train_loss": 3.0}, {"step": 5, "train_time_s": 0.5, "val_bpb": 2.0}]
    atomic_write_json(tmp_path / "summary.json", {"steps": 7, "train_time_s": 0.6, "curve": curve})
    tr, summary, _, _ = TP.load_pgolf_run(tmp_path)
    assert tr.points == [(5, 0.412)] and (tr.steps, tr.train_time_s) == (7, 0.6) and summary["steps"] == 7


def test_phase_stats_by_switch_time_leaves_out_the_span_across_it():
    # 1 s/step for 20 steps, then 2 s/step; loops switch on at t = 20 s; points every 5 steps
    pts = [(s, float(s)) for s in range(5, 21, 5)] + [(20 + s, 20.0 + 2 * s) for s in range(5, 41, 5)]
    pts.insert(4, (22, 24.0))  # a point inside the looped phase right after the switch
    tr = TP.Trace(points=pts, steps=60, train_time_s=100.0, batch_tokens=1000, switch_time=21.0)
    st = TP.phase_stats(tr, skip_steps=5)
    assert st["flat"]["tokens_per_s"] == pytest.approx(1000.0) and st["flat"]["steps"] == 15
    assert st["looped"]["tokens_per_s"] == pytest.approx(500.0) and st["looped"]["from_step"] == 22
    assert st["overall"]["tokens_per_s"] == pytest.approx(600.0)
    assert TP.flat_step_count(tr) == pytest.approx(20.5)
    none = TP.phase_stats(TP.Trace(points=pts[:3], steps=15, train_time_s=15.0, batch_tokens=1000))
    assert none["looped"] is None and none["flat"]["tokens_per_s"] == pytest.approx(1000.0)


def test_mfu_and_ratios():
    from pgolf.presets import get_preset
    from pgolf.report.flops import phase_flops

    pf = phase_flops(get_preset("pr1855"))
    tr = TP.Trace(points=[(5, 5.0), (10, 10.0), (20, 40.0), (30, 70.0)], steps=30, train_time_s=70.0,
                  batch_tokens=1000, switch_step=10.0)
    st = TP.phase_stats(tr)
    m = TP.mfu_block(st, tr, pf, peak=1e12)
    assert m["flat"] == pytest.approx(1000.0 * pf.flat / 1e12)
    assert m["looped"] == pytest.approx(1000.0 / 3 * pf.looped / 1e12)
    assert m["overall"] == pytest.approx(30 * 1000 / 70 * (10 * pf.flat + 20 * pf.looped) / 30 / 1e12)
    other = {k: ({**v, "tokens_per_s": 2 * v["tokens_per_s"]} if v and "tokens_per_s" in v else v)
             for k, v in st.items()}
    assert TP.ratios(other, st) == {"overall": pytest.approx(2.0), "flat": pytest.approx(2.0),
                                    "looped": pytest.approx(2.0)}


def test_patches_fail_loudly():
    with pytest.raises(rec.PatchError, match="cu_bucket_from_env.*found 0 times"):
        rec.patch_source("print('not the record')\n")
    p = rec.Patch("twice", "x = 1\n", "x = 2\n", "")
    with pytest.raises(rec.PatchError, match="'twice'.*found 2 times"):
        rec.patch_source("x = 1\nx = 1\n", [p])
    assert rec.patch_source("a\nx = 1\n", [p]) == "a\nx = 2\n"


def test_patches_apply_to_the_real_record_script():
    src = record_source()
    out = rec.patch_source(src)
    compile(out, "train_gpt.py", "exec")
    for p in rec.PATCHES:
        assert src.count(p.anchor) == 1 and p.replacement in out
    assert 'os.environ.get("THROUGHPUT_ONLY"' in out and "warmup_cu_buckets = (cu_bucket_size,)" in out


def test_record_cu_lengths_match_the_records_own_cu_seqlens():
    src = record_source()
    fns = [n for n in ast.parse(src).body if isinstance(n, ast.FunctionDef)
           and n.name in ("get_next_multiple_of_n", "_build_cu_seqlens")]
    ns = {"torch": torch}
    exec(compile(ast.Module(body=fns, type_ignores=[]), "record", "exec"), ns)  # the record's functions as oracle
    rng = np.random.default_rng(1)
    lens = rng.choice([3, 20, 70, 300], size=400)
    tokens = np.concatenate([np.concatenate(([1], rng.integers(2, 99, n - 1))) for n in lens])
    tokens = np.concatenate((rng.integers(2, 99, 17), tokens))  # the shard starts inside a document
    micro, seq = 1000, 64
    got = rec.record_cu_lengths(tokens, micro, seq)
    bos = np.flatnonzero(tokens == 1)
    want, cursor = [], int(bos[0])
    while cursor + micro + 1 <= len(tokens):
        starts = (bos[(bos >= cursor) & (bos < cursor + micro)] - cursor).tolist()
        cu, _ = ns["_build_cu_seqlens"](starts, micro, "cpu", seq, 1)
        want.append(len(cu))
        cursor += micro + 1
    assert got.tolist() == want and len(want) > 20


def test_record_cu_lengths_by_hand(tmp_path):
    from pgolf.data.shards import write_shard

    # first BOS at 2; span 5+1: window [2, 7) = docs [1,7,7] + [1,8] -> 2 segments + 1; next [8, 13) starts mid-doc
    toks = np.array([9, 9, 1, 7, 7, 1, 8, 8, 8, 8, 8, 8, 8, 1, 5], dtype=np.uint16)
    assert rec.record_cu_lengths(toks, 5, 2048).tolist() == [3, 2]
    assert rec.record_cu_lengths(toks, 5, 2).tolist() == [4, 4]  # docs cut into pieces of 2: [2,1]+[2] ; [2,2,1]
    write_shard(tmp_path / "fineweb_train_000000.bin", toks)
    b = rec.record_bucket_size([tmp_path / "fineweb_train_000000.bin"], 5, 2)
    assert (b["bucket"], b["max_len"], b["micro_batches"]) == (64, 4, 2)


def test_record_env_turns_off_what_needs_caseops_and_ttt(tmp_path):
    env = rec.record_env(tmp_path, tmp_path / "tok.model", 60, bucket=256, warmup_steps=5, log_every=5)
    assert env["CASEOPS_ENABLED"] == "0" and env["TTT_ENABLED"] == "0" and env["PREQUANT_ONLY"] == "1"
    assert env["THROUGHPUT_ONLY"] == "1" and env["VOCAB_SIZE"] == "8192" and env["MAX_WALLCLOCK_SECONDS"] == "60"
    assert env["CU_BUCKET_SIZE"] == "256" and env["DATA_PATH"] == str(tmp_path.resolve())
    assert env["SPARSE_ATTN_GATE_ENABLED"] == env["SMEAR_GATE_ENABLED"] == "1" and env["BETA2"] == "0.99"
    assert "GRAD_ACCUM_STEPS" not in env  # the record's own 8 // world_size


def test_equal_model_check():
    from pgolf.presets import get_preset

    cfg = get_preset("pr1855")
    hp = rec.parse_record_log(record_source_log())["hparams"]
    hp["grad_accum_steps"] = "8"  # the log is from 8 GPUs; one GPU runs 8 micro-steps
    assert rec.equal_model_check(hp, cfg) == []
    hp["num_layers"] = "9"
    assert rec.equal_model_check(hp, cfg) == [{"field": "num_layers", "record": 9.0, "pgolf": 11.0}]


def record_source_log() -> str:
    if not MIRROR.exists():
        pytest.skip("no repo mirror for the record's log")
    r = subprocess.run(["git", "-C", str(MIRROR), "show", f"HEAD:{Path(RECORD).parent}/train_seed42.log"],
                       capture_output=True, text=True)
    if r.returncode:
        pytest.skip("record log not in the mirror")
    return r.stdout


def test_pgolf_command_puts_user_overrides_last(tmp_path):
    data = tmp_path / "proxy_sp8192"
    cmd = tp.pgolf_command("pr1855", "rid", 60, data, ["quant.codec=lzma"], warmup_steps=5, log_every=5)
    sets = [cmd[i + 1] for i, a in enumerate(cmd) if a == "--set"]
    assert sets[0] == "train.wallclock_s=60" and sets[-1] == "quant.codec=lzma" and "data.corpus=proxy" in sets
    assert "quant.scheme=int8_rowwise" in sets and "train.prime_eval=false" not in sets
    only = tp.pgolf_command("pr1855", "rid", 60, data, [], warmup_steps=5, log_every=5, training_only=True)
    assert "train.prime_eval=false" in only  # a run stopped at the end of training compiles no eval graph
    assert cmd[cmd.index("--preset") + 1] == "pr1855" and cmd[cmd.index("--run-id") + 1] == "rid"
    with pytest.raises(ValueError, match="no_such_field"):  # checked here, not after a device start-up
        tp.pgolf_command("pr1855", "rid", 60, data, ["train.no_such_field=1"], warmup_steps=5, log_every=5)


def test_merge_two_calls(tmp_path):
    phases = {"overall": {"tokens_per_s": 100.0}, "flat": {"tokens_per_s": 120.0}, "looped": {"tokens_per_s": 80.0}}
    faster = {k: {"tokens_per_s": 1.2 * v["tokens_per_s"]} for k, v in phases.items()}
    (tmp_path / "a.json").write_text(json.dumps({"device": "H100", "record": {"phases": phases}}))
    pg = {"phases": faster, "mfu": {"overall": 0.3}}
    (tmp_path / "b.json").write_text(json.dumps({"device": "H100", "pgolf": pg}))
    out = tmp_path / "c.json"
    assert tp.main(["--merge", str(tmp_path / "a.json"), str(tmp_path / "b.json"), "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["ratio_pgolf_over_record"] == {"overall": pytest.approx(1.2), "flat": pytest.approx(1.2),
                                              "looped": pytest.approx(1.2)}
    assert res["meets_targets"] == {"tokens_per_s_ratio": True, "mfu": False}


def test_repeats_average_the_pairings_and_judge_the_mean(tmp_path, capsys):
    def pairing(name, rec, pg, mfu):
        phases = lambda r: {ph: {"tokens_per_s": r} for ph in ("overall", "flat", "looped")}
        d = {"record": {"phases": phases(rec)}, "pgolf": {"phases": phases(pg), "mfu": {"overall": mfu}},
             "ratio_pgolf_over_record": {ph: pg / rec for ph in ("overall", "flat", "looped")}}
        (tmp_path / name).write_text(json.dumps(d))
        return str(tmp_path / name)

    files = [pairing("p1.json", 100.0, 116.0, 0.30), pairing("p2.json", 100.0, 113.0, 0.29)]
    out = tmp_path / "r.json"
    assert tp.main(["--repeats", *files, "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["ratio"]["overall"] == {"mean": pytest.approx(1.145), "min": pytest.approx(1.13),
                                       "max": pytest.approx(1.16)}
    assert res["pgolf_mfu_mean"] == pytest.approx(0.295) and [x["file"] for x in res["pairings"]] == files
    assert res["meets_targets"] == {"tokens_per_s_ratio": False, "mfu": False}  # one pairing >= 1.15 is not enough
    assert "mean ratio" in capsys.readouterr().out
    (tmp_path / "half.json").write_text(json.dumps({"record": {"phases": {}}}))
    with pytest.raises(SystemExit, match=r"half.json: no ratio_pgolf_over_record .* \(--merge\)"):
        tp.main(["--repeats", files[0], str(tmp_path / "half.json"), "--out", str(out)])


def _attn_ref(q, k, v, segments):
    """(T, H, D) attention, causal within each [a, b) segment, K/V heads repeated for GQA."""
    g = q.size(1) // k.size(1)
    k, v = k.repeat_interleave(g, 1), v.repeat_interleave(g, 1)
    out = torch.zeros_like(q)
    for a, b in segments:
        s = torch.einsum("qhd,khd->hqk", q[a:b], k[a:b]) / math.sqrt(q.size(-1))
        s = s.masked_fill(~torch.ones(b - a, b - a, dtype=torch.bool).tril(), float("-inf"))
        out[a:b] = torch.einsum("hqk,khd->qhd", s.softmax(-1), v[a:b])
    return out


def test_shim_dense_is_causal_gqa_attention():
    torch.manual_seed(0)
    q, k, v = torch.randn(2, 9, 4, 8), torch.randn(2, 9, 2, 8), torch.randn(2, 9, 2, 8)
    out = shim.flash_attn_func(q, k, v, causal=True)
    assert out.shape == q.shape
    with pytest.raises(NotImplementedError, match="softcap"):
        shim.flash_attn_func(q, k, v, causal=True, softcap=30.0)
    for b in range(2):
        torch.testing.assert_close(out[b], _attn_ref(q[b], k[b], v[b], [(0, 9)]), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("api", [("window_size", "enable_gqa", "scale"), ("is_causal",)])
def test_shim_varlen_maps_arguments(monkeypatch, api):
    seen = {}

    def fake(q, k, v, cu_q, cu_k, max_q, max_k, **kw):  # PyTorch's varlen_attn contract, by segments
        seen.update(kw, kv_heads=k.size(1))
        causal = kw.get("window_size") == (-1, 0) or kw.get("is_causal", False)
        assert causal and max_q == max_k == 2048
        cu = cu_q.tolist()
        return _attn_ref(q, k, v, [(a, b) for a, b in zip(cu, cu[1:]) if b > a])

    monkeypatch.setattr(shim, "_varlen_attn", fake)
    monkeypatch.setattr(shim, "_VARLEN_ARGS", frozenset(api))
    torch.manual_seed(1)
    q, k, v = torch.randn(12, 4, 8), torch.randn(12, 2, 8), torch.randn(12, 2, 8)
    cu = torch.tensor([0, 5, 7, 12, 12, 12], dtype=torch.int32)  # padded with the total, as the record does
    out = shim.flash_attn_varlen_func(q, k, v, cu_seqlens_q=cu, cu_seqlens_k=cu, max_seqlen_q=2048,
                                      max_seqlen_k=2048, causal=True, window_size=(-1, -1))
    torch.testing.assert_close(out, _attn_ref(q, k, v, [(0, 5), (5, 7), (7, 12)]), atol=1e-5, rtol=1e-5)
    if "enable_gqa" in api:
        assert seen["enable_gqa"] is True and seen["kv_heads"] == 2 and seen["window_size"] == (-1, 0)
    else:
        assert seen["is_causal"] is True and seen["kv_heads"] == 4  # heads repeated on the older API


def test_end_to_end_tiny_pgolf_run_with_loops(byte_dataset, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    out = tmp_path / "tp.json"
    sets = ["data.tokenizer=byte260", "model.num_layers=2", "model.model_dim=32", "model.num_heads=2",
            "model.num_kv_heads=1", "model.num_loops=1", "model.loop_start=0", "model.loop_end=0",
            "model.loop_enable_at=0.5", "model.doc_isolated=true", "train.batch_tokens=256",
            "train.micro_batch_tokens=128", "train.seq_len=32", "eval.batch_tokens=512", "train.device=cpu",
            "train.compile=false"]
    argv = ["--pgolf", "tiny", "--data", str(byte_dataset), "--seconds", "2", "--warmup-steps", "0",
            "--log-every", "5", "--out", str(out), "--workdir", str(tmp_path / "w"), "--stop-after-training"]
    assert tp.main(argv + [a for s in sets for a in ("--set", s)]) == 0
    res = json.loads(out.read_text())
    pg = res["pgolf"]
    assert pg["switch_time_s"] == 1.0 and pg["steps"] > 20 and pg["train_time_s"] == pytest.approx(2.0, abs=0.2)
    assert 0 < pg["marks"]["first_step"] <= pg["marks"]["train_end"] < pg["wall_s"]
    assert pg["rc"] == 0 or pg["stopped"] == "stopped after train_end"  # ended by itself or stopped by us
    assert pg["peak_mem_mib"] == 0 and pg["peak_reserved_mib"] == 0  # CPU: from the stopped: line or the summary
    assert pg["phases"]["flat"]["tokens_per_s"] > 0 and pg["phases"]["looped"]["tokens_per_s"] > 0
    assert pg["phases"]["flat"]["to_step"] <= pg["phases"]["looped"]["from_step"]
    assert pg["flops_per_token"]["virtual_layers"] == [2, 3] and pg["flops_per_token"]["looped"] > \
        pg["flops_per_token"]["flat"]
    assert 0 < pg["mfu"]["flat_steps"] < pg["steps"] and pg["mfu"]["overall"] is None  # no peak on CPU
    assert res["device"] == "cpu" and "record" not in res
    (log,) = tmp_path.glob("runs/throughput-tiny-*/train.log")  # step times in ms: the phase rates come from them
    assert re.search(r"^step:\d+/\d+ .* train_time:\d+\.\d{3}s tok/s:", log.read_text(), re.M)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpu_shim_varlen_equals_per_segment_attention_with_grads():
    """The shim on PyTorch's real varlen kernel (bf16, GQA, padded cu_seqlens), forward and backward, eager and
    under torch.compile(fullgraph=True) as the record calls it."""
    dev = torch.device("cuda")
    torch.manual_seed(0)
    q, k, v = (torch.randn(300, h, 64, device=dev, dtype=torch.bfloat16, requires_grad=True) for h in (8, 4, 4))
    cu = torch.tensor([0, 100, 101, 250, 300, 300, 300], dtype=torch.int32, device=dev)
    segs = [(0, 100), (100, 101), (101, 250), (250, 300)]

    def call(q, k, v):
        return shim.flash_attn_varlen_func(q, k, v, cu_seqlens_q=cu, cu_seqlens_k=cu, max_seqlen_q=2048,
                                          max_seqlen_k=2048, causal=True, window_size=(-1, -1))

    ref = _attn_ref(q.float(), k.float(), v.float(), segs)
    g = torch.randn_like(ref)
    (ref * g).sum().backward()
    want = [t.grad.clone() for t in (q, k, v)]
    for fn in (call, torch.compile(call, fullgraph=True, dynamic=False)):
        for t in (q, k, v):
            t.grad = None
        out = fn(q, k, v)
        torch.testing.assert_close(out.float(), ref, atol=2e-2, rtol=2e-2)
        (out.float() * g).sum().backward()
        for t, w in zip((q, k, v), want):
            torch.testing.assert_close(t.grad.float(), w.float(), atol=5e-2, rtol=5e-2)
    dense = shim.flash_attn_func(q[None, :100], k[None, :100], v[None, :100], causal=True)[0]
    torch.testing.assert_close(dense.float(), ref[:100], atol=2e-2, rtol=2e-2)


@pytest.mark.parametrize("suite", ["issue4", "issue5"])
def test_every_ab_proxy_variant_is_a_valid_config(suite):
    from pgolf.config import apply_overrides
    from pgolf.presets import get_preset, proxy_form

    ab = _load("ab_proxy", ROOT / "benchmarks" / "ab_proxy.py")
    base = proxy_form(get_preset("baseline"))
    for name, overrides in ab.SUITES[suite].items():
        cfg = apply_overrides(base, overrides)  # raises, naming the field, on a bad override
        assert (cfg == base) == (not overrides), name


TOY_SCRIPT = '''
import pathlib, sys
import torch
model = torch.nn.Linear(8, 8)
first, second = (torch.optim.SGD(model.parameters(), lr=0.01) for _ in range(2))  # two per step, as a record
for _ in range(int(sys.argv[1])):
    model(torch.randn(4, 8)).square().mean().backward()
    first.step(); second.step(); first.zero_grad()
pathlib.Path("argv.txt").write_text(" ".join(sys.argv[1:]))
'''


@pytest.mark.parametrize("total, want", [(12, 4), (5, 2)])  # a window inside the run; one cut by its end
def test_profile_script_profiles_a_window_of_an_unmodified_script(tmp_path, total, want):
    script = tmp_path / "sub" / "train_toy.py"
    script.parent.mkdir()
    script.write_text(TOY_SCRIPT)
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "profile_script.py"), "--skip", "3", "--steps", "4",
                        "--out-dir", "prof", "--", str(script), str(total), "x"], cwd=tmp_path, capture_output=True,
                       text=True, env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-2000:]
    assert (script.parent / "argv.txt").read_text() == f"{total} x"  # its own argv, run from its own folder
    rep = json.loads((tmp_path / "prof" / "profile.json").read_text())  # --out-dir taken before the chdir
    assert rep["steps"] == want and rep["clock"] == "cpu" and "matmul" in rep["kinds"]


def test_profiled_throughput_run_reports_kernel_kinds_not_targets(byte_dataset, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    sets = ["data.tokenizer=byte260", "model.num_layers=1", "model.model_dim=32", "model.num_heads=2",
            "model.num_kv_heads=1", "train.batch_tokens=256", "train.micro_batch_tokens=128", "train.seq_len=32",
            "eval.batch_tokens=512", "train.device=cpu", "train.iterations=16",  # steps, not seconds, end it
            "train.compile=false"]
    out = tmp_path / "tp.json"
    argv = ["--pgolf", "tiny", "--data", str(byte_dataset), "--seconds", "60", "--warmup-steps", "0",
            "--profile-steps", "3", "--profile-skip", "2", "--out", str(out), "--workdir", str(tmp_path / "w"),
            "--stop-after-training"]
    assert tp.main(argv + [a for s in sets for a in ("--set", s)]) == 0
    res = json.loads(out.read_text())
    prof = res["pgolf"]["profile"]
    assert res["profiled_steps"] == 3 and prof["steps"] == 3 and prof["total_ms_per_step"] > 0
    assert res["profile_skip"] == 2 and prof["skip"] == 2
    shown = capsys.readouterr().out
    assert "GPU ms/step" in shown and "GPU idle" in shown and prof["device_time"] is None  # a CPU run has no GPU
    res["record"] = {"phases": res["pgolf"]["phases"]}
    assert tp.compare(res)["meets_targets"] is None


def test_profiled_record_runs_under_the_profile_script_with_pgolfs_window(tmp_path, monkeypatch):
    (tmp_path / "rec.py").write_text(record_source())
    seen = {}

    def fake_run_logged(cmd, *, cwd, env, log_path, timeout, **kw):
        seen.update(cmd=cmd, cwd=cwd, pythonpath=env["PYTHONPATH"])
        log_path.write_text("")
        return {"log": str(log_path), "rc": 0}

    monkeypatch.setattr(tp, "run_logged", fake_run_logged)
    args = tp.argparse.Namespace(record=tmp_path / "rec.py", data=tmp_path, tokenizer=tmp_path / "t.model",
                                 seconds=60, warmup_steps=5, log_every=5, record_timeout=None, profile_steps=8,
                                 profile_skip=30)
    from pgolf.presets import get_preset

    res = tp.run_record(args, tmp_path / "w", {"bucket": 256}, get_preset("pr1855"))
    cmd = seen["cmd"]
    assert cmd[1] == str(tp.PROFILE_SCRIPT) and cmd[-2:] == ["--", "train_gpt.py"]
    opt = dict(zip(cmd[2:-2:2], cmd[3:-2:2]))
    assert opt == {"--skip": str(2 * 5 + 30), "--steps": "8",  # warm-up with loops off, then on, then 30 timed
                   "--out-dir": str((tmp_path / "w" / "record_profile").resolve())}
    assert str(tp.SHIMS) in seen["pythonpath"] and res["profile"] is None  # nothing written by the fake run


# --- bandwidth split: the same runs on an H100 and an H200 ---

def run_block(flat_s: float, looped_s: float, mfu: float = 0.3) -> dict:
    return {"phases": {"flat": {"step_time_s": flat_s}, "looped": {"step_time_s": looped_s}},
            "mfu": {"flat": mfu, "looped": mfu}}


def test_bandwidth_split_recovers_the_bound_and_free_parts():
    c, m, bw_slow, bw_fast = 0.5, 0.2, 3.35e12, 4.8e12
    slow = run_block(c + m, 2 * (c + m))
    fast = run_block(c + m * bw_slow / bw_fast, 2 * (c + m * bw_slow / bw_fast))
    out = TP.bandwidth_split(slow, fast, bw_slow, bw_fast)
    assert out["flat"]["bandwidth_bound_s"] == pytest.approx(m) and out["flat"]["bandwidth_free_s"] == pytest.approx(c)
    assert out["looped"]["bandwidth_bound_s"] == pytest.approx(2 * m)
    assert out["flat"]["mfu_if_no_bandwidth_bound"] == pytest.approx(0.3 * (c + m) / c) and out["flat"]["consistent"]
    assert not TP.bandwidth_split(run_block(0.7, 1.0), run_block(0.8, 1.1), bw_slow, bw_fast)["flat"]["consistent"]
    with pytest.raises(ValueError, match="bw_fast > bw_slow"):
        TP.bandwidth_split(slow, fast, bw_fast, bw_slow)


def test_bandwidth_split_cli_orders_the_gpus_and_names_bad_files(tmp_path, capsys):
    h100, h200 = tmp_path / "a.json", tmp_path / "b.json"
    h100.write_text(json.dumps({"device": "NVIDIA H100 80GB HBM3", "pgolf": run_block(0.7311, 1.0974)}))
    h200.write_text(json.dumps({"device": "NVIDIA H200", "pgolf": run_block(0.6622, 0.9884)}))
    outs = []
    for order in ((h200, h100), (h100, h200)):
        out = tmp_path / "s.json"
        assert tp.main(["--bandwidth-split", *map(str, order), "--out", str(out)]) == 0
        outs.append(json.loads(out.read_text()))
    assert outs[0]["runs"] == outs[1]["runs"] and outs[0]["slow"]["device"] == "NVIDIA H100 80GB HBM3"
    assert outs[0]["runs"]["pgolf"]["flat"]["bandwidth_bound_s"] == pytest.approx(0.0689 / (1 - 3.35 / 4.8))
    other = tmp_path / "c.json"
    other.write_text(json.dumps({"device": "Some GPU", "pgolf": run_block(0.7, 1.0)}))
    with pytest.raises(SystemExit, match="c.json: device 'Some GPU' has no HBM bandwidth"):
        tp.main(["--bandwidth-split", str(h100), str(other), "--out", str(tmp_path / "x.json")])
    with pytest.raises(SystemExit, match="one bf16 peak and two bandwidths"):
        tp.main(["--bandwidth-split", str(h100), str(h100), "--out", str(tmp_path / "x.json")])
