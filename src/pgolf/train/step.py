"""One optimizer step of training: the micro-batches' forward and backward (gradient accumulation, DDP's sync on the
last one), then the schedule, the clip after the all-reduce, the optimizers and the weight average.

    step = TrainStep(model, net, opt, loader, cfg, tc, rt)  # train_model builds it once
    loss = step(i, elapsed_s)                                # step i: the mean training loss, a device tensor

The same object drives the compile warm-up (``priming=True``: no QAT switch, no EMA) and is what
``benchmarks/model_step_bench.py --full-step`` times, so a benchmark measures the loop's own step.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.profiler import record_function

from pgolf.config import RunConfig, TrainConfig
from pgolf.data.loaders_common import host_to_device
from pgolf.model.gpt import GPT
from pgolf.optim.builder import muon_momentum_at, wd_mul
from pgolf.train import qat as qat_mod
from pgolf.train.ema import WeightAverager
from pgolf.train.runtime import Runtime
from pgolf.train.schedule import GRAPH_MODES, lr_mul, progress, warmdown_mul


def next_micro_batch(loader, model: GPT, tc, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """(x, y, forward kwargs) on `device`. The extra inputs (cu_seqlens, GPT.attn_inputs) are built from the host
    batch and copied with it, so the host never waits for the GPU and keeps queueing kernels (#1855 builds
    cu_seqlens in its loader; from CUDA ids, finding the BOS tokens would sync once per micro-batch)."""
    x, y = loader.next_batch(tc.micro_batch_tokens, tc.seq_len, "cpu")
    extra = model.attn_inputs(x)
    x, y, *moved = host_to_device(x, y, *extra.values(), device=device)
    return x, y, dict(zip(extra, moved))


def own_gradients(model: nn.Module) -> None:
    """Replace every .grad with a copy (one multi-tensor op, a few fused launches), so that no gradient is a buffer a
    CUDA graph replay writes into (TrainStep.replays_graphs)."""
    params = [p for p in model.parameters() if p.grad is not None]
    for p, g in zip(params, torch._foreach_mul([p.grad for p in params], 1.0)):
        p.grad = g


def autocast_ctx(device: torch.device):
    if device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return torch.autocast(device_type="cpu", enabled=False)


@dataclass
class TrainStep:
    model: GPT  # the plain model (schedules and state)
    net: nn.Module  # what runs the forward: the model, compiled and/or wrapped in DDP
    opt: Any  # pgolf.optim.builder.Optimizers
    loader: Any
    cfg: RunConfig  # cfg.optim: momentum warmup, tapered WD, clip
    tc: TrainConfig  # the schedule's view of cfg.train (wallclock less quant.gptq_reserve_s)
    rt: Runtime
    qat: qat_mod.LateQAT | None = None
    averager: WeightAverager | None = None  # set after the warm-up (EMA starts from the restored weights)
    log: Callable[[str], None] = print

    @property
    def replays_graphs(self) -> bool:
        """Whether the training graph runs as CUDA graphs (train.compile_mode in GRAPH_MODES). A replay writes into
        the same output buffers every time, and the first backward of a step hands its output buffers over as the
        .grad tensors, which the next micro-batch's replay would overwrite (torch raises on the access). So after
        that backward the gradients are copied into tensors of their own (`own_gradients`), and the later ones add
        into those. Zeroing instead of dropping them would also do, but would let Adam and weight decay move
        parameters that got no gradient."""
        return self.tc.compile and self.tc.compile_mode in GRAPH_MODES

    @property
    def accum(self) -> int:
        return self.tc.grad_accum(self.rt.world_size)

    def micro_batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, dict]]:
        for micro in range(self.accum):
            if self.rt.distributed:
                self.net.require_backward_grad_sync = micro == self.accum - 1
            yield next_micro_batch(self.loader, self.model, self.tc, self.rt.device)

    def __call__(self, step: int, elapsed: float, priming: bool = False, at: float | None = None) -> torch.Tensor:
        """Step `step` at `elapsed` training seconds; `at` forces the model's progress (the warm-up primes each
        progress milestone's graph)."""
        tc, opt = self.tc, self.opt
        frac, mul = progress(step, elapsed, tc), lr_mul(step, elapsed, tc)
        self.model.set_progress(frac if at is None else at)
        if not priming and self.qat is not None and self.qat.before_step(step, warmdown_mul(step, elapsed, tc)):
            self.log(f"late_qat:enabled step:{step} bits:{self.qat.bits} lr_mul:{mul:.4f}")
        opt.zero_grad(set_to_none=True)
        total = torch.zeros((), device=self.rt.device)
        for micro, (x, y, extra) in enumerate(self.micro_batches()):
            # a range for profiles (profile.range_spans); the backward's kernels launch from autograd's own thread
            with autocast_ctx(self.rt.device), record_function("pgolf.forward"):
                loss = self.net(x, y, **extra)
            total += loss.detach()
            (loss / self.accum).backward()
            if micro == 0 and self.accum > 1 and self.replays_graphs:
                own_gradients(self.model)
        opt.set_muon_momentum(muon_momentum_at(step, self.cfg.optim, frac))
        opt.set_lr_mul(mul)
        opt.set_wd_mul(wd_mul(frac, self.cfg.optim))
        if self.cfg.optim.grad_clip_norm > 0:  # DDP has already averaged the gradients: this is the global norm
            with record_function("pgolf.clip"):  # ranges a profile reports (pgolf.train.profile.range_spans)
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.optim.grad_clip_norm)
        opt.step()
        if not priming and self.averager is not None:
            with record_function("pgolf.ema"):
                self.averager.after_step(self.model, step + 1, warmdown_mul(step, elapsed, tc))
        return total / self.accum
