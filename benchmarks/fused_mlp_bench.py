"""Micro-benchmark of the (leaky) relu² MLP, forward + backward (issue 5): the fused kernel against inductor.

    python3 benchmarks/fused_mlp_bench.py --out $OUT/fused_mlp_bench.json          # GPU: 98,304 x 512 -> 2048 -> 512
    python3 benchmarks/fused_mlp_bench.py --sweep --out $OUT/fused_mlp_sweep.json  # + each TMA tile config alone
    python3 benchmarks/fused_mlp_bench.py --device cpu --rows 256 --out /tmp/m.json   # logic check on CPU

One step = ``out = MLP(x); out.backward(g)`` with x (N, D) requiring grad and both weights requiring grad, in bf16
(#1855's MLP at one micro-batch: N = 48 x 2048, D = 512, hidden 4 x 512, leaky slope 0.5). Variants:

    compiled        torch.compile(fullgraph=True) of F.linear -> leaky_relu -> square -> F.linear (the unfused model)
    fused           fused_mlp (model/fused_mlp.py): the Triton GEMM+activation kernels on CUDA, torch math on CPU
    fused_compiled  torch.compile(fullgraph=True) of fused_mlp (the way the training loop runs it); on Hopper its
                    GEMM+activation is the TMA kernel
    fused_compiled_pointer  the same with PGOLF_FUSED_MLP_TMA=0: the pointer kernel (what the TMA kernel gains)
    fused_compiled_sign_bits  fused_compiled with sign_bits (model.fused_mlp_sign_bits): post and pre's signs kept
                    for the backward instead of pre
    record          with --record-script PATH (e.g. .peers/pr1855_train_gpt.py, see issue5_throughput.sh): that
                    script's own fused MLP autograd function, loaded from the file (benchmarks/shims on the path
                    for its flash_attn_interface import), slope 0.5 only, eager as the record calls it

--sweep also times the GEMM+activation kernel alone (forward: x W_fc^T; backward: g_out W_proj with the pre
epilogue) at each of fused_mlp_triton.TMA_CONFIGS, forced instead of autotuned, to see what the autotuner left (a
config that does not fit the GPU, e.g. in shared memory, is reported with its error). --kernels N profiles N more
steps of each variant and lists its kernels (µs per step), to split a gap between kernels and what surrounds them.

Reported per variant: median and mean ms per step, TFLOP/s (six GEMMs of 2 N D H FLOPs: two forward, four
backward), peak memory above what was allocated before the step (GPU), and the largest
output difference from the compiled variant relative to its largest output.
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import os
import sys
from pathlib import Path
from unittest import mock

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from pgolf.model import fused_mlp as fm
from step_timer import bench_cli, kernel_table, time_call, time_steps

VARIANTS = ("compiled", "fused", "fused_compiled", "fused_compiled_pointer", "fused_compiled_sign_bits")
SHIMS = Path(__file__).resolve().parent / "shims"


def unfused(x, w_fc, w_proj, slope: float):
    return F.linear(F.leaky_relu(F.linear(x, w_fc), slope).square(), w_proj)


def record_mlp(script: Path):
    """The record script's fused MLP (its FusedLeakyReLUSquareMLP autograd function), imported from the file."""
    sys.path.insert(0, str(SHIMS))
    spec = importlib.util.spec_from_file_location("record_train_gpt", script)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)  # defines only; its main() runs under __name__ == "__main__"

    def fn(x, w_fc, w_proj, slope: float):
        if slope != 0.5:
            raise ValueError(f"the record's kernel has slope 0.5 built in, not {slope}")
        return mod.FusedLeakyReLUSquareMLP(x, w_fc, w_proj)
    return fn


def make_fn(variant: str, record_script: Path | None = None):
    if variant == "record":
        return record_mlp(record_script)
    fn = unfused if variant == "compiled" else fm.fused_mlp
    if variant.endswith("sign_bits"):
        fn = functools.partial(fm.fused_mlp, sign_bits=True)
    return torch.compile(fn, fullgraph=True, dynamic=False) if "compiled" in variant else fn


def time_variant(variant: str, args, params: tuple, g) -> dict:
    """time_steps of one variant, or {"error": ...} when it cannot run here (reported, not fatal)."""
    def reset():
        for p in params:
            p.grad = None

    try:
        fn = make_fn(variant, args.record_script)

        def step():
            out = fn(*params, args.slope)
            out.backward(g)
            return out.detach()

        r = time_steps(step, torch.device(args.device), args.warmup, args.iters, reset=reset)
        if args.kernels:
            r.update(kernel_table(step, torch.device(args.device), args.kernels, reset=reset))
        return r
    except Exception as e:  # noqa: BLE001
        return {"error": f"{type(e).__name__}: {str(e)[:300]}"}


def tma_sweep(x, w_fc, w_proj, g, args) -> list[dict]:
    """ms per call of the forward and backward GEMM+activation at each TMA config (CUDA with triton only)."""
    if not fm.uses_triton(x):
        return [{"error": "needs CUDA and triton"}]
    from pgolf.model import fused_mlp_triton as kern

    try:
        pre, _ = kern.gemm_act(x, w_fc, args.slope, config=kern.TMA_CONFIGS[0], tma=True)
    except Exception as e:  # noqa: BLE001 (e.g. a GPU before Hopper: no TMA)
        return [{"error": f"{type(e).__name__}: {str(e)[:300]}"}]
    w_proj_t = w_proj.t().contiguous()
    rows = []
    for i, cfg in enumerate(kern.TMA_CONFIGS):
        for kind, call in (("forward", lambda c=cfg: kern.gemm_act(x, w_fc, args.slope, config=c, tma=True)),
                           ("backward", lambda c=cfg: kern.gemm_act(g, w_proj_t, args.slope, aux=pre, config=c,
                                                                     tma=True))):
            r = time_call(call, torch.device(args.device), args.warmup, args.iters)  # OutOfResources: an error row
            rows.append({"config": i, "kind": kind, **cfg.kwargs, "num_stages": cfg.num_stages,
                         "num_warps": cfg.num_warps, **r})
            print(f"sweep {kind:8s} {cfg.kwargs} stages={cfg.num_stages} warps={cfg.num_warps} "
                  + (f"{r['ms_median']:8.3f} ms" if "error" not in r else r["error"]), flush=True)
    return rows


def run(args) -> dict:
    device = torch.device(args.device)
    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[args.dtype]
    gen = torch.Generator(device=device).manual_seed(0)
    hidden = args.mult * args.dim
    x = torch.randn(args.rows, args.dim, device=device, dtype=dtype, generator=gen).requires_grad_()
    w_fc = (torch.randn(hidden, args.dim, device=device, dtype=dtype, generator=gen) * args.dim ** -0.5).requires_grad_()
    w_proj = (torch.randn(args.dim, hidden, device=device, dtype=dtype, generator=gen) * hidden ** -0.5
              ).requires_grad_()
    g = torch.randn(args.rows, args.dim, device=device, dtype=dtype, generator=gen)
    flops = 6 * 2 * args.rows * args.dim * hidden  # 2 GEMMs forward, 4 backward
    results, outputs = [], {}
    for variant in args.variants + (["record"] if args.record_script else []):
        torch._dynamo.reset()
        with mock.patch.dict(os.environ, {"PGOLF_FUSED_MLP_TMA": "0" if variant.endswith("pointer") else "1"}):
            r = time_variant(variant, args, (x, w_fc, w_proj), g)
        if "error" not in r:
            outputs[variant] = r.pop("last")
            r["tflops"] = round(flops / (r["ms_median"] * 1e-3) / 1e12, 1)
        results.append({"variant": variant, **r})
        print(f"{variant:15s} " + (f"{r['ms_median']:9.3f} ms  {r['tflops']:6.1f} TFLOP/s  peak {r['peak_mib']} MiB"
                                   if "error" not in r else r["error"]), flush=True)
    sweep = tma_sweep(x.detach(), w_fc.detach(), w_proj.detach(), g, args) if args.sweep else []
    ref = outputs.get("compiled")
    base = next((b for b in results if b["variant"] == "compiled" and "error" not in b), None)
    for r in results:
        if ref is not None and r["variant"] in outputs:
            r["max_rel_diff_vs_compiled"] = float((outputs[r["variant"]].float() - ref.float()).abs().max()
                                                  / ref.float().abs().max())
        if base and "error" not in r:
            r["speedup_vs_compiled"] = round(base["ms_median"] / r["ms_median"], 3)
    return {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "torch": torch.__version__, "triton": fm.HAS_TRITON, "uses_triton": fm.uses_triton(x.detach()),
            "rows": args.rows, "dim": args.dim, "hidden": hidden, "slope": args.slope, "dtype": args.dtype,
            "warmup": args.warmup, "iters": args.iters, "results": results, "sweep": sweep}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rows", type=int, default=98_304, help="N = tokens per micro-batch (#1855: 48 x 2048)")
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--mult", type=int, default=4, help="hidden = mult x dim")
    p.add_argument("--slope", type=float, default=0.5)
    p.add_argument("--sweep", action="store_true", help="also time the TMA kernel alone at each tile config")
    p.add_argument("--kernels", type=int, default=0, metavar="N",
                   help="profile N more steps of each variant and list its top kernels (µs per step)")
    p.add_argument("--record-script", type=Path, default=None,
                   help="also time this record script's fused MLP (variant 'record')")
    return bench_cli(p, argv, run, VARIANTS)


if __name__ == "__main__":
    raise SystemExit(main())
