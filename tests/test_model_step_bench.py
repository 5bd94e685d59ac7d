"""benchmarks/model_step_bench.py: compiled micro-steps of a preset's model per variant, on CPU at tiny scale."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import model_step_bench as msb
import pytest

TINY = ["data.tokenizer=byte260", "model.num_layers=2", "model.model_dim=32", "model.num_heads=2",
        "model.num_kv_heads=1", "train.batch_tokens=128", "train.micro_batch_tokens=128", "train.seq_len=32",
        "train.compile=false"]
LOOPED = "looped:model.num_loops=1,model.loop_start=0,model.loop_end=0,model.loop_enable_at=0.5"


def argv(data: Path, out: Path, *extra: str) -> list[str]:
    return ["--preset", "tiny", "--data", str(data), "--device", "cpu", "--warmup", "1", "--iters", "2",
            "--batches", "2", "--out", str(out), *[a for s in TINY for a in ("--set", s)], *extra]


def test_variants_run_in_one_process_and_report_their_phase(byte_dataset, tmp_path):
    out = tmp_path / "m.json"
    rc = msb.main(argv(byte_dataset, out, "--progress", "0.75", "--kernels", "1", "--top", "4",
                       "--variant", "base", "--variant", LOOPED))
    res = json.loads(out.read_text())
    assert rc == 0 and res["progress"] == 0.75 and res["sets"] == TINY
    base, looped = res["results"]
    assert base["variant"] == "base" and base["overrides"] == [] and base["looping"] is False
    assert looped["overrides"][0] == "model.num_loops=1" and looped["looping"] is True  # 0.75 >= loop_enable_at
    for r in (base, looped):
        assert r["ms_median"] > 0 and r["tokens_per_s"] > 0 and 0 < len(r["kernels"]) <= 4
    assert base["speedup_vs_first"] == 1.0 and looped["speedup_vs_first"] > 0


def test_the_same_variant_before_the_loop_switch_runs_plain(byte_dataset, tmp_path):
    out = tmp_path / "m.json"
    assert msb.main(argv(byte_dataset, out, "--progress", "0.25", "--variant", LOOPED)) == 0
    assert json.loads(out.read_text())["results"][0]["looping"] is False


@pytest.mark.parametrize("variant, msg", [
    ("x:model.no_such_field=1", "no_such_field"),
    ("x:model.num_layers", "expected NAME or NAME:key=value"),
    (":model.num_layers=2", "expected NAME or NAME:key=value"),
])
def test_bad_variants_fail_before_anything_runs(byte_dataset, tmp_path, capsys, variant, msg):
    out = tmp_path / "m.json"
    with pytest.raises(SystemExit):
        msb.main(argv(byte_dataset, out, "--variant", "base", "--variant", variant))
    assert msg in capsys.readouterr().err and not out.exists()


def test_progress_outside_the_run_is_refused(byte_dataset, tmp_path, capsys):
    with pytest.raises(SystemExit):
        msb.main(argv(byte_dataset, tmp_path / "m.json", "--progress", "1.5", "--variant", "base"))
    assert "--progress must be in [0, 1]" in capsys.readouterr().err


def test_pgolf_src_runs_another_checkout(byte_dataset, tmp_path):
    import os
    import shutil
    import subprocess

    other = tmp_path / "other" / "src"
    shutil.copytree(Path(msb.__file__).resolve().parents[1] / "src", other,
                    ignore=shutil.ignore_patterns("__pycache__"))
    out = tmp_path / "m.json"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"PGOLF_SRC": str(other)}
    r = subprocess.run([sys.executable, msb.__file__, *argv(byte_dataset, out, "--variant", "base")], env=env,
                       capture_output=True, text=True, timeout=300, check=False)
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads(out.read_text())
    assert res["pgolf_src"] == str(other) and res["results"][0]["ms_median"] > 0


def test_pgolf_src_without_a_package_is_refused(tmp_path):
    """A PGOLF_SRC one folder too high (an archive root, not its src) must not fall back to this checkout."""
    import os
    import subprocess

    (tmp_path / "src" / "pgolf").mkdir(parents=True)
    env = os.environ | {"PGOLF_SRC": str(tmp_path)}
    r = subprocess.run([sys.executable, msb.__file__, "--help"], env=env, capture_output=True, text=True,
                       timeout=120, check=False)
    assert r.returncode != 0 and f"PGOLF_SRC={tmp_path}: no pgolf package there" in r.stderr


def test_full_step_times_the_loops_own_step(byte_dataset, tmp_path, monkeypatch):
    calls = []

    class Counted(msb.TrainStep):
        def __call__(self, step, elapsed, priming=False, at=None):
            calls.append((step, at, self.accum, self.averager is not None))
            return super().__call__(step, elapsed, priming=priming, at=at)

    monkeypatch.setattr(msb, "TrainStep", Counted)
    out = tmp_path / "m.json"
    rc = msb.main(argv(byte_dataset, out, "--full-step", "--progress", "0.5", "--set", "train.batch_tokens=256",
                       "--set", "train.ema_decay=0.99", "--variant", "base"))
    res = json.loads(out.read_text())
    r = res["results"][0]
    assert rc == 0 and res["full_step"] and r["timed"] == "step"
    assert r["tokens_per_s"] == round(256 / (r["ms_median"] * 1e-3))  # a step is train.batch_tokens
    # first (compile) step, 1 warm-up, 2 timed: steps 0..3 at the forced progress, 2 micro-batches each, with EMA
    assert calls == [(i, 0.5, 2, True) for i in range(4)]


def test_each_finished_variant_is_written_before_the_next_runs(byte_dataset, tmp_path, monkeypatch):
    """A call killed inside a variant (a compile past the device's time limit) keeps the variants before it."""
    out = tmp_path / "m.json"
    real = msb.run_variant

    def killed_in_second(name, overrides, args):
        if name == "second":
            assert json.loads(out.read_text())["complete"] is False  # the first is already on disk
            raise KeyboardInterrupt  # what the time limit's signal does: not an error the loop records
        return real(name, overrides, args)

    monkeypatch.setattr(msb, "run_variant", killed_in_second)
    with pytest.raises(KeyboardInterrupt):
        msb.main(argv(byte_dataset, out, "--variant", "first", "--variant", "second"))
    res = json.loads(out.read_text())
    assert res["complete"] is False and [r["variant"] for r in res["results"]] == ["first"]
    assert res["results"][0]["ms_median"] > 0
    monkeypatch.setattr(msb, "run_variant", real)
    assert msb.main(argv(byte_dataset, out, "--variant", "first")) == 0 and json.loads(out.read_text())["complete"]
