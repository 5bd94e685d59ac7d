"""Micro-benchmark of the training head's loss: softcapped cross-entropy, forward + backward (issue 5).

    python3 benchmarks/fused_ce_bench.py --out $OUT/fused_ce_bench.json              # GPU: N = 98,304, V = 1024, 8192
    python3 benchmarks/fused_ce_bench.py --sweep --out $OUT/fused_ce_sweep.json      # + Triton block/warp sweep
    python3 benchmarks/fused_ce_bench.py --device cpu --rows 256 --out /tmp/ce.json  # logic check on CPU

One step = ``loss = CE(C tanh((h W^T) / C), y); loss.backward()`` with h (N, D) and W (V, D) in bf16, both requiring
grad as in the model (so every variant runs the head's two backward GEMMs; results before 2026-12-04 had h without
grad and no dh GEMM). Variants:

    eager           the model's eager head: tanh in the logits' dtype, then .float() and F.cross_entropy
    compiled        torch.compile(fullgraph=True) of the eager head
    fused           softcapped_cross_entropy (model/fused_ce.py): the Triton op on CUDA; on CPU its torch body
    fused_compiled  torch.compile(fullgraph=True) of the fused head (the way the training loop runs it)
    head            head_softcapped_ce (model/fused_head_ce.py): GEMM, loss and gradient in one pass, the backward
                    GEMMs inside the forward (model.fused_head_ce)

Reported per (V, variant): median and mean ms per step (CUDA events on GPU), peak memory above what was allocated
before the step (GPU only), the loss (the variants must agree to ~1e-2: eager rounds tanh to bf16). The matmul is
the same in every variant, so differences between variants are the loss's.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from pgolf.model import fused_ce
from pgolf.model.fused_ce import softcapped_cross_entropy
from pgolf.model.fused_head_ce import head_softcapped_ce
from step_timer import bench_cli, time_steps

VARIANTS = ("eager", "compiled", "fused", "fused_compiled", "head")
SWEEP = [(block, warps) for block in (512, 1024, 2048, 4096) for warps in (4, 8)]


def eager_head(h, w, y, cap: float):
    logits = h @ w.t()
    return F.cross_entropy((cap * torch.tanh(logits / cap)).float(), y)


def fused_head(h, w, y, cap: float):
    impl = "auto" if h.is_cuda else "fused"  # CPU: exercise the custom op's torch body, not the reference
    return softcapped_cross_entropy(h @ w.t(), y, cap, impl=impl)


def make_fn(variant: str):
    if variant == "head":
        return head_softcapped_ce
    fn = eager_head if variant in ("eager", "compiled") else fused_head
    return torch.compile(fn, fullgraph=True, dynamic=False) if variant.endswith("compiled") else fn


def time_head(fn, h, w, y, cap, warmup: int, iters: int) -> dict:
    """One step = loss of the head, backward; the loss value is kept to check that the variants agree."""
    def step():
        out = fn(h, w, y, cap)
        out.backward()
        return out.item()

    r = time_steps(step, h.device, warmup, iters, reset=lambda: (setattr(w, "grad", None), setattr(h, "grad", None)))
    r["loss"] = r.pop("last")
    return r


def inputs(rows: int, vocab: int, dim: int, dtype: torch.dtype, device: torch.device, seed: int = 0):
    gen = torch.Generator(device=device).manual_seed(seed)
    h = torch.randn(rows, dim, device=device, dtype=dtype, generator=gen).requires_grad_()
    w = (torch.randn(vocab, dim, device=device, dtype=dtype, generator=gen) * dim**-0.5 * 4).requires_grad_()
    y = torch.randint(0, vocab, (rows,), device=device, generator=gen)
    return h, w, y


def run(args) -> dict:
    device = torch.device(args.device)
    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[args.dtype]
    results, sweep = [], []
    for vocab in args.vocab:
        h, w, y = inputs(args.rows, vocab, args.dim, dtype, device)
        for variant in args.variants:
            torch._dynamo.reset()
            try:
                r = time_head(make_fn(variant), h, w, y, args.cap, args.warmup, args.iters)
            except Exception as e:  # noqa: BLE001 (a variant that cannot run here is reported, not fatal)
                r = {"error": f"{type(e).__name__}: {str(e)[:300]}"}
            results.append({"vocab": vocab, "variant": variant, **r})
            print(f"V={vocab:6d} {variant:15s} " + (f"{r['ms_median']:9.3f} ms  peak {r['peak_mib']} MiB  "
                                                   f"loss {r['loss']:.5f}" if "error" not in r else r["error"]),
                  flush=True)
        if args.sweep and fused_ce.uses_triton(h, args.cap):
            saved = dict(fused_ce.KERNEL)
            for block, warps in SWEEP:
                fused_ce.KERNEL.update(block=block, num_warps=warps)
                r = time_head(fused_head, h, w, y, args.cap, args.warmup, args.iters)
                sweep.append({"vocab": vocab, "block": block, "num_warps": warps, **r})
                print(f"V={vocab:6d} sweep block={block:5d} warps={warps:2d} {r['ms_median']:9.3f} ms", flush=True)
            fused_ce.KERNEL.update(saved)
        del h, w, y
    for r in results:  # speed and memory relative to the eager head at the same V
        base = next((b for b in results if b["vocab"] == r["vocab"] and b["variant"] == "eager" and "error" not in b),
                    None)
        if base and "error" not in r:
            r["speedup_vs_eager"] = round(base["ms_median"] / r["ms_median"], 3)
            if r["peak_mib"] and base["peak_mib"]:
                r["peak_vs_eager"] = round(r["peak_mib"] / base["peak_mib"], 3)
    return {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "torch": torch.__version__, "triton": fused_ce.HAS_TRITON, "kernel": dict(fused_ce.KERNEL),
            "rows": args.rows, "dim": args.dim, "h_requires_grad": True, "dtype": args.dtype, "cap": args.cap,
            "warmup": args.warmup, "iters": args.iters, "results": results, "sweep": sweep}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rows", type=int, default=98_304, help="N = tokens per micro-batch (proxy: 48 x 2048)")
    p.add_argument("--vocab", type=int, nargs="+", default=[1024, 8192])
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--cap", type=float, default=30.0)
    p.add_argument("--sweep", action="store_true", help="also time the Triton kernels at each (block, warps)")
    return bench_cli(p, argv, run, VARIANTS)


if __name__ == "__main__":
    raise SystemExit(main())
