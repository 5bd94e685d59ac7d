"""Shared fixtures: a tiny byte-level dataset in the official shard format and a tiny run config."""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pgolf.config import DataConfig, EvalConfig, ModelConfig, OptimConfig, QuantConfig, RunConfig, TrainConfig
from pgolf.data.shards import ShardWriter, shard_path, write_shard
from pgolf.data.tokenizer import Byte260Tokenizer

# The suite is many tiny tensor ops on a 2-core machine: one intra-op thread avoids pool contention.
torch.set_num_threads(1)

WORDS = ("the of and to in a is that for it as with was on be by this are from at or an have not which "
         "government people nation congress year states united war peace law").split()


def make_byte_dataset(path, n_train=120, n_val=30, seed=0, shard_tokens=6000):
    rng = random.Random(seed)
    tok = Byte260Tokenizer()
    for split, n in (("train", n_train), ("val", n_val)):
        with ShardWriter(path, split, shard_tokens=shard_tokens) as w:
            for _ in range(n):
                text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 40))).capitalize() + "."
                w.add_doc(tok.encode(text))
    return path


@pytest.fixture(scope="session")
def byte_dataset(tmp_path_factory):
    return make_byte_dataset(tmp_path_factory.mktemp("byte_ds"))


def tiny_run_config(data_dir, runs_dir, **train_kw) -> RunConfig:
    train = dict(wallclock_s=0.0, iterations=6, batch_tokens=256, micro_batch_tokens=128, seq_len=32,
                 warmup_steps=0, warmdown_iters=3, log_every=1, compile=False, device="cpu", seed=1)
    train.update(train_kw)
    return RunConfig(
        name="test",
        data=DataConfig(corpus="demo", tokenizer="byte260", path=str(data_dir)),
        model=ModelConfig(vocab_size=260, num_layers=2, model_dim=32, num_heads=2, num_kv_heads=1),
        optim=OptimConfig(muon_momentum_warmup_steps=3),
        train=TrainConfig(**train),
        quant=QuantConfig(),
        eval=EvalConfig(batch_tokens=512),
        runs_dir=str(runs_dir),
    )


def cuda_step_config(data_dir, runs_dir, **train_kw) -> RunConfig:
    """`tiny_run_config` on CUDA with what a record's step exercises: document-isolated varlen attention, the
    docpack loader, EMA 0.99 and a 0.3 gradient clip (GPU tests of one step, CUDA graphs, NCCL ranks)."""
    cfg = tiny_run_config(data_dir, runs_dir, device="cuda", loader="docpack", ema_decay=0.99, **train_kw)
    return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, attn_backend="varlen", doc_isolated=True),
                               optim=dataclasses.replace(cfg.optim, grad_clip_norm=0.3))


def with_train(cfg: RunConfig, **kw) -> RunConfig:
    return dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, **kw))


def train_cpu(cfg: RunConfig, run_dir, resume: bool = False, device: str = "cpu"):
    """Run the training loop in this process (on CPU unless `device` says otherwise) and return its TrainResult."""
    from pgolf.data.dataset import Dataset
    from pgolf.report.runlog import RunLog
    from pgolf.train import loop
    from pgolf.train.runtime import init_runtime, shutdown

    rt = init_runtime(device)
    try:
        data = Dataset.open(cfg.data, cfg.model.vocab_size)
        Path(run_dir).mkdir(parents=True, exist_ok=True)
        return loop.train_model(cfg, rt, data, Path(run_dir), RunLog(None, enabled=False), resume=resume)
    finally:
        shutdown(rt)


def spawn_ranks(worker, world: int, *args) -> None:
    """Run ``worker(rank, world, port, *args)`` in `world` spawned processes the way torchrun does: this process
    hosts the rendezvous store (the agent's part; port 0, so the kernel picks a free port and it stays bound until
    the ranks are done) and every rank joins it as a client (TORCHELASTIC_USE_AGENT_STORE, set by `_as_rank`).
    No rank hosts a store daemon of its own, so none tears one down at its exit while its peer still talks to it."""
    import torch.distributed as dist
    import torch.multiprocessing as mp

    store = dist.TCPStore("127.0.0.1", 0, world_size=None, is_master=True, wait_for_workers=False)
    mp.spawn(worker, args=(world, store.port, *args), nprocs=world, join=True)


def _as_rank(rank: int, world: int, port: int) -> None:
    """The environment torchrun gives one rank (read by `pgolf.train.runtime.init_runtime`): its store is the
    agent's, at `port` (`spawn_ranks`)."""
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port), TORCHELASTIC_USE_AGENT_STORE="True")
    torch.set_num_threads(1)


def ddp_train_worker(rank: int, world: int, port: int, out_dir: str, cfg_dict: dict, device: str = "cpu") -> None:
    """torch.multiprocessing.spawn target: one rank of the training loop (gloo on CPU, NCCL on ``device="cuda"``,
    GPU = rank). Each rank saves the final params, the logged curve and the EMA shadow (if any):
    ``<out_dir>/ddp.pt`` from rank 0, ``ddp_rank<r>.pt`` from the others."""
    _as_rank(rank, world, port)
    from pgolf.config import from_dict

    res = train_cpu(from_dict(cfg_dict), out_dir, device=device)
    torch.save({"params": {k: v.detach().cpu().clone() for k, v in res.model.state_dict().items()},
                "curve": res.curve, "ema": res.averager.ema.state() if res.averager and res.averager.ema else None},
               Path(out_dir) / ("ddp.pt" if rank == 0 else f"ddp_rank{rank}.pt"))


def ddp_pipeline_worker(rank: int, world: int, port: int, cfg_dict: dict, run_id: str) -> None:
    """torch.multiprocessing.spawn target: one rank of the whole ``pgolf train`` pipeline, as under
    ``torchrun --nproc_per_node=<world> -m pgolf train`` (the device is the config's train.device)."""
    _as_rank(rank, world, port)
    from pgolf.config import from_dict
    from pgolf.pipeline import run

    run(from_dict(cfg_dict), run_id=run_id)


def small_trained_like_gpt(vocab_size: int = 96, seed: int = 0):
    """A 2-layer d=32 GPT whose matrices are N(0, 0.05) instead of the zero/identity init, so every tensor
    carries signal for quantization tests."""
    from pgolf.model.gpt import GPT

    torch.manual_seed(seed)
    m = GPT(ModelConfig(vocab_size=vocab_size, num_layers=2, model_dim=32, num_heads=2, num_kv_heads=1))
    with torch.no_grad():
        for name, p in m.named_parameters():
            if p.ndim == 2 and "resid_mix" not in name:
                p.normal_(0, 0.05)
    return m


def perturbed_gpt(seed: int = 0, **model_kw):
    """A 2-layer d=32 GPT (vocab 64; `model_kw` may override any of these) nudged off its zero-init projections, so
    every parameter gets a gradient: for tests that compare a switch's loss and gradients with the plain model's."""
    from pgolf.model.gpt import GPT

    torch.manual_seed(seed)
    m = GPT(ModelConfig(**{"vocab_size": 64, "num_layers": 2, "model_dim": 32, "num_heads": 4, "num_kv_heads": 2,
                           **model_kw}))
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.02 * torch.randn_like(p))
    return m


def mlp_operands(m=40, d=64, h=256, seed=0, device="cpu", dtype=torch.float32):
    """[x (2, m/2, d), W_fc (h, d), W_proj (d, h)], each requiring grad: the fused-MLP tests' operands."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, m // 2, d, generator=g)
    w_fc, w_proj = torch.randn(h, d, generator=g) / d ** 0.5, torch.randn(d, h, generator=g) / h ** 0.5
    return [t.to(device=device, dtype=dtype).requires_grad_() for t in (x, w_fc, w_proj)]


def out_and_grads(fn, args, g_out):
    """(fn(*args) detached, [grad of each arg]) after backward(g_out), earlier grads cleared."""
    for a in args:
        a.grad = None
    out = fn(*args)
    out.backward(g_out)
    return out.detach(), [a.grad.clone() for a in args]


def loss_and_grads(m, x, y):
    """(loss, {name: grad}) of one forward and backward."""
    m.zero_grad()
    loss = m(x, y)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None}


def compiled_bf16_loss_and_grads(m, x, y):
    """`loss_and_grads` through torch.compile(fullgraph=True) under bf16 autocast on CUDA (GPU tests of switches
    that must agree with the plain model after inductor)."""
    fwd = torch.compile(m.forward, fullgraph=True)
    m.zero_grad()
    with torch.autocast("cuda", torch.bfloat16):
        loss = fwd(x, y)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None}


def assert_grads_aligned(got: dict, want: dict, min_cos: float = 0.99) -> None:
    """Same gradient names, each pair's cosine similarity above `min_cos` (bf16 runs: rounding differs)."""
    assert got.keys() == want.keys()
    for name, g in want.items():
        cos = torch.nn.functional.cosine_similarity(got[name].flatten().float(), g.flatten().float(), dim=0)
        assert cos > min_cos, (name, float(cos))


def switch_pair(switch: dict, seed: int = 0, **model_kw):
    """(plain, switched): two `perturbed_gpt` models with the same weights, the second with `switch` set."""
    base, other = perturbed_gpt(seed, **model_kw), perturbed_gpt(seed, **model_kw, **switch)
    other.load_state_dict(base.state_dict())
    return base, other


def token_batch(seed: int = 0, shape=(2, 16)):
    """(x, y): random ids of the 64-token test vocabulary and x shifted by one."""
    x = torch.randint(2, 64, shape, generator=torch.Generator().manual_seed(seed))
    return x, torch.roll(x, -1, 1)


def assert_same_loss_and_grads(base, other, x, y) -> dict:
    """One forward and backward of each: equal losses and gradients (fp32, same math); returns base's grads."""
    lb, gb = loss_and_grads(base, x, y)
    lo, go = loss_and_grads(other, x, y)
    torch.testing.assert_close(lo, lb, atol=1e-6, rtol=1e-6)
    assert go.keys() == gb.keys()
    for name in gb:
        torch.testing.assert_close(go[name], gb[name], atol=1e-6, rtol=1e-4, msg=name)
    return gb


def assert_compiled_bf16_agree(base, other, x, y) -> None:
    """`compiled_bf16_loss_and_grads` of each (CUDA): losses within bf16 rounding, gradients aligned."""
    (lb, gb), (lo, go) = (compiled_bf16_loss_and_grads(m, x, y) for m in (base, other))
    torch.testing.assert_close(lo, lb, atol=2e-2, rtol=1e-2)
    assert_grads_aligned(go, gb)


def assert_triton_matches_torch_body(run, names: tuple[str, ...], dtype: torch.dtype) -> None:
    """`run()`, a tuple of tensors from the row ops (xsa_gate, norm_rope), once with their torch bodies
    (``layers.HAS_TRITON`` off) and once with the Triton kernels: same shapes and dtypes, values within fp32's
    or bf16's tolerance."""
    from pgolf.model import layers

    layers.HAS_TRITON = False
    try:
        ref = run()
    finally:
        layers.HAS_TRITON = True
    got = run()
    tol = {"atol": 1e-5, "rtol": 1e-5} if dtype == torch.float32 else {"atol": 3e-2, "rtol": 2e-2}
    for name, a, b in zip(names, got, ref, strict=True):
        assert a.shape == b.shape and a.dtype == b.dtype, name
        torch.testing.assert_close(a.float(), b.float(), msg=name, **tol)


def position_shards(directory, sizes) -> list:
    """Train shards whose tokens are their global stream positions (all distinct; keep the total < 65536)."""
    import numpy as np

    files, start = [], 0
    for i, n in enumerate(sizes):
        files.append(write_shard(shard_path(directory, "train", i), np.arange(start, start + n)))
        start += n
    return files


needs_triton_interpreter = pytest.mark.skipif(importlib.util.find_spec("triton") is None,
                                              reason="needs triton (TRITON_INTERPRET=1 runs on CPU)")


def run_in_triton_interpreter(code: str) -> None:
    """Run `code` in a fresh Python with TRITON_INTERPRET=1 (Triton kernels on the CPU); it must print "ok"."""
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600,
                       check=False)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-2000:]
