"""Which of inductor's generated kernels run below HBM bandwidth: a reader of TORCHINDUCTOR_PROFILE's report.

With ``TORCHINDUCTOR_PROFILE=1``, each kernel of a compiled graph is timed alone (triton's do_bench) the first time
it runs, next to inductor's count of the bytes it reads and writes; ``TORCHINDUCTOR_PROFILE_OUTPUT`` gets one block
per graph call. This script keeps the last block of each graph and ranks the kernels by the time they lose against
the bandwidth ceiling, ``lost = ms - GB / peak``: the fusions worth rewriting by hand are those at the top.
A diagnostic, not a step time (each kernel runs alone, with warm caches); cuBLAS, attention and pgolf's own Triton
ops are not inductor kernels and are not in the report. `model_step_bench.py` calls `allow_profiling_on_torch_2_11`
when TORCHINDUCTOR_PROFILE is set (that torch's profiler fails every compile without it).

    TORCHINDUCTOR_PROFILE=1 TORCHINDUCTOR_PROFILE_OUTPUT=bw.txt python3 benchmarks/model_step_bench.py \\
        --preset pr1855 --data data/proxy_sp8192 --device cuda --variant base --warmup 1 --iters 1 --out m.json
    python3 benchmarks/inductor_bandwidth.py bw.txt --gpu "NVIDIA H200" --out inductor_bandwidth.json \\
        --sources kernels/      # and the top kernels' Triton source, with the model ops inductor fused into each

``--sources DIR`` copies, for each kernel ranked in the JSON, what inductor wrote about it in its graph module (the
report names that file): the comment with its source nodes and ATen ops, then its Triton source, as
``DIR/NN_<kernel>.py``; ranked rows get a ``source`` field (null when the module is gone).

``--step model_step.json [--variant base]`` checks the report against a profiled step of the same code and settings
(`model_step_bench.py --kernels N`: each kernel's GPU time in real steps; kernel names are stable across compiles):
per kernel found in both, its time alone against its time in the step, ranked by the time the step loses against
the floor. Alone is not always like in the step: the profile feeds each kernel random floats and integer inputs of
zero (torch._dynamo.testing.rand_strided), so an embedding backward's atomic adds all land on row 0 (pr1855 on an
H200: 0.997 ms alone, 0.264 ms in the step), and launch latency weighs on the smallest kernels.
"""

from __future__ import annotations

import argparse
import functools
import inspect
import json
import re
import sys
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path
from types import ModuleType

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from pgolf.fileio import atomic_write_json, atomic_write_text
from pgolf.report.flops import hbm_bandwidth

HEADER = re.compile(r"TRITON KERNELS BANDWIDTH INFO \((.*)\)")
LINE = re.compile(r"([\d.]+)ms\s+([\d.]+) GB\s+([\d.]+)GB/s\s+([\d.]+)%\s+(\S+)")
# characters of a kernel's name that step_timer.kernel_table keeps; a name cut there matches the report names it
# begins (here, not in step_timer, so the join runs without torch)
KERNEL_NAME_CUT = 160


def default_benchmark_args(mod: ModuleType) -> ModuleType:
    """`mod` (an inductor-generated graph module) with a `benchmark_compiled_module` that builds its own inputs
    (`mod.get_args()`) when called without them. torch 2.11's inductor generates `benchmark_compiled_module(args,
    times, repeat)` but calls it as `benchmark_compiled_module(times=1, repeat=1)` under TORCHINDUCTOR_PROFILE, which
    fails every compile ("missing 1 required positional argument: 'args'"); torch 2.13 passes the args itself."""
    bench = getattr(mod, "benchmark_compiled_module", None)
    if bench is None or not hasattr(mod, "get_args"):
        return mod
    first = next(iter(inspect.signature(bench, follow_wrapped=False).parameters.values()), None)
    if first is None or first.name != "args" or first.default is not inspect.Parameter.empty:
        return mod  # an older module without args, or one already given a default

    @functools.wraps(bench)
    def with_default_args(args=None, times=10, repeat=10):
        return bench(mod.get_args() if args is None else args, times=times, repeat=repeat)

    mod.benchmark_compiled_module = with_default_args
    return mod


def allow_profiling_on_torch_2_11() -> None:
    """Every graph module inductor loads from now on goes through `default_benchmark_args` (idempotent)."""
    from torch._inductor.codecache import PyCodeCache

    load = PyCodeCache.load_by_key_path
    if getattr(load, "pgolf_default_benchmark_args", False):
        return

    def load_by_key_path(cls, *args, **kwargs):
        return default_benchmark_args(load(*args, **kwargs))

    load_by_key_path.pgolf_default_benchmark_args = True
    PyCodeCache.load_by_key_path = classmethod(load_by_key_path)


def kernel_source(module_text: str, name: str) -> str | None:
    """The comment lines inductor writes above kernel `name` in a graph module (source nodes, ATen ops) and the
    kernel's Triton source, or None when the module has no such kernel."""
    m = re.search(rf"((?:^#[^\n]*\n)*)^{re.escape(name)} = async_compile\.triton\({re.escape(repr(name))}, '''\n"
                  rf"(.*?)^''', device_str=", module_text, re.MULTILINE | re.DOTALL)
    return m.group(1) + m.group(2) if m else None


def write_sources(rows: list[dict], graph_files: dict[str, str], folder: Path) -> None:
    """Each ranked row's kernel source into `folder` as NN_<kernel>.py; row["source"] = that file name or None."""
    folder.mkdir(parents=True, exist_ok=True)
    texts: dict[Path, str | None] = {}
    for i, row in enumerate(rows):
        path = Path(graph_files[row["graph"]])
        if path not in texts:
            texts[path] = path.read_text() if path.is_file() else None
        src = kernel_source(texts[path], row["kernel"]) if texts[path] else None
        row["source"] = None
        if src is not None:
            row["source"] = f"{i:02d}_{row['kernel']}.py"
            atomic_write_text(folder / row["source"], f"# {row['kernel']} in {path}\n{src}")


def parse_report(text: str) -> dict[str, list[tuple[float, float, str]]]:
    """{graph file: [(ms, GB, kernel name), ...]} from the last block of each graph in the report."""
    graphs: dict[str, list[tuple[float, float, str]]] = {}
    current: list | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if m := HEADER.match(line):
            current = graphs[m.group(1)] = []  # a later call of the same graph replaces the earlier block
        elif line.startswith(("SUMMARY", "====")):
            current = None
        elif current is not None and (m := LINE.match(line)):
            current.append((float(m.group(1)), float(m.group(2)), m.group(5)))
        elif current is not None and line:
            raise ValueError(f"unexpected line in the bandwidth report: {line!r}")
    return graphs


def per_kernel(calls: Iterable[tuple[float, float, str]]) -> dict[str, list[float]]:
    """{kernel name: [ms, GB, calls]} summed over (ms, GB, name) calls."""
    agg: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0, 0])
    for ms, gb, name in calls:
        a = agg[name]
        a[0] += ms
        a[1] += gb
        a[2] += 1
    return agg


def rank(graphs: dict[str, list[tuple[float, float, str]]], peak_gbs: float, top: int = 40) -> dict:
    """Per kernel (summed over its calls in its graph): ms, GB, GB/s, share of peak, ms lost against the peak;
    totals per graph and overall."""
    rows, per_graph = [], {}
    for graph, calls in graphs.items():
        agg = per_kernel(calls)
        g_ms = sum(a[0] for a in agg.values())
        g_lost = sum(max(0.0, a[0] - a[1] / peak_gbs * 1e3) for a in agg.values())
        per_graph[Path(graph).name] = {"kernels": len(agg), "ms": round(g_ms, 3), "lost_ms": round(g_lost, 3)}
        for name, (ms, gb, n) in agg.items():
            floor_ms = gb / peak_gbs * 1e3
            rows.append({"graph": Path(graph).name, "kernel": name, "calls": n, "ms": round(ms, 4),
                         "gb": round(gb, 4), "gb_per_s": round(gb / ms * 1e3, 1) if ms else None,
                         "of_peak": round(floor_ms / ms, 3) if ms else None,
                         "lost_ms": round(max(0.0, ms - floor_ms), 4)})
    rows.sort(key=lambda r: r["lost_ms"], reverse=True)
    total_ms = sum(r["ms"] for r in rows)
    total_lost = sum(r["lost_ms"] for r in rows)
    return {"peak_gbs": peak_gbs, "kernels": len(rows), "ms": round(total_ms, 3), "lost_ms": round(total_lost, 3),
            "of_peak": round(1 - total_lost / total_ms, 3) if total_ms else None, "graphs": per_graph,
            "top": rows[:top]}


def against_step(graphs: dict[str, list[tuple[float, float, str]]], step_kernels: list[dict], peak_gbs: float,
                 top: int = 40) -> dict:
    """Report kernels (summed over their calls and graphs) joined with a profiled step's kernel list
    ({name, calls_per_step, us_per_step}; a name cut at KERNEL_NAME_CUT matches the report names it begins).
    Per row: ms alone, ms in the step, GB, the step's GB/s and ms lost against the floor, alone / step."""
    alone = per_kernel(c for calls in graphs.values() for c in calls)
    rows, seen = [], set()
    for k in step_kernels:
        name = k["name"]
        names = [n for n in alone if n == name or (len(name) >= KERNEL_NAME_CUT and n.startswith(name))]
        if not names:
            continue  # cuBLAS, attention, pgolf's own kernels, or another compile's names
        seen.update(names)
        ms, gb, calls = (sum(alone[n][i] for n in names) for i in range(3))
        step_ms = k["us_per_step"] / 1e3
        floor_ms = gb / peak_gbs * 1e3
        rows.append({"kernel": names[0] if len(names) == 1 else name, "report_names": len(names),
                     "calls": calls, "step_calls": k["calls_per_step"], "alone_ms": round(ms, 4),
                     "step_ms": round(step_ms, 4), "gb": round(gb, 4),
                     "step_gb_per_s": round(gb / step_ms * 1e3, 1) if step_ms else None,
                     "step_lost_ms": round(max(0.0, step_ms - floor_ms), 4),
                     "alone_over_step": round(ms / step_ms, 2) if step_ms else None})
    rows.sort(key=lambda r: r["step_lost_ms"], reverse=True)
    missing_ms = sum(a[0] for n, a in alone.items() if n not in seen)
    return {"kernels_joined": len(rows), "alone_ms": round(sum(r["alone_ms"] for r in rows), 3),
            "step_ms": round(sum(r["step_ms"] for r in rows), 3),
            "step_lost_ms": round(sum(r["step_lost_ms"] for r in rows), 3),
            "not_in_step_list_alone_ms": round(missing_ms, 3), "top": rows[:top]}


def step_result(step: dict, variant: str) -> dict:
    """The result of `variant` in a loaded model_step_bench.py JSON; ValueError naming the variants it has."""
    results = {r.get("variant"): r for r in step.get("results", [])}
    if variant not in results:
        raise ValueError(f"no variant {variant!r} (has {sorted(map(str, results))})")
    return results[variant]


def step_kernel_list(path: Path, variant: str) -> list[dict]:
    """The kernel list of `variant` in a model_step_bench.py JSON; ValueError naming what is missing."""
    kernels = step_result(json.loads(path.read_text()), variant).get("kernels")
    if not kernels:
        raise ValueError(f"variant {variant!r} has no kernel list (run model_step_bench.py with --kernels N)")
    return kernels


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("report", type=Path, help="TORCHINDUCTOR_PROFILE_OUTPUT file")
    p.add_argument("--gpu", default="H200", help="GPU name, for its HBM bandwidth (report/flops.py: H100, H200, A100)")
    p.add_argument("--peak-gbs", type=float, help="HBM bandwidth in GB/s, instead of --gpu's")
    p.add_argument("--top", type=int, default=40)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--sources", type=Path, metavar="DIR", help="write the ranked kernels' sources here")
    p.add_argument("--step", type=Path, metavar="JSON", help="model_step_bench.py JSON with a kernel list (--kernels)")
    p.add_argument("--variant", default="base", help="the variant of --step to compare with (default base)")
    args = p.parse_args(argv)
    if args.peak_gbs is None:
        bw = hbm_bandwidth(args.gpu)
        if bw is None:
            p.error(f"--gpu {args.gpu!r}: bandwidth unknown (give --peak-gbs)")
        args.peak_gbs = bw / 1e9
    if not args.report.is_file():
        p.error(f"{args.report}: no such report (was TORCHINDUCTOR_PROFILE_OUTPUT set?)")
    try:
        graphs = parse_report(args.report.read_text())
    except ValueError as e:
        p.error(f"{args.report}: {e}")
    if not graphs:
        p.error(f"{args.report}: no 'TRITON KERNELS BANDWIDTH INFO' block (no compiled graph ran on a GPU?)")
    res = {"report": str(args.report), **rank(graphs, args.peak_gbs, args.top)}
    if args.step:
        try:
            step_kernels = step_kernel_list(args.step, args.variant)
        except (OSError, ValueError) as e:
            p.error(f"--step {args.step}: {e}")
        res["step"] = {"file": str(args.step), "variant": args.variant,
                       **against_step(graphs, step_kernels, args.peak_gbs, args.top)}
    if args.sources:
        write_sources(res["top"], {Path(g).name: g for g in graphs}, args.sources)
    atomic_write_json(args.out, res)
    print(f"{res['kernels']} kernels in {len(graphs)} graphs: {res['ms']:.2f} ms alone, {res['lost_ms']:.2f} ms "
          f"above the {args.peak_gbs:.0f} GB/s floor ({100 * res['of_peak']:.1f}% of peak overall)")
    for r in res["top"][:15]:
        print(f"  {r['lost_ms']:8.3f} ms lost  {r['ms']:8.3f} ms  {r['gb_per_s']:8.1f} GB/s  x{r['calls']}  "
              f"{r['kernel'][:90]}")
    if "step" in res:
        st = res["step"]
        print(f"in the step ({st['file']}, {st['variant']}): {st['kernels_joined']} of these kernels take "
              f"{st['step_ms']:.2f} ms against {st['alone_ms']:.2f} alone, {st['step_lost_ms']:.2f} ms above the floor")
        for r in st["top"][:15]:
            flag = "  (alone >2x the step)" if (r["alone_over_step"] or 0) > 2 else ""
            print(f"  {r['step_lost_ms']:8.3f} ms lost  {r['step_ms']:8.3f} ms (alone {r['alone_ms']:.3f})  "
                  f"{r['step_gb_per_s'] or 0:8.1f} GB/s  {r['kernel'][:80]}{flag}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
