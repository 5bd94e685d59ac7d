"""Which attention setting breaks under inductor on CUDA? Each case runs in its own process (a CUDA fault poisons
the context), compiles the bf16 training forward+backward and then `model.logits`, as
`tests/test_attention.py::test_gpu_flex_and_sdpa_doc_isolated_agree_under_compile` does, and prints OK or the
error's last line. On the H100 (torch 2.11) that test fails with "CUDA driver error: operation not supported on
global/shared address space" in inductor's static launcher; this narrows down the technique and the backend.

    python3 benchmarks/diag_doc_isolated.py --out $OUT/diag_doc_isolated.json          # device only
    python3 benchmarks/diag_doc_isolated.py --cases flex_iso --out /tmp/d.json           # one case
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
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
}

CHILD = r"""
import json, sys, torch
sys.path.insert(0, "src")
kw = json.loads(sys.argv[1])
if kw.pop("_static_launcher", True) is False:
    import torch._inductor.config as ic
    ic.use_static_cuda_launcher = False
if kw.pop("_no_tma", False):  # flex kernels without TMA descriptors (torch's heuristics may turn them on)
    import functools
    from torch.nn.attention.flex_attention import flex_attention
    import pgolf.model.attn_backends as ab
    ab._flex = lambda q: functools.partial(flex_attention, kernel_options={"USE_TMA": False})
from pgolf.config import ModelConfig
from pgolf.model.gpt import GPT, cast_for_training
dev = torch.device("cuda")
torch.manual_seed(0)
model = cast_for_training(GPT(ModelConfig(vocab_size=1024, num_layers=4, model_dim=256, num_heads=4, num_kv_heads=2,
                                          **kw)), dev)
x = torch.randint(2, 1024, (4, 512), device=dev)
x[0, [0, 100, 101, 300]] = 1
x[1, [0, 511]] = 1
with torch.autocast("cuda", dtype=torch.bfloat16):
    loss = torch.compile(model, dynamic=False, fullgraph=True)(x, x)
    loss.backward()
    torch.cuda.synchronize()
    print("train ok", flush=True)
    with torch.no_grad():
        torch.compile(model.logits, dynamic=False, fullgraph=True)(x)
    torch.cuda.synchronize()
print("logits ok", flush=True)
"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", default=",".join(CASES), help=f"comma list from: {', '.join(CASES)}")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    env = dict(os.environ, CUDA_LAUNCH_BLOCKING="1")
    rows = []
    for name in [c for c in args.cases.split(",") if c]:
        if name not in CASES:
            raise SystemExit(f"unknown case {name!r}; known: {', '.join(CASES)}")
        t0 = time.time()
        p = subprocess.run([sys.executable, "-c", CHILD, json.dumps(CASES[name])], env=env, capture_output=True,
                           text=True, timeout=300)
        lines = [ln for ln in (p.stdout + p.stderr).splitlines() if ln.strip() and not ln.startswith("DEBUG")]
        errors = [ln for ln in lines if "Error" in ln or "error" in ln]
        status = "ok" if p.returncode == 0 else ("train ok, logits failed" if "train ok" in p.stdout else "failed")
        rows.append({"case": name, "kwargs": CASES[name], "status": status, "seconds": round(time.time() - t0, 1),
                     "error": errors[-1] if p.returncode and errors else (lines[-1] if p.returncode else None)})
        print(f"{name:32s} {status:26s} {rows[-1]['seconds']:6.1f}s {rows[-1]['error'] or ''}", flush=True)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"cases": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
