"""The training loop: warm up the compiler, then train under the wallclock cap.

    pgolf train --preset baseline --set train.wallclock_s=90
    torchrun --nproc_per_node=8 -m pgolf train --preset baseline

Sections: setup -> compile warm-up (then restore weights, optimizer and loader) -> steps
(train/step.py: gradient accumulation, DDP sync on the last micro-step, clip after the all-reduce, schedule)
-> periodic validation with the clock paused -> checkpoints. The stop decision is all-reduced so
every rank stops on the same step. A non-finite loss stops the run and keeps the last good
checkpoint.
"""

from __future__ import annotations

import copy
import math
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from pgolf.compile_limits import raise_recompile_limit
from pgolf.config import RunConfig
from pgolf.data.dataset import Dataset
from pgolf.data.shards import read_shard
from pgolf.eval.bpb import ByteLUT
from pgolf.eval.flat import evaluate_flat, flat_batch_shapes, prime_shapes
from pgolf.model.attn_backends import segment_bound
from pgolf.model.gpt import GPT, cast_for_training
from pgolf.data.loaders_common import build_loader
from pgolf.optim.builder import build_optimizers
from pgolf.quant.calib import train_config_with_reserve
from pgolf.report.runlog import RunLog, fmt_eta, fmt_rate
from pgolf.train import checkpoint
from pgolf.train.clock import Clock
from pgolf.train.runtime import Runtime, seed_everything
from pgolf.train.watch import ClockWatch
from pgolf.train import qat as qat_mod
from pgolf.train.ema import WeightAverager
from pgolf.train.profile import StepProfiler
from pgolf.train.schedule import check_train_techniques, lr_mul
from pgolf.train.step import TrainStep


class TrainingDiverged(RuntimeError):
    """The loss became NaN or inf."""


@dataclass
class TrainResult:
    model: GPT  # the plain (uncompiled, unwrapped) model with the final weights
    steps: int
    train_time_s: float
    tokens_seen: int
    epochs: float
    stopped_by: str  # "wallclock" | "iterations"
    curve: list[dict] = field(default_factory=list)  # logged train-loss and validation points, in step order
    peak_mem_bytes: int = 0  # most memory held by tensors while the clock ran
    peak_reserved_bytes: int = 0  # most memory the allocator held: under CUDA graphs (compile_mode=
    # reduce-overhead) the graphs' private pool is reserved during warm-up and replays allocate nothing, so only
    # this number counts the step's activations
    compiles_in_clock: int = 0  # graphs compiled while the clock ran (train/watch.py): the warm-up missed a guard
    slow_steps: list[int] = field(default_factory=list)  # logged steps that ended an interval 3x slower than typical
    eval_losses: object = None  # (x, y) -> per-token nats, compiled when train.compile is on
    averager: WeightAverager | None = None  # EMA / SWA (train/ema.py); the pipeline applies it before export


def avoid_inductor_fusion_bug() -> None:
    """Process-wide: inductor's mix-order reduction fusion off. torch 2.11's inductor asserts (``not
    isinstance(node1, FusedMixOrderReductions)`` in the scheduler) when compiling the issue-4 'all' stack (MLP 3x,
    leaky relu², XSA, partial RoPE, SmearGate, parallel lanes, loops) on an H100 with it on (the same as
    TORCHINDUCTOR_MIX_ORDER_REDUCTION=0). ``train.mix_order_reduction`` turns it back on for the training graph
    only (`training_compile_kwargs`). A no-op on torch versions without the option."""
    import torch._inductor.config as inductor_config

    if hasattr(inductor_config.triton, "mix_order_reduction"):
        inductor_config.triton.mix_order_reduction = False


def require_cpu_compiler(device: torch.device) -> None:
    """train.compile on CPU: inductor writes C++ and builds it with the compiler of $CXX (else g++); say so at start,
    naming the field, instead of inside the first compiled step."""
    if device.type != "cpu":
        return
    from torch._inductor.cpp_builder import get_cpp_compiler

    try:
        get_cpp_compiler()
    except Exception as e:  # noqa: BLE001 (inductor's InvalidCxxCompiler, or whatever its probe raises)
        raise RuntimeError(f"train.compile=true on CPU needs a C++ compiler for torch.compile ({e}); install g++ "
                           "(or point $CXX at one), or --set train.compile=false") from None


def no_buffer_sync() -> dict:
    """DDP's keyword for not broadcasting buffers before every forward (the rotary tables are the same on every
    rank): ``forward_sync_buffers=False`` where this torch has it (it deprecates ``broadcast_buffers``; it still syncs
    once at construction), else ``broadcast_buffers=False`` (torch 2.11)."""
    import inspect

    if "forward_sync_buffers" in inspect.signature(DDP.__init__).parameters:
        return {"forward_sync_buffers": False}
    return {"broadcast_buffers": False}


def training_compile_kwargs(tc) -> dict:
    """torch.compile arguments of the training graph: train.compile_mode as its inductor options (mode and options
    cannot both be given), plus mix-order reduction (row and column reductions of one tensor, as in RMSNorm's
    backward, in one kernel) when train.mix_order_reduction is on and this inductor has it, and coordinate-descent
    tuning of inductor's kernels when train.coordinate_descent_tuning is on."""
    import torch._inductor as inductor
    import torch._inductor.config as inductor_config

    options = dict(inductor.list_mode_options(tc.compile_mode))
    if tc.mix_order_reduction and hasattr(inductor_config.triton, "mix_order_reduction"):
        options["triton.mix_order_reduction"] = True
    if tc.coordinate_descent_tuning:
        options["coordinate_descent_tuning"] = True
    return {"dynamic": False, "fullgraph": True, "options": options}


def segmented(token_losses, model: GPT):
    """(x, y) -> nats that hands `token_losses` the cu_seqlens of x (varlen / fa3 backends)."""
    def scorer(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return token_losses(x, y, **model.attn_inputs(x))

    return scorer


def train_segment_bound(files, *, rows: int, seq_len: int, bos_id: int, doc_isolated: bool) -> int:
    """segment_bound over every train shard (a thread per shard: numpy releases the GIL), not only the first: a
    denser window in a later shard would pad to a longer cu_seqlens, a new graph compiled on the clock."""
    def one(path) -> int:
        return segment_bound(read_shard(path), rows=rows, seq_len=seq_len, bos_id=bos_id, doc_isolated=doc_isolated)

    with ThreadPoolExecutor(max_workers=max(1, min(8, len(files), os.cpu_count() or 1))) as pool:
        return max(pool.map(one, files))


def fix_segment_sizes(model: GPT, data: Dataset, tc, eval_shapes: list[tuple[int, int]],
                      rt: Runtime | None = None) -> dict:
    """Pad every batch shape's cu_seqlens to one length (attn_backends.segment_bound): for training, the bound over
    all train shards (with `rt`, each rank scans its share and the ranks take the max); for evaluation, per eval
    shape, over the validation stream. Sets it on the model (GPT.pad_segments) and returns {(B, T): length} to
    prime; empty for the backends without segments."""
    if not model.uses_segments:
        return {}
    kw = dict(bos_id=model.cfg.bos_id, doc_isolated=model.cfg.doc_isolated)
    rows = tc.micro_batch_tokens // tc.seq_len
    files = data.train_files[rt.rank::rt.world_size] if rt is not None else data.train_files
    bound = train_segment_bound(files, rows=rows, seq_len=tc.seq_len, **kw) if files else 0
    sizes = {(rows, tc.seq_len): rt.max_int(bound) if rt is not None else bound}
    for b, L in eval_shapes:
        sizes.setdefault((b, L), segment_bound(data.val_tokens, rows=b, seq_len=L, **kw))
    for shape, size in sizes.items():
        model.pad_segments(shape, size)
    return sizes


def train_model(cfg: RunConfig, rt: Runtime, data: Dataset, run_dir: Path, log: RunLog, *,
                resume: bool = False) -> TrainResult:
    tc = train_config_with_reserve(cfg)  # wallclock_s minus quant.gptq_reserve_s (the same object when 0)
    seed_everything(tc.seed)
    model = cast_for_training(GPT(cfg.model), rt.device)
    check_train_techniques(tc)
    qat = qat_mod.LateQAT.from_config(model, tc)  # before torch.compile: the flag must be a graph input
    if tc.compile:
        require_cpu_compiler(rt.device)
        avoid_inductor_fusion_bug()
    compiled: nn.Module = torch.compile(model, **training_compile_kwargs(tc)) if tc.compile else model
    net: nn.Module = DDP(compiled, device_ids=[rt.local_rank] if rt.device.type == "cuda" else None,
                         **no_buffer_sync()) if rt.distributed else compiled
    opt = build_optimizers(model, cfg.optim)
    accum = tc.grad_accum(rt.world_size)
    loader = build_loader(tc, data, rank=rt.rank, world_size=rt.world_size)  # train.loader: stream|coprime|docpack
    lut = ByteLUT.from_numpy(data.luts, rt.device)
    eval_losses = torch.compile(model.token_losses, dynamic=False) if tc.compile else model.token_losses
    if tc.compile and rt.device.type == "cuda" and cfg.model.attn_backend == "flex" and cfg.model.doc_isolated:
        log("warning: flex + doc_isolated: on an H100 with torch 2.11 the compiled evaluation graph faults "
            "(benchmarks/diag_doc_isolated.py); model.attn_backend=varlen computes the same attention")
    if model.uses_segments:  # varlen / fa3: cu_seqlens built outside the graph, one graph per batch shape
        raise_recompile_limit(64)
        eval_losses = segmented(eval_losses, model)
    log(f"model_params:{sum(p.numel() for p in model.parameters())} world_size:{rt.world_size} grad_accum:{accum} "
        f"micro_batch_tokens:{tc.micro_batch_tokens} batch_tokens:{tc.batch_tokens} seq_len:{tc.seq_len}")

    one_step = TrainStep(model, net, opt, loader, cfg, tc, rt, qat=qat, log=log)  # train/step.py

    # Compile warm-up outside the clock, then restore the true initial state (official train_gpt.py).
    if tc.warmup_steps > 0:
        t_warm = time.perf_counter()
        init_model = copy.deepcopy(model.state_dict())
        init_opt = copy.deepcopy(opt.state_dict())
        init_loader = loader.state_dict()
        eval_shapes = sorted({*flat_batch_shapes(len(data.val_tokens), seq_len=cfg.eval.seq_len or tc.seq_len,
                                                 batch_tokens=cfg.eval.batch_tokens),
                              *(flat_batch_shapes(len(data.val_tokens), seq_len=tc.seq_len,
                                                  batch_tokens=cfg.eval.batch_tokens, max_tokens=tc.val_max_tokens)
                                if tc.val_every > 0 else [])})
        # Prime every graph the run will use: one pass per progress milestone (e.g. depth recurrence switching
        # on at 35% of training is a second graph), so no recompilation lands on the clock. Varlen / fa3 batches
        # are padded to one cu_seqlens length per shape, so the loader's own batches prime their graph.
        segment_sizes = fix_segment_sizes(model, data, tc, eval_shapes, rt)
        for at in (0.0, *model.progress_milestones()):
            for i in range(tc.warmup_steps):
                one_step(i, 0.0, priming=True, at=at)
            if tc.compile and tc.prime_eval:  # and the eval graph in that state, at every eval batch shape
                prime_shapes(eval_losses, eval_shapes, rt.device, cfg.model.bos_id)
            log(f"warmup: progress state {at:g} primed at {time.perf_counter() - t_warm:.1f}s"
                + (f" (cu_seqlens padded to {segment_sizes})" if segment_sizes else ""))
        model.load_state_dict(init_model)
        opt.load_state_dict(init_opt)
        loader.load_state_dict(init_loader)
        log(f"warmup:{tc.warmup_steps} steps primed, state restored, compile_s:{time.perf_counter() - t_warm:.1f}")
    averager = WeightAverager.from_config(model, tc)  # EMA starts from the (restored) initial weights, as TOP
    one_step.averager = averager
    # EMA/SWA and QAT state ride along in checkpoints; passed only when on, so the baseline call is unchanged.
    ckpt_extras = {k: v for k, v in (("averager", averager), ("qat", qat)) if v is not None}
    extras_kw = {"extras": ckpt_extras} if ckpt_extras else {}

    step, curve, elapsed0 = 0, [], 0.0
    if resume:
        state = checkpoint.load(run_dir, rt, model, opt, loader, **extras_kw)
        step, curve, elapsed0 = state["step"], state["curve"], state["elapsed_s"]
        log(f"resumed from {run_dir / checkpoint.MODEL_FILE} at step {step} ({elapsed0:.1f}s trained)")

    clock = Clock(rt.device, elapsed0)
    if rt.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(rt.device)
    bad = torch.zeros((), dtype=torch.bool, device=rt.device)
    stopped_by = "iterations"
    profiler = StepProfiler.from_config(tc, run_dir, rt.device, rt.is_main)
    clock.start()
    watch = ClockWatch()  # compiles and stalls inside the clock: logged as warnings, counted in the summary
    last_log_t, last_log_step = clock.elapsed(), step
    while True:
        cap_hit = tc.wallclock_s > 0 and clock.elapsed() >= tc.wallclock_s
        if rt.all_agree(cap_hit):
            stopped_by = "wallclock"
            break
        if step >= tc.iterations:
            break
        train_loss = one_step(step, clock.elapsed())
        bad |= ~torch.isfinite(train_loss)
        step += 1
        if profiler is not None:
            profiler.after_step(step)
        is_log = step <= 5 or step % tc.log_every == 0
        is_val = tc.val_every > 0 and step % tc.val_every == 0
        is_ckpt = tc.checkpoint_every > 0 and step % tc.checkpoint_every == 0
        if is_log or is_val or is_ckpt or step % 25 == 0:
            if rt.all_agree(bool(bad.item())):
                raise TrainingDiverged(
                    f"non-finite training loss at or before step {step}; the last good checkpoint "
                    f"(if any) is kept in {run_dir}. Lower the learning rates or enable optim.grad_clip_norm.")
        if is_log:
            if rt.distributed:  # report the global mean, not this rank's micro-batches
                torch.distributed.all_reduce(train_loss, op=torch.distributed.ReduceOp.AVG)
            now = clock.elapsed()
            rate = (step - last_log_step) * tc.batch_tokens / max(now - last_log_t, 1e-9)
            eta = (tc.wallclock_s - now) if tc.wallclock_s > 0 else (tc.iterations - step) * now / max(step, 1)
            log(f"step:{step}/{tc.iterations} loss:{train_loss.item():.4f} lr_mul:{lr_mul(step, now, tc):.3f} "
                f"train_time:{now:.3f}s tok/s:{fmt_rate(rate)} epoch:{loader.epochs:.3f} eta:{fmt_eta(eta)}")
            for line in watch.check(step, step - last_log_step, now - last_log_t):
                log(line)
            last_log_t, last_log_step = now, step
            curve.append({"step": step, "train_time_s": round(now, 3), "train_loss": float(train_loss.item())})
        if is_val:
            with clock.paused(), watch.excluded():
                res = evaluate_flat(eval_losses, data.val_tokens, lut, seq_len=tc.seq_len,
                                    batch_tokens=cfg.eval.batch_tokens, device=rt.device, max_tokens=tc.val_max_tokens)
            point = {"step": step, "train_time_s": round(clock.elapsed(), 3), "val_loss": res.loss,
                     "val_bpb": res.bpb, "epochs": loader.epochs}
            curve.append(point)
            log(f"step:{step} val_loss:{res.loss:.4f} val_bpb:{res.bpb:.4f} train_time:{point['train_time_s']:.1f}s")
        if is_ckpt:
            with clock.paused():
                checkpoint.save(run_dir, rt, model, opt, loader, step=step, elapsed_s=clock.elapsed(), curve=curve,
                                **extras_kw)
    train_time = clock.elapsed()
    if profiler is not None:
        profiler.close()
    model.set_progress(1.0)
    on_cuda = rt.device.type == "cuda"
    peak = torch.cuda.max_memory_allocated(rt.device) if on_cuda else 0
    reserved = torch.cuda.max_memory_reserved(rt.device) if on_cuda else 0
    log(f"stopped:{stopped_by} step:{step} train_time:{train_time:.3f}s epochs:{loader.epochs:.3f} "
        f"peak_mem_mib:{peak // 2**20} peak_reserved_mib:{reserved // 2**20}")
    if qat is not None:  # scoring and export read the float weights
        qat_mod.set_enabled(model, False)
    if averager is not None:
        log(averager.describe())
    if tc.checkpoint_every > 0:
        checkpoint.save(run_dir, rt, model, opt, loader, step=step, elapsed_s=train_time, curve=curve, **extras_kw)
    return TrainResult(model=model, steps=step, train_time_s=train_time, tokens_seen=step * tc.batch_tokens,
                       epochs=loader.epochs, stopped_by=stopped_by, curve=curve, peak_mem_bytes=int(peak),
                       peak_reserved_bytes=int(reserved), compiles_in_clock=watch.compiles,
                       slow_steps=watch.slow_steps, eval_losses=eval_losses, averager=averager)


def tokens_per_second(result: TrainResult) -> float:
    return result.tokens_seen / result.train_time_s if result.train_time_s > 0 else math.nan
