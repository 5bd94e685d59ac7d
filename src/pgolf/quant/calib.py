"""Calibration statistics for GPTQ / AWQ-lite / LQER: H = X^T X / n per weight, from training batches.

Forward pre-hooks on every `CastedLinear` record the module's input, so (techniques.md §4.E):
c_q, c_k and c_v see the attention input, ``attn.proj`` the pre-projection attention output,
``mlp.fc`` the MLP input and ``mlp.proj`` the post-activation hidden; the tied embedding (as the LM
head) and an untied ``lm_head`` get the final-norm output ``model.hidden(x)``. A hook that fires
several times per forward (looped layers) accumulates every pass. On CUDA the forward runs under
bf16 autocast, as in training; sums are fp32.

Hessians come from *training* batches inside the training budget: ``quant.gptq_reserve_s`` is taken
off the wallclock by `train_config_with_reserve` (PR #1855 ``GPTQ_RESERVE_SECONDS``), and
``quant.gptq_calib_batches`` micro-batches are read afterwards.

    stats = collect_hessians(model, training_batches(cfg, data, device), max_batches=16)
    stats.hessians["blocks.0.attn.c_q.weight"]   # (512, 512) fp32
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator

import torch
from torch import Tensor, nn

from pgolf.model.gpt import unfused_projections
from pgolf.model.layers import CastedLinear


@dataclass
class CalibStats:
    """Per weight name: H = X^T X / n (fp32, on the collection device) and the n it averages."""

    hessians: dict[str, Tensor] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    batches: int = 0
    seconds: float = 0.0


def train_config_with_reserve(cfg: Any):
    """`cfg.train` with ``wallclock_s`` shortened by ``cfg.quant.gptq_reserve_s`` (same object when no reserve).

    The training loop calls this once (``tc = train_config_with_reserve(cfg)``) so that its stop
    rule, LR schedule and progress fraction all use the effective cap."""
    reserve = float(getattr(cfg.quant, "gptq_reserve_s", 0.0) or 0.0)
    tc = cfg.train
    if reserve <= 0 or tc.wallclock_s <= 0:
        return tc
    if reserve >= tc.wallclock_s:
        raise ValueError(f"quant.gptq_reserve_s={reserve} must be smaller than train.wallclock_s={tc.wallclock_s}")
    return dataclasses.replace(tc, wallclock_s=tc.wallclock_s - reserve)


def training_batches(cfg: Any, data: Any, device: torch.device, *,
                     seed_offset: int = 7919) -> Callable[[], Iterator[Tensor]]:
    """A callable yielding ``cfg.quant.gptq_calib_batches`` training micro-batches (inputs only).

    It reads the training shards from an offset that differs from the training stream's start."""
    from pgolf.data.loader import TokenLoader

    def gen() -> Iterator[Tensor]:
        loader = TokenLoader(data.train_files, rank=0, world_size=1, seed=cfg.train.seed + seed_offset)
        for _ in range(int(cfg.quant.gptq_calib_batches)):
            x, _ = loader.next_batch(cfg.train.micro_batch_tokens, cfg.train.seq_len, device)
            yield x

    return gen


def _batches(calib: Any) -> Iterable:
    if callable(calib):
        return calib()
    return calib


MM_OUT_DTYPE = torch.__version__ >= "2.8"  # torch.mm(..., out_dtype=torch.float32) for bf16 / fp16 on CUDA


def gram(x: Tensor) -> Tensor:
    """X^T X in fp32 for X (n, d). bf16 / fp16 on CUDA: one tensor-core GEMM that accumulates and returns fp32
    (``mm`` with ``out_dtype``), so every product is exact, as in the fp32 GEMM of the upcast X, at a fraction of
    its time (an fp32 GEMM runs on the CUDA cores); otherwise, and before torch 2.8 (no ``out_dtype``), fp32."""
    if x.is_cuda and x.dtype in (torch.bfloat16, torch.float16) and MM_OUT_DTYPE:
        return torch.mm(x.T, x, out_dtype=torch.float32)
    x = x.float()
    return x.T @ x


class HessianCollector:
    """Context manager: hooks every CastedLinear of `model`, accumulating X^T X per weight."""

    def __init__(self, model: nn.Module):
        self.model = model
        self.sums: dict[str, Tensor] = {}
        self.counts: dict[str, int] = {}
        self._handles: list[Any] = []
        self._plain = unfused_projections(model)  # the fused MLP / QKV paths never call the hooked modules
        self._last: tuple[Tensor, Tensor] | None = None  # (input, its X^T X) of the latest hook

    def add(self, name: str, x: Tensor) -> None:
        if self._last is not None and self._last[0] is x:  # c_q, c_k and c_v read the same input: one X^T X
            xtx = self._last[1]
        else:
            xtx = gram(x.detach().reshape(-1, x.shape[-1]))
            self._last = (x, xtx)  # the reference keeps x alive, so `is` cannot match a reused address
        n = x.numel() // x.shape[-1]
        if name in self.sums:
            self.sums[name] += xtx
        else:
            self.sums[name] = xtx.clone()
        self.counts[name] = self.counts.get(name, 0) + n

    def __enter__(self) -> "HessianCollector":
        self._plain.__enter__()
        for mname, mod in self.model.named_modules():
            if isinstance(mod, CastedLinear):
                wname = f"{mname}.weight"

                def hook(module, args, _w=wname):
                    self.add(_w, args[0])

                self._handles.append(mod.register_forward_pre_hook(hook))
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
        self._last = None
        self._plain.__exit__(*exc)

    def stats(self) -> CalibStats:
        hs = {k: v / max(self.counts[k], 1) for k, v in self.sums.items()}
        return CalibStats(hessians=hs, counts=dict(self.counts))


@torch.no_grad()
def collect_hessians(model: nn.Module, calib: Any, *, max_batches: int = 0) -> CalibStats:
    """Run `model.hidden` over the batches of `calib` (an iterable, or a callable returning one, of
    token tensors (B, T) or (x, y) pairs) with the hooks on; `max_batches` > 0 stops early."""
    if calib is None:
        raise ValueError("calibration batches are required (GPTQ, AWQ-lite or LQER whitening is on); "
                         "pass calib= a callable or iterable of training token batches")
    if not hasattr(model, "hidden"):
        raise ValueError(f"{type(model).__name__} has no hidden(input_ids) method to calibrate the LM head")
    t0 = time.perf_counter()
    was_training = model.training
    model.eval()
    head = "tok_emb.weight" if getattr(model, "lm_head", None) is None else "lm_head.weight"
    dev = next(model.parameters()).device
    n = 0
    with HessianCollector(model) as col:
        for batch in _batches(calib):
            if max_batches and n >= max_batches:
                break
            x = batch[0] if isinstance(batch, (tuple, list)) else batch
            x = x.to(dev)
            ctx = (torch.autocast(device_type="cuda", dtype=torch.bfloat16) if dev.type == "cuda"
                   else torch.autocast(device_type="cpu", enabled=False))
            with ctx:
                h = model.hidden(x)
            col.add(head, h)
            n += 1
    model.train(was_training)
    if n == 0:
        raise ValueError("calibration produced no batches")
    stats = col.stats()
    stats.batches, stats.seconds = n, time.perf_counter() - t0
    return stats
