"""train.profile_steps: a profiled window of training steps summarised into runs/<id>/profile.json."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
from conftest import tiny_run_config, train_cpu
from torch.autograd import DeviceType

from pgolf.config import TrainConfig
from pgolf.train.profile import (
    PROFILE_SKIP,
    busy_intervals,
    device_busy,
    idle_gaps,
    kind_of,
    range_spans,
    summarize,
)


@pytest.mark.parametrize("name, kind", [
    ("sm90_xmma_gemm_bf16bf16_bf16f32", "matmul"), ("aten::mm", "matmul"), ("nvjet_tst_128x256", "matmul"),
    ("pytorch_flash::flash_fwd_kernel", "attention"), ("triton_tem_fused_flex_attention_0", "attention"),
    ("triton_per_fused_add_mul_rms_norm_3", "fused"), ("ncclDevKernel_AllReduce_Sum_bf16", "communication"),
    ("Memcpy HtoD (Pageable -> Device)", "copy"), ("aten::add_", "other"),
    ("triton_poi_fused__to_copy__unsafe_view_leaky_relu_pow_21", "fused"),  # inductor pointwise, not a copy
    ("triton_per_fused__varlen_attn_backward_add_clone_9", "fused"), ("triton_tem_fused_mm_0", "matmul"),
    ("gemm_act_kernel", "matmul"), ("aten::_to_copy", "copy"),
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


def test_profile_skip_moves_the_window_and_is_recorded(byte_dataset, tmp_path):
    assert TrainConfig().profile_skip == PROFILE_SKIP  # the config's default is the profiler's
    cfg = tiny_run_config(byte_dataset, tmp_path / "runs", iterations=4, profile_steps=2, profile_skip=2)
    train_cpu(cfg, tmp_path / "run")
    rep = json.loads((tmp_path / "run" / "profile.json").read_text())
    assert rep["skip"] == 2 and rep["steps"] == 2  # steps 3 and 4 of 4: a window the default skip never reaches
    with pytest.raises(ValueError, match="train.profile_skip must be >= 1"):
        TrainConfig(profile_skip=0)


def test_off_by_default_writes_nothing(byte_dataset, tmp_path):
    train_cpu(tiny_run_config(byte_dataset, tmp_path / "runs", iterations=PROFILE_SKIP + 1), tmp_path / "run")
    assert not (tmp_path / "run" / "profile.json").exists()


def test_cuda_report_counts_each_kernel_once():
    """A CPU op carries its kernels' time as its own device time; only the device's records may count (the first
    H100 profile of pr1855 had every launching op twice: 243 ms/step where the kernels took about half)."""
    clock = iter(range(0, 10_000, 1000))  # device records 1 ms apart, each as long as its self time

    def ev(name, device, dev_us, cpu_us=5.0, annotation=False):
        start = next(clock)
        return SimpleNamespace(name=name, device_type=device, self_device_time_total=dev_us,
                               self_cpu_time_total=cpu_us, is_user_annotation=annotation,
                               time_range=SimpleNamespace(start=start, end=start + dev_us))

    cpu, gpu = DeviceType.CPU, DeviceType.CUDA
    events = [ev("aten::mm", cpu, 300.0), ev("nvjet_sm90_tst_256x128", gpu, 300.0),
              ev("triton_poi_fused_add_0", cpu, 100.0), ev("triton_poi_fused_add_0", gpu, 100.0),
              ev("aten::_flash_attention_forward", cpu, 600.0), ev("pytorch_flash::flash_fwd_kernel", gpu, 600.0),
              ev("Command Buffer Full", gpu, 50.0), ev("triton_poi_fused_add_0", gpu, 100.0),
              ev("Optimizer.step#Muon.step", gpu, 400.0, annotation=True)]  # a range over kernels counted above
    rep = summarize(SimpleNamespace(events=lambda: events), cuda=True, steps=2)
    assert rep["total_ms_per_step"] == pytest.approx(1.1 / 2)
    assert {k: v["ms_per_step"] for k, v in rep["kinds"].items()} == pytest.approx(
        {"attention": 0.3, "matmul": 0.15, "fused": 0.1})
    assert [(r["name"], r["calls"]) for r in rep["top"]][-1] == ("triton_poi_fused_add_0", 2)
    # counted device records run 1-1.3, 3-3.1, 5-5.6 and 7-7.1 ms: a 6.1 ms window, busy 1.1 ms of it (per step: / 2)
    assert rep["device_time"] == pytest.approx({"span": 6.1 / 2, "busy": 1.1 / 2, "idle": 5.0 / 2})
    assert summarize(SimpleNamespace(events=lambda: events), cuda=False, steps=1)["total_ms_per_step"] == 0.045


def test_device_busy_is_the_union_of_device_records_and_idle_the_rest():
    """Kernels overlapping on two streams count once; a gap is idle; CPU ops and annotation ranges are not work."""
    def ev(start, end, device=DeviceType.CUDA, name="k", annotation=False):
        return SimpleNamespace(name=name, device_type=device, is_user_annotation=annotation,
                               time_range=SimpleNamespace(start=start, end=end))

    events = [ev(0, 10), ev(5, 12), ev(20, 30), ev(26, 28),  # busy 0-12 and 20-30: 22 of a 40 µs span
              ev(12, 20, device=DeviceType.CPU), ev(0, 40, annotation=True), ev(30, 40, name="Buffer Flush"),
              ev(35, 40)]
    assert device_busy(busy_intervals(events)) == {"span": 40, "busy": 27, "idle": 13}
    assert device_busy(busy_intervals([])) == {"span": 0.0, "busy": 0.0, "idle": 0.0}


def test_idle_gaps_name_the_kernels_either_side_of_each_wait():
    """Gaps are keyed by the record that ended last before them (not the last to start: a long kernel on another
    stream can still run) and the one after; short gaps, CPU ops and annotations do not count."""
    def ev(start, end, name, device=DeviceType.CUDA, annotation=False):
        return SimpleNamespace(name=name, device_type=device, is_user_annotation=annotation,
                               time_range=SimpleNamespace(start=start, end=end))

    events = [ev(0, 100, "adam"), ev(10, 20, "short"), ev(130, 200, "fwd_0"),  # 30 µs: adam -> fwd_0
              ev(202, 300, "bwd"),  # 2 µs: below min_us
              ev(400, 500, "adam"), ev(520, 600, "fwd_0"),  # 20 µs: adam -> fwd_0 again
              ev(600, 640, "muon"), ev(300, 700, "host op", device=DeviceType.CPU), ev(0, 700, "r", annotation=True),
              ev(650, 660, "clip")]  # 10 µs: muon -> clip
    assert idle_gaps(busy_intervals(events), steps=2, min_us=5) == [  # largest first; per step over the 2 steps
        {"before": "bwd", "after": "adam", "ms_per_step": pytest.approx(0.05), "gaps_per_step": 0.5},
        {"before": "adam", "after": "fwd_0", "ms_per_step": pytest.approx(0.025), "gaps_per_step": 1.0},
        {"before": "muon", "after": "clip", "ms_per_step": pytest.approx(0.005), "gaps_per_step": 0.5}]
    assert idle_gaps(busy_intervals(events), steps=2, min_us=25, top=1) == [
        {"before": "bwd", "after": "adam", "ms_per_step": pytest.approx(0.05), "gaps_per_step": 0.5}]
    assert idle_gaps(busy_intervals([])) == []


def test_range_spans_are_the_device_side_spans_of_annotated_ranges():
    def ev(start, end, name, device=DeviceType.CUDA, annotation=True):
        return SimpleNamespace(name=name, device_type=device, is_user_annotation=annotation,
                               time_range=SimpleNamespace(start=start, end=end))

    events = [ev(0, 3000, "Optimizer.step#Muon.step"), ev(5000, 6000, "Optimizer.step#Muon.step"),
              ev(3000, 3500, "pgolf.clip"), ev(0, 9000, "pgolf.clip", device=DeviceType.CPU),  # host side: not GPU
              ev(0, 8000, "nvjet_gemm", annotation=False)]
    assert range_spans(events, steps=2) == {"Optimizer.step#Muon.step": {"ms_per_step": 2.0, "calls_per_step": 1.0},
                                            "pgolf.clip": {"ms_per_step": 0.25, "calls_per_step": 0.5}}

