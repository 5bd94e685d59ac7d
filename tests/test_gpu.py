"""GPU-only checks (run on the device machine: ``pytest -m gpu``)."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from conftest import cuda_step_config, tiny_run_config, train_cpu

from pgolf.config import ModelConfig
from pgolf.model.gpt import GPT, cast_for_training

pytestmark = pytest.mark.gpu
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@needs_cuda
def test_compiled_forward_matches_eager():
    torch.manual_seed(0)
    model = cast_for_training(GPT(ModelConfig()), torch.device("cuda"))
    for p in model.parameters():
        p.data.add_(0.01 * torch.randn_like(p))
    x = torch.randint(0, 1024, (4, 1024), device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        eager = model(x, x)
        compiled = torch.compile(model, dynamic=False, fullgraph=True)(x, x)
    assert abs(eager.item() - compiled.item()) < 2e-2


@needs_cuda
def test_short_cuda_run_end_to_end(byte_dataset, tmp_path):
    from pgolf.pipeline import run

    cfg = tiny_run_config(byte_dataset, tmp_path / "runs", iterations=20, compile=True, device="cuda", warmup_steps=2)
    cfg = dataclasses.replace(cfg, quant=dataclasses.replace(cfg.quant, keep_float_max_numel=256))
    summary = run(cfg, run_id="gpu")
    assert summary["valid"] and summary["steps"] == 20
    assert summary["val_bpb"]["roundtrip"] < 8
    assert abs(summary["val_bpb"]["roundtrip"] - summary["val_bpb"]["prequant"]) < 0.05


@needs_cuda
def test_primed_eval_graph_does_not_recompile_during_evaluation():
    # the compile warm-up primes these shapes; a recompile in the real evaluation cost 20-36 s per proxy run
    import numpy as np

    from pgolf.eval.bpb import ByteLUT
    from pgolf.eval.flat import evaluate_flat, flat_batch_shapes, prime_shapes

    torch._dynamo.reset()
    dev = torch.device("cuda")
    model = cast_for_training(GPT(ModelConfig(num_layers=2, model_dim=128, num_heads=4, num_kv_heads=2)), dev)
    fn = torch.compile(model.token_losses, dynamic=False)
    val = np.random.default_rng(0).integers(2, 1024, size=70_001).astype(np.uint16)
    lut = ByteLUT.from_numpy((np.ones(1024, np.int16), np.zeros(1024, bool), np.zeros(1024, bool)), dev)
    shapes = flat_batch_shapes(len(val), seq_len=256, batch_tokens=16_384)
    assert shapes == [(64, 256)]  # full batches of 64 windows; the tail is padded to them
    prime_shapes(fn, shapes, dev)
    with torch._dynamo.config.patch(error_on_recompile=True):
        r = evaluate_flat(fn, val, lut, seq_len=256, batch_tokens=16_384, device=dev)
    assert r.tokens == 70_000 - 70_000 % 256


@needs_cuda
def test_training_micro_batch_builds_cu_seqlens_without_a_device_sync(byte_dataset, tmp_path):
    # the loop used to find BOS tokens on the GPU (a nonzero: one host sync per micro-batch, 8 per #1855 step)
    from pgolf.data.dataset import Dataset
    from pgolf.data.loaders_common import build_loader
    from pgolf.model.attn_backends import padded_cu_seqlens
    from pgolf.train.step import next_micro_batch

    cfg = tiny_run_config(byte_dataset, tmp_path / "runs", device="cuda", loader="docpack")
    mcfg = dataclasses.replace(cfg.model, attn_backend="varlen", doc_isolated=True)
    model = GPT(mcfg)
    model.pad_segments((cfg.train.micro_batch_tokens // cfg.train.seq_len, cfg.train.seq_len), 64)
    loader = build_loader(cfg.train, Dataset.open(cfg.data, mcfg.vocab_size))
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        x, y, extra = next_micro_batch(loader, model, cfg.train, torch.device("cuda"))
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert x.is_cuda and y.is_cuda and extra["cu_seqlens"].is_cuda
    torch.testing.assert_close(extra["cu_seqlens"], padded_cu_seqlens(x, mcfg.bos_id, True, size=64))


@needs_cuda
def test_a_training_step_never_waits_for_the_gpu(byte_dataset, tmp_path):
    """The loop's step (train/step.py: micro-batches, clip, Muon, Adam, EMA) queues work without a host sync, so the
    host runs ahead of the GPU; a sync per step leaves the GPU idle while the host launches the next one."""
    from pgolf.data.dataset import Dataset
    from pgolf.data.loaders_common import build_loader
    from pgolf.optim.builder import build_optimizers
    from pgolf.train.ema import WeightAverager
    from pgolf.train.runtime import Runtime
    from pgolf.train.step import TrainStep

    cfg = cuda_step_config(byte_dataset, tmp_path / "runs")
    dev = torch.device("cuda")
    model = cast_for_training(GPT(cfg.model), dev)
    model.pad_segments((cfg.train.micro_batch_tokens // cfg.train.seq_len, cfg.train.seq_len), 64)
    rt = Runtime(rank=0, local_rank=0, world_size=1, device=dev, distributed=False)
    step = TrainStep(model, model, build_optimizers(model, cfg.optim), build_loader(cfg.train, Dataset.open(
        cfg.data, cfg.model.vocab_size)), cfg, cfg.train, rt, averager=WeightAverager.from_config(model, cfg.train))
    assert step.accum == 2 and step.averager is not None
    step(0, 0.0)  # the optimizers' state is created on the first step
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        loss = step(1, 0.1)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert torch.isfinite(loss)


@needs_cuda
def test_cuda_graph_mode_trains_as_the_default_mode(byte_dataset, tmp_path):
    """train.compile_mode=reduce-overhead replays the training graph as CUDA graphs. With 2 micro-batches a step the
    gradients accumulate across replays (the first backward's output buffers would be overwritten by the next
    replay: TrainStep copies them, step.own_gradients), and the warm-up's restore, clip and EMA run around the graphs.
    The losses equal the default mode's, and inductor skipped no graph (a skip would silently run without them)."""
    from torch._dynamo.utils import counters

    curves = {}
    for mode in ("default", "reduce-overhead"):
        cfg = cuda_step_config(byte_dataset, tmp_path / "runs", compile=True, compile_mode=mode, warmup_steps=2)
        assert cfg.train.grad_accum(1) == 2
        torch._dynamo.reset()
        counters.clear()
        res = train_cpu(cfg, tmp_path / mode, device="cuda")
        curves[mode] = [p["train_loss"] for p in res.curve if "train_loss" in p]
        skips = dict(counters["inductor"])
        assert skips.get("cudagraph_skips", 0) == 0, skips
        # the graphs' pool is reserved before the clock starts and replays allocate nothing: only the reserved
        # peak covers the step's activations, so it is what the run must report next to the allocated one
        assert res.peak_reserved_bytes >= res.peak_mem_bytes > 0
    assert len(curves["default"]) == 6
    assert curves["reduce-overhead"] == pytest.approx(curves["default"], abs=2e-3)
