"""train.profile_steps: a profiled window of training steps summarised into runs/<id>/profile.json."""

from __future__ import annotations

import json

import pytest

from conftest import tiny_run_config, train_cpu
from pgolf.train.profile import PROFILE_SKIP, kind_of


@pytest.mark.parametrize("name, kind", [
    ("sm90_xmma_gemm_bf16bf16_bf16f32", "matmul"), ("aten::mm", "matmul"), ("nvjet_tst_128x256", "matmul"),
    ("pytorch_flash::flash_fwd_kernel", "attention"), ("triton_tem_fused_flex_attention_0", "attention"),
    ("triton_per_fused_add_mul_rms_norm_3", "fused"), ("ncclDevKernel_AllReduce_Sum_bf16", "communication"),
    ("Memcpy HtoD (Pageable -> Device)", "copy"), ("aten::add_", "other"),
])
def test_kernel_kinds(name, kind):
    assert kind_of(name) == kind


def test_profile_window_writes_a_per_kind_report(byte_dataset, tmp_path):
    cfg = tiny_run_config(byte_dataset, tmp_path / "runs", iterations=PROFILE_SKIP + 3, profile_steps=3)
    train_cpu(cfg, tmp_path / "run")
    rep = json.loads((tmp_path / "run" / "profile.json").read_text())
    assert rep["clock"] == "cpu" and rep["steps"] == 3 and rep["total_ms_per_step"] > 0
    assert "matmul" in rep["kinds"] and abs(sum(k["share"] for k in rep["kinds"].values()) - 1) < 1e-9
    assert rep["top"] and rep["top"][0]["self_us"] >= rep["top"][-1]["self_us"]
    assert (tmp_path / "run" / "profile_trace.json").stat().st_size > 0


def test_run_ending_inside_the_window_reports_the_steps_it_saw(byte_dataset, tmp_path):
    cfg = tiny_run_config(byte_dataset, tmp_path / "runs", iterations=PROFILE_SKIP + 2, profile_steps=50)
    train_cpu(cfg, tmp_path / "run")
    assert json.loads((tmp_path / "run" / "profile.json").read_text())["steps"] == 2


def test_off_by_default_writes_nothing(byte_dataset, tmp_path):
    train_cpu(tiny_run_config(byte_dataset, tmp_path / "runs", iterations=PROFILE_SKIP + 1), tmp_path / "run")
    assert not (tmp_path / "run" / "profile.json").exists()
