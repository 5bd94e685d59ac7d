"""Micro-benchmark of the row ops between attention's GEMMs (issue 5), forward + backward: XSA with the output
gate (model/xsa_gate.py) and q's / k's rms_norm + RoPE (model/q_norm_rope.py), pgolf's ops against
torch.compile of the composed ops, at pr1855's shapes (one micro-batch: 48 x 2048 tokens, 8 query / 4 KV heads of
64, RoPE on 16 dims, the sparse gate's (B, T, H) multiplier).

    python3 benchmarks/rowop_bench.py --sweep --out $OUT/rowop_bench.json            # GPU
    python3 benchmarks/rowop_bench.py --device cpu --tokens 256 --out /tmp/r.json     # logic check on CPU

Variants (each one step = out = f(inputs); out.backward(g), compiled with fullgraph):

    xsa_compiled / xsa_op          xsa_project_out then the gate's multiply / the xsa_gate op
    q_compiled / q_function / q_op  gain * RoPE(rms_norm(q)) / fused_q_norm's autograd function / the norm_rope op
    k_compiled / k_op              RoPE(rms_norm(k)) / the norm_rope op without gain

Each result has ms per step and GB/s: the bytes a single pass each way must move (inputs read, outputs written,
gradients likewise; the (B, T, H) gate and its gradient included), over the step's time. --sweep also times each
Triton kernel alone at rows per program x warps (16, 32, 64) x (2, 4, 8), to pick the launch shape.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from step_timer import bench_cli, time_call

from pgolf.model import q_norm_rope as nr
from pgolf.model import xsa_gate as xg
from pgolf.model.attention import xsa_project_out
from pgolf.model.attn_rope import apply_partial_rotary, rope_inv_freq, rope_tables
from pgolf.model.layers import rms_norm

VARIANTS = ("xsa_compiled", "xsa_op", "q_compiled", "q_function", "q_op", "k_compiled", "k_op")
SWEEP = [(r, w) for r in (16, 32, 64) for w in (2, 4, 8)]


def xsa_composed(y, v, gate):
    return (xsa_project_out(y.transpose(1, 2), v.transpose(1, 2)) * gate.transpose(1, 2)[..., None]).transpose(1, 2)


def inputs(args, device, dtype) -> dict:
    """Leaves as the model makes them: y (B, T, H, D) attention's output, v / q / k projection outputs."""
    gen = torch.Generator(device=device).manual_seed(0)
    B, T = args.tokens // args.seq_len, args.seq_len

    H, Hkv, D = args.heads, args.kv_heads, args.head_dim

    def leaf(*shape, scale=1.0):
        return (scale * torch.randn(*shape, device=device, generator=gen)).to(dtype).requires_grad_()

    inv_freq = rope_inv_freq(args.rope_dims, 10000.0).to(device)
    cos, sin = (t.transpose(1, 2).to(dtype) for t in rope_tables(T, inv_freq, torch.float32))  # as rotary()
    return {"y": leaf(B, T, H, D), "v": leaf(B, T, Hkv, D),
            "gate": torch.rand(B, T, H, device=device, generator=gen).to(dtype).requires_grad_(),
            "q": leaf(B, T, H, D, scale=3.0), "k": leaf(B, T, Hkv, D, scale=3.0),
            "gain": torch.full((H,), 5.0, device=device).requires_grad_(), "cos": cos, "sin": sin}


def variant_fn(name: str, t: dict, rope_dims: int):
    """(fn of no arguments returning the output, the leaves it differentiates)."""
    cos, sin = t["cos"], t["sin"]
    table = {
        "xsa_compiled": (lambda: xsa_composed(t["y"], t["v"], t["gate"]), ("y", "v", "gate")),
        "xsa_op": (lambda: xg.xsa_gate(t["y"], t["v"], t["gate"]), ("y", "v", "gate")),
        "q_compiled": (lambda: apply_partial_rotary(rms_norm(t["q"]), cos, sin, rope_dims)
                       * t["gain"].to(t["q"].dtype)[None, None, :, None], ("q", "gain")),
        "q_function": (lambda: nr.q_norm_rope(t["q"], cos, sin, rope_dims, t["gain"]), ("q", "gain")),
        "q_op": (lambda: nr.norm_rope(t["q"], cos, sin, rope_dims, t["gain"]), ("q", "gain")),
        "k_compiled": (lambda: apply_partial_rotary(rms_norm(t["k"]), cos, sin, rope_dims), ("k",)),
        "k_op": (lambda: nr.norm_rope(t["k"], cos, sin, rope_dims), ("k",)),
    }
    fn, leaves = table[name]
    return torch.compile(fn, fullgraph=True, dynamic=False), leaves


def pass_bytes(name: str, t: dict) -> int:
    """Bytes one pass each way must move: forward reads the inputs and writes the output; backward reads d out
    and the inputs again and writes their gradients (the gain's is negligible and left out)."""
    nb = {n: t[n].numel() * t[n].element_size() for n in ("y", "v", "gate", "q", "k")}
    if name.startswith("xsa"):
        ins = nb["y"] + nb["v"] + nb["gate"]
        d_gate = 4 * t["gate"].numel()  # the op writes it in fp32
        return (ins + nb["y"]) + (nb["y"] + ins + nb["y"] + nb["v"] + d_gate)
    x = nb[name[0]]
    return 2 * x + 3 * x


def sweep(t: dict, args) -> list[dict]:
    """Each Triton kernel alone at each launch shape (CUDA with triton only)."""
    y, v, gate, q = (t[n].detach() for n in ("y", "v", "gate", "q"))
    if not (xg.uses_triton(y) and nr.uses_triton(q, t["cos"])):
        return [{"error": "needs CUDA and triton"}]
    from pgolf.model import q_norm_rope_triton as nk
    from pgolf.model import xsa_gate_triton as xk

    g = torch.randn_like(y)
    gain, cos, sin, k = t["gain"].detach(), t["cos"], t["sin"], args.rope_dims
    calls = {"xsa_fwd": lambda r, w: xk.forward(y, v, gate, None, rows=r, num_warps=w),
             "xsa_bwd": lambda r, w: xk.backward(g, y, v, gate, None, rows=r, num_warps=w),
             "q_fwd": lambda r, w: nk.forward(q, cos, sin, gain, k, rows=r, num_warps=w),
             "q_bwd": lambda r, w: nk.backward(g, q, cos, sin, gain, k, rows=r, num_warps=w)}
    rows = []
    for kernel, call in calls.items():
        for r, w in SWEEP:
            res = time_call(lambda c=call, r=r, w=w: c(r, w), torch.device(args.device), args.warmup, args.iters)
            rows.append({"kernel": kernel, "rows": r, "num_warps": w, **res})
            print(f"sweep {kernel:8s} rows={r:3d} warps={w} "
                  + (f"{res['ms_median']:8.4f} ms" if "error" not in res else res["error"]), flush=True)
    return rows


def run(args) -> dict:
    device = torch.device(args.device)
    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[args.dtype]
    t = inputs(args, device, dtype)
    results = []
    for name in args.variants:
        torch._dynamo.reset()
        fn, leaves = variant_fn(name, t, args.rope_dims)
        g = torch.randn_like(fn().detach())

        def reset(leaves=leaves):
            for n in leaves:
                t[n].grad = None

        r = time_call(lambda fn=fn, g=g: fn().backward(g), device, args.warmup, args.iters, reset=reset)
        if "error" not in r:
            r["gb_per_s"] = round(pass_bytes(name, t) / (r["ms_median"] * 1e-3) / 1e9, 1)
        results.append({"variant": name, **r})
        print(f"{name:13s} " + (f"{r['ms_median']:8.4f} ms  {r['gb_per_s']:7.1f} GB/s" if "error" not in r
                                else r["error"]), flush=True)
    return {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "torch": torch.__version__, "dtype": args.dtype, "tokens": args.tokens, "seq_len": args.seq_len,
            "heads": args.heads, "kv_heads": args.kv_heads, "head_dim": args.head_dim, "rope_dims": args.rope_dims,
            "warmup": args.warmup, "iters": args.iters, "results": results,
            "sweep": sweep(t, args) if args.sweep else []}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tokens", type=int, default=98_304, help="tokens per micro-batch (#1855: 48 x 2048)")
    p.add_argument("--seq-len", type=int, default=2048)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--kv-heads", type=int, default=4)
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--rope-dims", type=int, default=16)
    p.add_argument("--sweep", action="store_true", help="also time each Triton kernel at each launch shape")
    return bench_cli(p, argv, run, VARIANTS)


if __name__ == "__main__":
    raise SystemExit(main())
