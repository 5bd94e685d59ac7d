"""benchmarks/inductor_bandwidth.py: reads the report torch's own writer produces under TORCHINDUCTOR_PROFILE
(triton_heuristics.end_graph, fed collected calls), keeps each graph's last block, ranks kernels by the time lost
against the bandwidth floor, and refuses a file that is not such a report."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import inductor_bandwidth as ib
import pytest


def write_report(path: Path, graphs: dict[str, list[tuple[float, float, str]]]) -> None:
    """One end_graph block per (graph module, calls), written by torch's writer from a module of that name, as a
    compiled graph's wrapper would."""
    from torch._inductor.runtime import triton_heuristics as th

    for graph_name, calls in graphs.items():
        module = path.parent / graph_name
        module.write_text("def flush(th, out):\n    th.end_graph(out)\n")
        s = importlib.util.spec_from_file_location(module.stem, module)
        graph = importlib.util.module_from_spec(s)
        s.loader.exec_module(graph)
        th.collected_calls.clear()
        th.collected_calls.extend((ms, gb, gb / ms * 1e3, name) for ms, gb, name in calls)
        graph.flush(th, str(path))
    th.collected_calls.clear()


def test_peak_from_the_gpu_name(tmp_path):
    report = tmp_path / "bw.txt"
    write_report(report, {"g.py": [(1.0, 3.35, "triton_poi_h100_floor_0")]})
    out = tmp_path / "bw.json"
    assert ib.main([str(report), "--gpu", "NVIDIA H100 80GB HBM3", "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["peak_gbs"] == 3350.0 and res["top"][0]["of_peak"] == 1.0 and res["lost_ms"] == 0.0


def test_ranks_kernels_by_time_lost_against_the_floor(tmp_path):
    report = tmp_path / "bw.txt"
    write_report(report, {
        "fwd.py": [(9.0, 1.0, "triton_poi_stale_0")],  # replaced by the graph's next call below
        "bwd.py": [(0.5, 1.0, "triton_red_slow_1"), (0.25, 1.0, "triton_per_fast_2"),
                   (0.5, 1.0, "triton_red_slow_1")],
    })
    write_report(report, {"fwd.py": [(0.3, 0.5, "triton_poi_mid_3")]})
    out = tmp_path / "bw.json"
    assert ib.main([str(report), "--peak-gbs", "4000", "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["graphs"] == {"bwd.py": {"kernels": 2, "ms": 1.25, "lost_ms": 0.5},
                             "fwd.py": {"kernels": 1, "ms": 0.3, "lost_ms": 0.175}}
    slow, mid, fast = res["top"]
    assert (slow["kernel"], slow["calls"], slow["ms"], slow["lost_ms"], slow["of_peak"]) == \
        ("triton_red_slow_1", 2, 1.0, 0.5, 0.5)  # 2 GB need 0.5 ms at 4000 GB/s
    assert (mid["kernel"], mid["lost_ms"]) == ("triton_poi_mid_3", 0.175) and fast["lost_ms"] == 0.0
    assert res["ms"] == 1.55 and res["lost_ms"] == 0.675


KERNELS = '''

# kernel path: /c/ab/cab.py
# Topologically Sorted Source Nodes: [rms_norm, mul], Original ATen: [aten.mul, aten.sum]
triton_red_slow_1 = async_compile.triton('triton_red_slow_1', \'\'\'
import triton

@triton.jit
def triton_red_slow_1(in_ptr0, xnumel):
    pass
\'\'\', device_str='cuda')


triton_per_fast_2 = async_compile.triton('triton_per_fast_2', \'\'\'
def triton_per_fast_2():
    pass
\'\'\', device_str='cuda')
'''


def test_writes_the_ranked_kernels_sources_with_their_aten_ops(tmp_path):
    """KERNELS is laid out as torch's codegen writes a kernel into its graph module (codegen/triton.py
    define_kernel, wrapper.py): the origins comment, then `name = async_compile.triton('name', '''src''', ...)`."""
    report = tmp_path / "bw.txt"
    write_report(report, {"bwd.py": [(0.5, 1.0, "triton_red_slow_1"), (0.25, 1.0, "triton_per_fast_2")],
                          "gone.py": [(0.4, 0.1, "triton_poi_gone_3")]})
    (tmp_path / "bwd.py").write_text((tmp_path / "bwd.py").read_text() + KERNELS)  # as inductor's module holds them
    (tmp_path / "gone.py").unlink()  # a cache cleared since the run
    out, folder = tmp_path / "bw.json", tmp_path / "kernels"
    assert ib.main([str(report), "--peak-gbs", "4000", "--out", str(out), "--sources", str(folder)]) == 0
    top = json.loads(out.read_text())["top"]
    assert [(r["kernel"], r["source"]) for r in top] == [
        ("triton_poi_gone_3", None), ("triton_red_slow_1", "01_triton_red_slow_1.py"), ("triton_per_fast_2",
                                                                                     "02_triton_per_fast_2.py")]
    slow = (folder / "01_triton_red_slow_1.py").read_text()
    assert "Original ATen: [aten.mul, aten.sum]" in slow and "def triton_red_slow_1(in_ptr0, xnumel):" in slow
    assert "triton_per_fast_2" not in slow and "device_str" not in slow
    fast = (folder / "02_triton_per_fast_2.py").read_text()
    assert "def triton_per_fast_2():" in fast and "Original ATen" not in fast
    assert sorted(f.name for f in folder.iterdir()) == ["01_triton_red_slow_1.py", "02_triton_per_fast_2.py"]
    assert ib.kernel_source(KERNELS, "triton_poi_other_9") is None


def test_refuses_what_is_not_a_report(tmp_path, capsys):
    bad = tmp_path / "bw.txt"
    bad.write_text("====================\nTRITON KERNELS BANDWIDTH INFO (/c/g.py)\nnot a kernel line\n")
    with pytest.raises(SystemExit):
        ib.main([str(bad), "--out", str(tmp_path / "o.json")])
    assert "unexpected line in the bandwidth report: 'not a kernel line'" in capsys.readouterr().err
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    with pytest.raises(SystemExit):
        ib.main([str(empty), "--out", str(tmp_path / "o.json")])
    assert "no 'TRITON KERNELS BANDWIDTH INFO' block" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        ib.main([str(empty), "--gpu", "T4", "--out", str(tmp_path / "o.json")])
    assert "--gpu 'T4': bandwidth unknown" in capsys.readouterr().err
    assert not (tmp_path / "o.json").exists()


LONG = "triton_poi_fused_embedding_dense_backward_" + "x" * 150 + "_55"  # longer than the step list keeps


def test_joins_the_report_with_a_profiled_steps_kernel_list(tmp_path, capsys):
    """--step: each report kernel found in model_step_bench's kernel list (a name cut at 160 characters matches the
    report name it begins; kernels of other libraries are skipped), ranked by the time the step loses."""
    report = tmp_path / "bw.txt"
    write_report(report, {"fwd.py": [(0.5, 1.0, "triton_per_norm_1"), (0.5, 1.0, "triton_per_norm_1")],
                          "bwd.py": [(1.0, 0.5, LONG), (0.2, 0.1, "triton_poi_small_2")]})
    step = tmp_path / "step.json"
    step.write_text(json.dumps({"results": [
        {"variant": "base", "kernels": [
            {"name": "nvjet_sm90_gemm", "calls_per_step": 4, "us_per_step": 900.0},
            {"name": "triton_per_norm_1", "calls_per_step": 2, "us_per_step": 800.0},
            {"name": LONG[:ib.KERNEL_NAME_CUT], "calls_per_step": 1, "us_per_step": 250.0}]},
        {"variant": "other", "kernels": None}]}))
    out = tmp_path / "bw.json"
    assert ib.main([str(report), "--peak-gbs", "4000", "--out", str(out), "--step", str(step)]) == 0
    st = json.loads(out.read_text())["step"]
    norm, emb = st["top"]
    assert (norm["kernel"], norm["calls"], norm["step_calls"], norm["alone_ms"], norm["step_ms"]) == \
        ("triton_per_norm_1", 2, 2, 1.0, 0.8)
    assert (norm["step_lost_ms"], norm["step_gb_per_s"]) == (0.3, 2500.0)  # 2 GB: 0.5 ms at 4000 GB/s
    assert (emb["kernel"], emb["alone_ms"], emb["step_ms"], emb["alone_over_step"]) == (LONG, 1.0, 0.25, 4.0)
    assert (st["kernels_joined"], st["step_ms"], st["alone_ms"], st["not_in_step_list_alone_ms"]) == \
        (2, 1.05, 2.0, 0.2)
    assert "(alone >2x the step)" in capsys.readouterr().out
    for variant, message in (("nope", "no variant 'nope' (has ['base', 'other'])"),
                             ("other", "variant 'other' has no kernel list (run model_step_bench.py with --kernels")):
        with pytest.raises(SystemExit):
            ib.main([str(report), "--peak-gbs", "4000", "--out", str(tmp_path / "x.json"), "--step", str(step),
                     "--variant", variant])
        assert message in capsys.readouterr().err
    assert not (tmp_path / "x.json").exists()


def test_the_step_join_runs_without_torch(tmp_path):
    """The join is run where the results were fetched, often by a Python without torch: `import torch` must fail
    there and the join still write its JSON (c6d0e67 imported step_timer, and so torch, for the name cut)."""
    report, step, out = tmp_path / "bw.txt", tmp_path / "step.json", tmp_path / "bw.json"
    write_report(report, {"g.py": [(0.5, 1.0, "triton_per_norm_1")]})
    step.write_text(json.dumps({"results": [{"variant": "base", "kernels": [
        {"name": "triton_per_norm_1", "calls_per_step": 1, "us_per_step": 400.0}]}]}))
    script = Path(ib.__file__)
    argv = [str(script), str(report), "--peak-gbs", "4000", "--out", str(out), "--step", str(step)]
    code = (f"import runpy, sys; sys.modules['torch'] = None; sys.argv = {argv!r}; "
            f"runpy.run_path(sys.argv[0], run_name='__main__')")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=script.parent, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(out.read_text())["step"]["kernels_joined"] == 1


GRAPH_MODULE = '''
calls = []
def get_args():
    return [1, 2]
def call(args):
    calls.append(list(args))
def benchmark_compiled_module(args, times=10, repeat=10):
    for _ in range(times * repeat):
        call(list(args))
    return 0.5
'''


def test_profiling_calls_a_graph_module_without_args_as_torch_2_11_does(tmp_path, monkeypatch):
    """torch 2.11 calls a generated module's benchmark_compiled_module(times=1, repeat=1), which takes args first:
    after allow_profiling_on_torch_2_11 every module loaded builds its own (get_args), given args still win, and a
    module without args is left as it is."""
    from torch._inductor.codecache import PyCodeCache

    monkeypatch.setattr(PyCodeCache, "load_by_key_path", PyCodeCache.__dict__["load_by_key_path"])
    for name in ("plain", "patched"):
        (tmp_path / f"c{name}.py").write_text(GRAPH_MODULE)
    plain = PyCodeCache.load_by_key_path("pgolf_test_graph_plain", str(tmp_path / "cplain.py"))
    with pytest.raises(TypeError, match="missing 1 required positional argument: 'args'"):
        plain.benchmark_compiled_module(times=1, repeat=1)
    ib.allow_profiling_on_torch_2_11()
    ib.allow_profiling_on_torch_2_11()  # idempotent: one wrapper, not two
    assert PyCodeCache.load_by_key_path.__func__.pgolf_default_benchmark_args
    mod = PyCodeCache.load_by_key_path("pgolf_test_graph_patched", str(tmp_path / "cpatched.py"))
    assert mod.benchmark_compiled_module(times=1, repeat=1) == 0.5
    assert mod.calls == [[1, 2]]
    mod.benchmark_compiled_module([7], times=2, repeat=1)
    assert mod.calls == [[1, 2], [7], [7]]
    once = mod.benchmark_compiled_module
    assert ib.default_benchmark_args(mod).benchmark_compiled_module is once  # already defaulted: unchanged
    (tmp_path / "cold.py").write_text("def benchmark_compiled_module(times=10, repeat=10):\n    return times\n")
    old = PyCodeCache.load_by_key_path("pgolf_test_graph_old", str(tmp_path / "cold.py"))
    assert old.benchmark_compiled_module(times=3) == 3
