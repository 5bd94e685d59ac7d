"""Parity of pgolf's `baseline` with the official ``train_gpt.py`` on CPU: same weights, same batches, compare
losses, gradients and the weights after each optimizer step (Muon + Adam, the baseline's schedule values).

    python3 benchmarks/parity_official.py --official .peers/baseline_train_gpt.py --steps 5 --out parity.json

The official script is imported from the path given (its main() is not run). Model shapes are the
baseline's at reduced depth/width so that it runs in seconds on a CPU; all arithmetic is fp32.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
from pathlib import Path

import torch

from pgolf.config import ModelConfig, OptimConfig
from pgolf.model.gpt import GPT
from pgolf.optim.builder import build_optimizers, muon_momentum_at


def load_official(path: Path):
    spec = importlib.util.spec_from_file_location("official_train_gpt", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def official_optimizers(mod, model, cfg: OptimConfig):
    """The optimizer split of the official main(), rebuilt on `model`."""
    block = list(model.blocks.named_parameters())
    patterns = mod.CONTROL_TENSOR_NAME_PATTERNS
    matrix = [p for n, p in block if p.ndim == 2 and not any(k in n for k in patterns)]
    scalar = [p for n, p in block if p.ndim < 2 or any(k in n for k in patterns)] + [model.skip_weights]
    tok = torch.optim.Adam([{"params": [model.tok_emb.weight], "lr": cfg.tied_embed_lr, "base_lr": cfg.tied_embed_lr}],
                           betas=(cfg.beta1, cfg.beta2), eps=cfg.adam_eps)
    muon = mod.Muon(matrix, lr=cfg.matrix_lr, momentum=cfg.muon_momentum, backend_steps=cfg.muon_backend_steps)
    for g in muon.param_groups:
        g["base_lr"] = cfg.matrix_lr
    sca = torch.optim.Adam([{"params": scalar, "lr": cfg.scalar_lr, "base_lr": cfg.scalar_lr}],
                           betas=(cfg.beta1, cfg.beta2), eps=cfg.adam_eps)
    return [tok, muon, sca], muon


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--official", type=Path, required=True)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--lr-mul", type=float, default=0.23)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    torch.manual_seed(0)
    mod = load_official(args.official)
    mcfg = ModelConfig(num_layers=4, model_dim=128, num_heads=4, num_kv_heads=2)
    ocfg = OptimConfig()
    ours = GPT(mcfg)
    theirs = mod.GPT(vocab_size=mcfg.vocab_size, num_layers=mcfg.num_layers, model_dim=mcfg.model_dim,
                     num_heads=mcfg.num_heads, num_kv_heads=mcfg.num_kv_heads, mlp_mult=int(mcfg.mlp_mult),
                     tie_embeddings=True, tied_embed_init_std=mcfg.tied_embed_init_std,
                     logit_softcap=mcfg.logit_softcap, rope_base=mcfg.rope_base, qk_gain_init=mcfg.qk_gain_init)
    with torch.no_grad():  # move the weights off the zero init so every path carries signal
        for p in ours.parameters():
            p.add_(0.02 * torch.randn_like(p))
    theirs.load_state_dict(ours.state_dict(), strict=True)
    opt_ours = build_optimizers(ours, ocfg, fused=False, compile_ns=False)
    opt_theirs, muon_theirs = official_optimizers(mod, theirs, ocfg)
    rows = []
    for step in range(args.steps):
        x = torch.randint(0, mcfg.vocab_size, (4, 64))
        y = torch.randint(0, mcfg.vocab_size, (4, 64))
        lo, lt = ours(x, y), theirs(x, y)
        lo.backward()
        lt.backward()
        pt = dict(theirs.named_parameters())
        grad_err = max(rel(p.grad, pt[n].grad) for n, p in ours.named_parameters())
        mom = muon_momentum_at(step, ocfg)
        opt_ours.set_muon_momentum(mom)
        opt_ours.set_lr_mul(args.lr_mul)
        for g in muon_theirs.param_groups:
            g["momentum"] = mom
        for o in opt_theirs:
            for g in o.param_groups:
                g["lr"] = g["base_lr"] * args.lr_mul
        opt_ours.step()
        for o in opt_theirs:
            o.step()
        opt_ours.zero_grad(set_to_none=True)
        for o in opt_theirs:
            o.zero_grad(set_to_none=True)
        weight_err = max(rel(p.detach(), pt[n].detach()) for n, p in ours.named_parameters())
        rows.append({"step": step, "loss_ours": float(lo), "loss_official": float(lt),
                     "max_rel_grad_err": grad_err, "max_rel_weight_err_after_step": weight_err})
        print(f"step {step}: loss {float(lo):.6f} vs {float(lt):.6f}  grad err {grad_err:.2e}  weight err {weight_err:.2e}")
    if args.out:
        args.out.write_text(json.dumps({"what": "pgolf baseline vs official train_gpt.py, CPU fp32", "rows": rows},
                                       indent=2) + "\n")


if __name__ == "__main__":
    main()
