"""Which attention setting breaks under inductor on CUDA? Each case runs in its own process (a CUDA fault poisons
the context), compiles the bf16 training forward+backward and then `model.logits`, as
`tests/test_attention.py::test_gpu_doc_isolated_backend_agrees_with_sdpa_under_compile` does, and prints OK or the
error's last line. On the H100 (torch 2.11) that test's flex case fails with "CUDA driver error: operation not
supported on global/shared address space"; these cases narrowed it to the compiled no-grad graph with B > 1 rows
(benchmarks/results/diag_doc_isolated_h100_narrowing.json). The varlen cases pass.

    python3 benchmarks/diag_doc_isolated.py --out $OUT/diag_doc_isolated.json          # device only
    python3 benchmarks/diag_doc_isolated.py --cases flex_iso --out /tmp/d.json           # one case
    python3 benchmarks/diag_doc_isolated.py --cases flex_iso,flex_iso_no_tma --jobs 8 --out $OUT/d.json  # at once
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

FULL = dict(doc_isolated=True, xsa_layers="all", attn_out_gate_width=12, rope_dims=16)
CASES: dict[str, dict] = {
    "sdpa_iso": dict(attn_backend="sdpa", doc_isolated=True),
    "flex_causal": dict(attn_backend="flex"),
    "flex_iso": dict(attn_backend="flex", doc_isolated=True),
    "flex_iso_xsa": dict(attn_backend="flex", doc_isolated=True, xsa_layers="all"),
    "flex_iso_rope16": dict(attn_backend="flex", doc_isolated=True, rope_dims=16),
    "sdpa_full": dict(attn_backend="sdpa", **FULL),
    "flex_full": dict(attn_backend="flex", **FULL),
    "flex_full_no_static_launcher": dict(attn_backend="flex", **FULL, _static_launcher=False),
    "flex_full_no_tma": dict(attn_backend="flex", **FULL, _no_tma=True),
    # narrowing flex_iso (train ok, logits failed on the H100): the launcher, TMA, strides, the captured doc ids,
    # the training compile before it, grad mode, the batch shape
    "flex_iso_no_static_launcher": dict(attn_backend="flex", doc_isolated=True, _static_launcher=False),
    "flex_iso_no_tma": dict(attn_backend="flex", doc_isolated=True, _no_tma=True),
    "flex_iso_contiguous_qkv": dict(attn_backend="flex", doc_isolated=True, _contiguous=True),
    "flex_iso_doc_int32": dict(attn_backend="flex", doc_isolated=True, _doc_int32=True),
    "flex_iso_logits_only": dict(attn_backend="flex", doc_isolated=True, _skip_train=True),
    "flex_iso_logits_with_grad": dict(attn_backend="flex", doc_isolated=True, _grad_logits=True),
    "flex_iso_one_row": dict(attn_backend="flex", doc_isolated=True, _shape=[1, 2048]),
    # H100 torch 2.11: only the no-grad graph faults, in a flex template fused with the block-mask ops
    "flex_iso_no_prologue_fusion": dict(attn_backend="flex", doc_isolated=True, _no_prologue_fusion=True),
    "flex_full_no_prologue_fusion": dict(attn_backend="flex", **FULL, _no_prologue_fusion=True),
    # torch's FlashAttention varlen kernel, cu_seqlens from outside the graph (the record's kernel, via its shim)
    "varlen_iso": dict(attn_backend="varlen", doc_isolated=True),
    "varlen_full": dict(attn_backend="varlen", **FULL),
}

CHILD = r"""
import json, sys, torch
sys.path.insert(0, "src")
kw = json.loads(sys.argv[1])
if kw.pop("_static_launcher", True) is False:
    import torch._inductor.config as ic
    ic.use_static_cuda_launcher = False
if kw.pop("_no_prologue_fusion", False):
    import torch._inductor.config as ic
    ic.prologue_fusion = False
import functools
from torch.nn.attention.flex_attention import flex_attention
import pgolf.model.attn_backends as ab
if kw.pop("_no_tma", False):  # flex kernels without TMA descriptors (torch's heuristics may turn them on)
    ab._flex = lambda q: functools.partial(flex_attention, kernel_options={"USE_TMA": False})
if kw.pop("_contiguous", False):  # q, k, v as dense tensors, not views of the projections
    ab._flex = lambda q: lambda q, k, v, **o: flex_attention(q.contiguous(), k.contiguous(), v.contiguous(), **o)
if kw.pop("_doc_int32", False):  # the mask_mod's captured buffer as int32
    ab.doc_ids = lambda ids, bos: torch.cumsum((ids == bos).to(torch.int32), dim=1, dtype=torch.int32)
skip_train, grad_logits = kw.pop("_skip_train", False), kw.pop("_grad_logits", False)
B, T = kw.pop("_shape", [4, 512])
from pgolf.config import ModelConfig
from pgolf.model.gpt import GPT, cast_for_training
dev = torch.device("cuda")
torch.manual_seed(0)
model = cast_for_training(GPT(ModelConfig(vocab_size=1024, num_layers=4, model_dim=256, num_heads=4, num_kv_heads=2,
                                          **kw)), dev)
x = torch.randint(2, 1024, (B, T), device=dev)
x[0, [0, 100, 101, 300]] = 1
x[-1, [0, T - 1]] = 1
extra = model.attn_inputs(x)
with torch.autocast("cuda", dtype=torch.bfloat16):
    if not skip_train:
        loss = torch.compile(model, dynamic=False, fullgraph=True)(x, x, **extra)
        loss.backward()
        torch.cuda.synchronize()
    print("train ok", flush=True)
    with torch.set_grad_enabled(grad_logits):
        torch.compile(model.logits, dynamic=False, fullgraph=True)(x, **extra)
    torch.cuda.synchronize()
print("logits ok", flush=True)
"""


def run_case(name: str, env: dict[str, str]) -> dict:
    """One case in a fresh process: its status, the last error line, and the tail of its output."""
    t0 = time.time()
    try:
        p = subprocess.run([sys.executable, "-c", CHILD, json.dumps(CASES[name])], env=env, capture_output=True,
                           text=True, timeout=400)
        rc, out, stdout = p.returncode, p.stdout + p.stderr, p.stdout
    except subprocess.TimeoutExpired as e:
        rc, stdout = -1, (e.stdout or b"").decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
        out = stdout + "\ntimed out"
    lines = [ln for ln in out.splitlines() if ln.strip() and not ln.startswith("DEBUG")]
    errors = [ln for ln in lines if "Error" in ln or "error" in ln]
    status = "ok" if rc == 0 else ("train ok, logits failed" if "train ok" in stdout else "failed")
    return {"case": name, "kwargs": CASES[name], "status": status, "seconds": round(time.time() - t0, 1),
            "error": (errors[-1] if errors else lines[-1] if lines else f"exit {rc}") if rc else None,
            "tail": lines[-25:] if rc else []}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", default=",".join(CASES), help=f"comma list from: {', '.join(CASES)}")
    ap.add_argument("--jobs", type=int, default=1, help="cases run at once (each its own process and CUDA context)")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    names = [c for c in args.cases.split(",") if c]
    unknown = [c for c in names if c not in CASES]
    if unknown:
        raise SystemExit(f"unknown case(s) {unknown}; known: {', '.join(CASES)}")
    env = dict(os.environ, CUDA_LAUNCH_BLOCKING="1")
    rows = []
    with ThreadPoolExecutor(max(1, args.jobs)) as pool:
        for row in pool.map(lambda n: run_case(n, env), names):
            rows.append(row)
            print(f"{row['case']:32s} {row['status']:26s} {row['seconds']:6.1f}s {row['error'] or ''}", flush=True)
            args.out.parent.mkdir(parents=True, exist_ok=True)
            tmp = args.out.with_suffix(".tmp")
            tmp.write_text(json.dumps({"cases": rows}, indent=2) + "\n")
            tmp.replace(args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
