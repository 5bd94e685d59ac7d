"""Micro-benchmark of document-isolated causal attention, forward + backward (issue 5): FlashAttention-2 varlen
(what pgolf's attn_backend=varlen and record #1855 through the shim both run) against cuDNN's ragged attention and
FlashAttention-4 (attn_backend=fa4).

    python3 benchmarks/varlen_attn_bench.py --data data/proxy_sp8192 --out $OUT/varlen_attn_bench.json   # GPU
    python3 benchmarks/varlen_attn_bench.py --device cpu --rows 8 --out /tmp/a.json     # only checks the batches

One step = ``y = attn(q, k, v, cu); y.backward(g)`` on packed (N, H, D) bf16 tensors, N = 48 x 2048 tokens,
H = 8 query heads, 4 K/V heads, D = 64 (#1855's attention at one micro-batch). The segments of each batch are those
pgolf's loader gives: cut at every BOS of the training shard and at every 2048-token row start, the offsets padded
with empty segments to a fixed count (so one compiled graph serves every batch). The steps cycle through
--batches different windows of the shard, so per-shape plan caches are exercised as in training. Variants:

    fa2_varlen    torch.nn.attention.varlen.varlen_attn, K/V heads native (enable_gqa) or repeated
    cudnn_ragged  aten._cudnn_attention_forward/backward with cum_seq offsets, K/V heads repeated to 8
                  (its ragged path takes equal head counts), max_seqlen = the row length
    cudnn_ragged_unpadded  the same on the offsets without the padding (a varying segment count per batch)
    cudnn_njt     F.scaled_dot_product_attention on jagged nested tensors (torch.nested), cuDNN backend forced:
                  PyTorch's own route to the same kernel, unpadded offsets, K/V heads repeated
    fa4           FlashAttention-4's CuTe kernels through pgolf's custom ops (model/attn_fa4.py), K/V heads native,
                  the padded offsets; needs flash-attn-4 (benchmarks/fa4_wheels.sh)
    fa4_tile128, fa4_nopack, fa4_tile128_nopack
                  fa4 with other forward options (FA4_FWD_OPTIONS; its SM90 default at D = 64 is 192 x 128 tiles
                  with the query heads of a K/V head packed into one tile): many documents are shorter than a
                  tile. The backward is fa4's own.
    fa4_bwd_repeat
                  fa4's forward, then its backward on K/V repeated to the query heads and each group's dK/dV summed
                  in fp32: FA4's MHA backward stores dK/dV directly, where GQA accumulates them with fp32 atomics
                  and converts them in two postprocess kernels (21 ms of a 730 ms pr1855 step). Measured on one H100
                  at --pad-to 320: 2.844 ms against fa4's 2.409, so the model keeps the GQA backward
    dense_cudnn, dense_flash
                  not document-isolated: each 2048-token row fully causal, through F.scaled_dot_product_attention
                  with cuDNN's or FlashAttention-2's kernel forced and K/V heads native (enable_gqa). A ceiling
                  reference (they compute more: every row is one segment), not a candidate backend; not compared
                  with fa2_varlen's values

Reported per variant: median ms per step, the attention TFLOP/s it reaches and its share of the GPU's bf16 peak
(FLOPs of the segments it attends, 6 d sum n(n+1) a batch, the formula of pgolf.report.flops, averaged over the
batches), the largest output and gradient difference from fa2_varlen relative to its largest value, or the error a
variant raised.
"""

from __future__ import annotations

import argparse
import sys
import traceback
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from pgolf.model.attn_backends import repeat_kv, require_varlen
from pgolf.report.flops import attention_flops_per_token, causal_t_eff, peak_flops
from step_timer import bench_cli, time_steps

FA4_FWD_OPTIONS = {  # keyword arguments of flash_attn.cute.interface._flash_attn_fwd
    "fa4_tile128": {"tile_mn": (128, 128)},
    "fa4_nopack": {"pack_gqa": False},
    "fa4_tile128_nopack": {"tile_mn": (128, 128), "pack_gqa": False},
}
DENSE = ("dense_cudnn", "dense_flash")  # full causal rows: a ceiling reference, not document-isolated
VARIANTS = ("fa2_varlen", "cudnn_ragged", "cudnn_ragged_unpadded", "cudnn_njt", "fa4", "fa4_bwd_repeat",
            *FA4_FWD_OPTIONS, *DENSE)


def attention_flops(cu: torch.Tensor, model_dim: int) -> float:
    """Forward + backward FLOPs of causal attention over the segments of one batch's offsets, as the MFU counts
    them (pgolf.report.flops): 6 t_eff d a token, t_eff = sum n(n+1) / sum n; empty padding segments add nothing."""
    n = cu.diff().numpy()
    return attention_flops_per_token(1, causal_t_eff(n), model_dim) * float(n.sum())


def segment_batches(tokens: np.ndarray, rows: int, seq_len: int, bos_id: int, count: int, pad_to: int
                    ) -> list[torch.Tensor]:
    """int32 offsets of `count` consecutive (rows x seq_len)-token windows: a segment starts at every BOS and every
    row start; each padded to `pad_to` entries with the window's length (empty segments), as pgolf's loader does."""
    n = rows * seq_len
    out = []
    for i in range(count):
        window = tokens[i * n:(i + 1) * n]
        if window.size < n:
            raise ValueError(f"the shard holds {tokens.size} tokens, fewer than {count} windows of {n}")
        starts = np.union1d(np.flatnonzero(window == bos_id), np.arange(0, n, seq_len))
        cu = np.concatenate((starts, [n])).astype(np.int32)
        if cu.size > pad_to:
            raise ValueError(f"window {i} has {cu.size} offsets, more than --pad-to {pad_to}")
        out.append(torch.from_numpy(np.concatenate((cu, np.full(pad_to - cu.size, n, np.int32)))))
    return out


def synthetic_tokens(n: int, mean_doc: int, bos_id: int, seed: int = 0) -> np.ndarray:
    """A stand-in shard where no data is given: documents of geometric length with the given mean."""
    rng = np.random.default_rng(seed)
    toks = rng.integers(4, 1000, size=n).astype(np.int32)
    toks[np.cumsum(rng.geometric(1 / mean_doc, size=n // mean_doc * 2))[: n // mean_doc] % n] = bos_id
    return toks


class CudnnRagged(torch.autograd.Function):
    """cuDNN ragged attention through the aten ops PyTorch's nested-tensor SDPA calls (causal, no dropout)."""

    @staticmethod
    def forward(ctx, q, k, v, cu, max_len):
        out, lse, _, _, _, _, seed, offset, _ = torch.ops.aten._cudnn_attention_forward(
            q, k, v, None, cu, cu, max_len, max_len, True, 0.0, True, False)
        ctx.save_for_backward(q, k, v, out, lse, seed, offset, cu)
        ctx.max_len = max_len
        return out

    @staticmethod
    def backward(ctx, g):
        q, k, v, out, lse, seed, offset, cu = ctx.saved_tensors
        dq, dk, dv = torch.ops.aten._cudnn_attention_backward(
            g.contiguous(), q, k, v, out, lse, seed, offset, torch.empty(0, device=q.device), cu, cu, ctx.max_len,
            ctx.max_len, 0.0, True)
        return dq, dk, dv, None, None


class FA4WithOptions(torch.autograd.Function):
    """FA4's forward with `options`, then pgolf's fa4 backward op on what it saved (same lse layout)."""

    @staticmethod
    def forward(ctx, q, k, v, cu, max_len, options):
        from pgolf.model.attn_fa4 import fa4_forward

        out, lse = fa4_forward(q, k, v, cu, max_len, **options)
        ctx.save_for_backward(q, k, v, out, lse, cu)
        ctx.max_len = max_len
        return out

    @staticmethod
    def backward(ctx, g):
        q, k, v, out, lse, cu = ctx.saved_tensors
        dq, dk, dv = torch.ops.pgolf.fa4_varlen_bwd(g, q, k, v, out, lse, cu, ctx.max_len)
        return dq, dk, dv, None, None, None


class FA4RepeatKVBackward(FA4WithOptions):
    """FA4's GQA forward; the backward on K/V repeated to the query heads, dK/dV folded back per K/V head."""

    @staticmethod
    def backward(ctx, g):
        from pgolf.model.attn_fa4 import fa4_backward

        q, k, v, out, lse, cu = ctx.saved_tensors
        group = q.size(1) // k.size(1)
        dq, dk, dv = fa4_backward(g, q, *(t.repeat_interleave(group, dim=1) for t in (k, v)), out, lse, cu,
                                  ctx.max_len)
        fold = lambda t: t.unflatten(1, (-1, group)).sum(2, dtype=torch.float32).to(k.dtype)
        return dq, fold(dk), fold(dv), None, None, None


def make_fn(variant: str, heads: int, seq_len: int):
    """attn(q, k, v, cu) on packed (N, H or Hkv, D) tensors; repeat_kv repeats heads along dim 1 as in the model."""
    if variant == "fa2_varlen":
        fn, causal, native_gqa = require_varlen()

        def fa2(q, k, v, cu):
            if native_gqa:
                return fn(q, k, v, cu, cu, seq_len, seq_len, **causal, enable_gqa=k.size(1) != heads)
            return fn(q, *repeat_kv(k, v, heads), cu, cu, seq_len, seq_len, **causal)
        return fa2

    if variant.startswith("fa4"):
        from pgolf.model.attn_fa4 import require_fa4

        require_fa4()  # the install error, not a failure inside the op
        if variant in FA4_FWD_OPTIONS:
            return lambda q, k, v, cu: FA4WithOptions.apply(q, k, v, cu, seq_len, FA4_FWD_OPTIONS[variant])
        if variant == "fa4_bwd_repeat":
            return lambda q, k, v, cu: FA4RepeatKVBackward.apply(q, k, v, cu, seq_len, {})
        return lambda q, k, v, cu: torch.ops.pgolf.fa4_varlen_fwd(q, k, v, cu, seq_len)[0]

    if variant in DENSE:
        from torch.nn.attention import SDPBackend, sdpa_kernel

        backend = SDPBackend.CUDNN_ATTENTION if variant == "dense_cudnn" else SDPBackend.FLASH_ATTENTION

        def dense(q, k, v, cu):  # cu ignored: every row is one causal segment
            rows = [t.view(-1, seq_len, t.size(1), t.size(2)).transpose(1, 2) for t in (q, k, v)]
            with sdpa_kernel([backend]):
                out = torch.nn.functional.scaled_dot_product_attention(*rows, is_causal=True,
                                                                       enable_gqa=k.size(1) != heads)
            return out.transpose(1, 2).reshape(q.shape)
        return dense

    def cudnn(q, k, v, cu):
        return CudnnRagged.apply(q, *repeat_kv(k, v, heads), cu, seq_len)

    def njt(q, k, v, cu):
        from torch.nn.attention import SDPBackend, sdpa_kernel

        jag = [torch.nested.nested_tensor_from_jagged(t, cu.long(), min_seqlen=1, max_seqlen=seq_len).transpose(1, 2)
               for t in (q, *repeat_kv(k, v, heads))]
        with sdpa_kernel([SDPBackend.CUDNN_ATTENTION]):
            out = torch.nn.functional.scaled_dot_product_attention(*jag, is_causal=True)
        return out.transpose(1, 2).values()
    return njt if variant == "cudnn_njt" else cudnn


def cycling_step(fn, tensors, cus: list[torch.Tensor]):
    """One forward + backward per call, on the next batch's offsets."""
    q, k, v, g = tensors
    calls = iter(range(1 << 62))

    def step():
        out = fn(q, k, v, cus[next(calls) % len(cus)])
        out.backward(g)
        return out.detach(), q.grad.detach(), k.grad.detach(), v.grad.detach()
    return step


def run(args) -> dict:
    device = torch.device(args.device)
    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[args.dtype]
    n = args.rows * args.seq_len
    if args.data:
        from pgolf.data.shards import read_shard

        shard = min(Path(args.data).glob("fineweb_train_*.bin"))
        tokens, source = read_shard(shard), str(shard)
    else:
        tokens, source = synthetic_tokens(n * args.batches, 123, args.bos_id), "synthetic (mean 123 tokens)"
    cus = [c.to(device) for c in segment_batches(tokens, args.rows, args.seq_len, args.bos_id, args.batches,
                                                 args.pad_to)]
    unpadded_cus = [c[: int((c < c[-1]).sum()) + 1] for c in cus]  # sliced once, off the timed steps
    lens = torch.cat([c.diff() for c in cus]).float()
    d = args.heads * args.head_dim
    varlen_flops = sum(attention_flops(c, d) for c in cus) / len(cus)
    dense_flops = attention_flops(torch.arange(0, n + 1, args.seq_len), d)
    peak = peak_flops(torch.cuda.get_device_name(device)) if device.type == "cuda" else None
    gen = torch.Generator(device=device).manual_seed(0)
    q = torch.randn(n, args.heads, args.head_dim, device=device, dtype=dtype, generator=gen).requires_grad_()
    k = torch.randn(n, args.kv_heads, args.head_dim, device=device, dtype=dtype, generator=gen).requires_grad_()
    v = torch.randn(n, args.kv_heads, args.head_dim, device=device, dtype=dtype, generator=gen).requires_grad_()
    g = torch.randn(n, args.heads, args.head_dim, device=device, dtype=dtype, generator=gen)
    results, outputs = [], {}

    def reset():
        for t in (q, k, v):
            t.grad = None

    for variant in args.variants:
        if device.type != "cuda":
            results.append({"variant": variant, "error": "needs CUDA (batches were built and checked)"})
            continue
        try:
            fn = make_fn(variant, args.heads, args.seq_len)
            offsets = unpadded_cus if variant.endswith(("unpadded", "njt")) else cus
            r = time_steps(cycling_step(fn, (q, k, v, g), offsets), device, args.warmup,
                           args.iters - args.iters % len(cus) or len(cus), reset=reset)
            reset()
            r["check"] = cycling_step(fn, (q, k, v, g), offsets)()  # on the first batch, compared below
        except Exception as e:  # noqa: BLE001 (a variant that cannot run here is reported, not fatal)
            where = traceback.extract_tb(e.__traceback__)[-1]
            r = {"error": f"{type(e).__name__}: {str(e)[:300]} (at {Path(where.filename).name}:{where.lineno})"}
        r.pop("last", None)
        if "error" not in r:
            check = r.pop("check")
            if variant not in DENSE:
                outputs[variant] = check
            flops = dense_flops if variant in DENSE else varlen_flops
            r["attn_tflops"] = round(flops / r["ms_median"] / 1e9, 1)
            if peak:
                r["of_peak"] = round(flops / r["ms_median"] * 1e3 / peak, 4)
        results.append({"variant": variant, **r})
        shown = r["error"] if "error" in r else \
            f"{r['ms_median']:8.3f} ms  {r['attn_tflops']:6.1f} TFLOP/s  peak {r['peak_mib']} MiB"
        print(f"{variant:13s} {shown}", flush=True)
    ref = outputs.get("fa2_varlen")
    for r in results:
        if ref is not None and r["variant"] in outputs:
            r["max_rel_diff_vs_fa2"] = {name: float((a.float() - b.float()).abs().max() / b.float().abs().max())
                                        for name, a, b in zip(("out", "dq", "dk", "dv"), outputs[r["variant"]], ref)}
    base = next((b for b in results if b["variant"] == "fa2_varlen" and "error" not in b), None)
    for r in results:
        if base and "error" not in r:
            r["speedup_vs_fa2"] = round(base["ms_median"] / r["ms_median"], 3)
    return {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "torch": torch.__version__, "tokens": n, "heads": args.heads, "kv_heads": args.kv_heads,
            "head_dim": args.head_dim, "source": source, "batches": len(cus), "pad_to": args.pad_to,
            "segments_mean_len": round(lens[lens > 0].mean().item(), 1), "segments_max_len": int(lens.max()),
            "attn_gflops_per_step": {"segments": round(varlen_flops / 1e9, 1), "dense": round(dense_flops / 1e9, 1)},
            "peak_flops": peak,
            "warmup": args.warmup, "iters": args.iters, "results": results}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", type=Path, default=None, help="a data folder (its first train shard); else synthetic")
    p.add_argument("--rows", type=int, default=48)
    p.add_argument("--seq-len", type=int, default=2048)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--kv-heads", type=int, default=4)
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--bos-id", type=int, default=1)
    p.add_argument("--batches", type=int, default=8, help="distinct windows the steps cycle through")
    p.add_argument("--pad-to", type=int, default=2048, help="offsets per batch after padding with empty segments")
    return bench_cli(p, argv, run, VARIANTS)


if __name__ == "__main__":
    raise SystemExit(main())
