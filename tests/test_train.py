"""Training loop: end-to-end run, DDP equivalence, bit-exact resume, divergence handling."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from conftest import (
    ddp_pipeline_worker,
    ddp_train_worker,
    make_byte_dataset,
    spawn_ranks,
    tiny_run_config,
    train_cpu,
    with_train,
)

from pgolf.pipeline import run, score_artifact
from pgolf.train import checkpoint, loop


def _params(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_end_to_end_run_writes_everything(byte_dataset, tmp_path):
    cfg = tiny_run_config(byte_dataset, tmp_path / "runs", iterations=8, val_every=4)
    cfg = dataclasses.replace(cfg, quant=dataclasses.replace(cfg.quant, keep_float_max_numel=256))
    summary = run(cfg, run_id="e2e")
    run_dir = tmp_path / "runs" / "e2e"
    for name in ("config.json", "train.log", "summary.json", "artifact.pgz"):
        assert (run_dir / name).is_file(), name
    on_disk = json.loads((run_dir / "summary.json").read_text())
    assert on_disk["steps"] == 8 and on_disk["valid"] is True
    assert on_disk["compiles_in_clock"] == 0 and isinstance(on_disk["slow_steps"], list)  # train/watch.py
    assert on_disk["bytes"]["model"] == (run_dir / "artifact.pgz").stat().st_size
    assert on_disk["bytes"]["total"] == on_disk["bytes"]["code"] + on_disk["bytes"]["model"]
    assert 0 < summary["val_bpb"]["roundtrip"] < 8.5
    assert [p["step"] for p in summary["curve"] if "val_bpb" in p] == [4, 8]
    log = (run_dir / "train.log").read_text()
    assert log.startswith("# pgolf run log") and '"num_layers": 2' in log and "torch=" in log
    # re-scoring the artifact from disk gives the same number as the run
    again = score_artifact(run_dir / "artifact.pgz", device="cpu", batch_tokens=512)
    assert again["val_bpb"] == pytest.approx(summary["val_bpb"]["roundtrip"], rel=1e-9)
    with pytest.raises(FileExistsError):
        run(cfg, run_id="e2e")


def test_training_lowers_the_loss(byte_dataset, tmp_path):
    res = train_cpu(tiny_run_config(byte_dataset, tmp_path, iterations=30, warmdown_iters=0), tmp_path / "r")
    losses = [p["train_loss"] for p in res.curve if "train_loss" in p]
    assert losses[-1] < losses[0] - 1.0


def test_resume_is_bit_exact(byte_dataset, tmp_path, monkeypatch):
    cfg = tiny_run_config(byte_dataset, tmp_path, iterations=6, checkpoint_every=3)
    straight = _params(train_cpu(cfg, tmp_path / "straight").model)

    real_save = checkpoint.save
    snap = tmp_path / "at3"

    def save_and_snapshot(run_dir, rt, model, opt, loader, *, step, elapsed_s, curve):
        real_save(run_dir, rt, model, opt, loader, step=step, elapsed_s=elapsed_s, curve=curve)
        if step == 3:
            shutil.copytree(run_dir, snap)

    monkeypatch.setattr(checkpoint, "save", save_and_snapshot)
    train_cpu(cfg, tmp_path / "interrupted")
    monkeypatch.setattr(checkpoint, "save", real_save)
    resumed = train_cpu(cfg, snap, resume=True)
    assert resumed.steps == 6
    for k, v in straight.items():
        assert torch.equal(v, resumed.model.state_dict()[k]), k


def test_nan_loss_stops_and_keeps_last_good_checkpoint(byte_dataset, tmp_path, monkeypatch):
    cfg = tiny_run_config(byte_dataset, tmp_path, iterations=20, checkpoint_every=2, log_every=100)
    from pgolf.model.gpt import GPT

    real_forward, calls = GPT.forward, {"n": 0}

    def poisoned(self, x, y):
        calls["n"] += 1
        loss = real_forward(self, x, y)
        return loss * float("nan") if calls["n"] > 2 * 5 else loss  # 2 micro-steps per step: NaN from step 6

    monkeypatch.setattr(GPT, "forward", poisoned)
    with pytest.raises(loop.TrainingDiverged, match="non-finite"):
        train_cpu(cfg, tmp_path / "nan")
    state = torch.load(tmp_path / "nan" / checkpoint.MODEL_FILE, weights_only=False)
    assert state["step"] == 4
    assert all(torch.isfinite(v).all() for v in state["model"].values())


def test_spawned_ranks_join_this_process_store_as_torchrun_agents_do(tmp_path):
    """`spawn_ranks`: the ranks rendezvous through a store this process hosts (no rank hosts one), with the
    environment torchrun gives them; a rank that fails fails the call."""
    spawn_ranks(_store_probe_worker, 2, str(tmp_path))
    seen = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert [s["rank"] for s in seen] == [0, 1] and all(s["world"] == 2 and s["agent_store"] == "True" for s in seen)
    assert [s["peer_sum"] for s in seen] == [1, 1]  # an all-reduce of the ranks over the group
    with pytest.raises(Exception, match="(?i)process 1 terminated"):
        spawn_ranks(_store_probe_worker, 2, str(tmp_path), 1)


def _store_probe_worker(rank: int, world: int, port: int, out_dir: str, fail_rank: int = -1) -> None:
    from conftest import _as_rank

    from pgolf.train.runtime import init_runtime, shutdown

    _as_rank(rank, world, port)
    if rank == fail_rank:
        raise RuntimeError(f"rank {rank} fails on purpose")
    rt = init_runtime("cpu")
    try:
        t = torch.tensor(rank)
        torch.distributed.all_reduce(t)
        record = {"rank": rt.rank, "world": rt.world_size, "agent_store": os.environ["TORCHELASTIC_USE_AGENT_STORE"],
                  "peer_sum": int(t)}
        (Path(out_dir) / f"rank{rank}.json").write_text(json.dumps(record))
    finally:
        shutdown(rt)


@pytest.mark.parametrize("clip", [0.0, 0.05])
def test_two_process_gloo_equals_one_process_with_accumulation(tmp_path, clip):
    data = make_byte_dataset(tmp_path / "ds")
    cfg = tiny_run_config(data, tmp_path, iterations=4)  # batch 256 = 2 micro-batches of 128
    cfg = dataclasses.replace(cfg, optim=dataclasses.replace(cfg.optim, grad_clip_norm=clip))
    single = train_cpu(cfg, tmp_path / "one")
    assert cfg.train.grad_accum(1) == 2 and cfg.train.grad_accum(2) == 1
    spawn_ranks(ddp_train_worker, 2, str(tmp_path), cfg.to_dict())
    ddp = torch.load(tmp_path / "ddp.pt", weights_only=False)
    one = [p["train_loss"] for p in single.curve if "train_loss" in p]
    two = [p["train_loss"] for p in ddp["curve"] if "train_loss" in p]
    assert len(one) == len(two) == 4
    for a, b in zip(one, two):
        assert abs(a - b) < 1e-5
    for k, v in single.model.state_dict().items():
        torch.testing.assert_close(ddp["params"][k], v, atol=1e-5, rtol=1e-4)


def test_pgolf_train_under_two_gloo_ranks_equals_one_process(tmp_path):
    """The whole pipeline as ``torchrun --nproc_per_node=2 -m pgolf train`` runs it: rank 0's run id, training under
    DDP, the export on rank 0 alone, the evaluation split over the ranks and summed. One run folder with the same
    files as a one-process run with the same global batch, and the same numbers."""
    data = make_byte_dataset(tmp_path / "ds")
    cfg = tiny_run_config(data, tmp_path / "runs", iterations=4)  # 2 micro-batches: 1 per rank at world 2
    cfg = dataclasses.replace(cfg, quant=dataclasses.replace(cfg.quant, keep_float_max_numel=256))
    one = run(cfg, run_id="one")
    spawn_ranks(ddp_pipeline_worker, 2, cfg.to_dict(), "two")
    two = json.loads((tmp_path / "runs" / "two" / "summary.json").read_text())
    assert (one["world_size"], two["world_size"]) == (1, 2)
    assert sorted(p.name for p in (tmp_path / "runs" / "two").iterdir()) == sorted(
        p.name for p in (tmp_path / "runs" / "one").iterdir())
    for key in ("steps", "tokens_seen", "val_tokens_scored", "val_bytes_scored", "valid"):
        assert two[key] == one[key], key
    for key in ("prequant", "roundtrip"):
        assert two["val_bpb"][key] == pytest.approx(one["val_bpb"][key], abs=1e-4), key
    assert two["bytes"]["model"] == pytest.approx(one["bytes"]["model"], rel=0.01)


def test_ddp_wrapper_skips_the_buffer_sync_without_a_deprecation_warning():
    """The rotary tables are equal on every rank, so DDP does not broadcast buffers before each forward; torch 2.13
    deprecates ``broadcast_buffers`` (a FutureWarning on every rank's log) for ``forward_sync_buffers``."""
    import warnings

    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    mod = torch.nn.Linear(2, 2)
    mod.register_buffer("table", torch.ones(3))
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            net = DDP(mod, **loop.no_buffer_sync())
        assert net.broadcast_buffers is False
    finally:
        dist.destroy_process_group()


def test_compile_mode_reaches_the_training_graph_and_is_validated(byte_dataset, tmp_path, monkeypatch):
    seen = []

    def fake_compile(fn, **kw):  # record the call, run eagerly (CPU inductor would take minutes here)
        seen.append(kw)
        return fn

    monkeypatch.setattr(torch, "compile", fake_compile)
    cfg = tiny_run_config(byte_dataset, tmp_path / "runs", iterations=2, compile=True,
                          compile_mode="max-autotune-no-cudagraphs")
    train_cpu(cfg, tmp_path / "run")
    assert {"dynamic": False, "fullgraph": True,  # the mode, as its inductor options
            "options": {"max_autotune": True, "coordinate_descent_tuning": True}} in seen
    train_cpu(with_train(cfg, compile_mode="reduce-overhead"), tmp_path / "run_graphs")
    assert {"dynamic": False, "fullgraph": True, "options": {"triton.cudagraphs": True}} in seen
    seen.clear()
    train_cpu(with_train(cfg, compile_mode="default"), tmp_path / "run_default")
    train_cpu(with_train(cfg, compile_mode="default", coordinate_descent_tuning=True), tmp_path / "run_tuned")
    assert [kw["options"] for kw in seen if "options" in kw] == [{}, {"coordinate_descent_tuning": True}]  # training's
    with pytest.raises(ValueError, match="train.compile_mode='fast'"):
        train_cpu(tiny_run_config(byte_dataset, tmp_path / "runs", compile_mode="fast"), tmp_path / "run2")


def test_mix_order_reduction_reaches_the_training_graph_only(byte_dataset, tmp_path, monkeypatch):
    import torch._inductor.config as inductor_config

    if not hasattr(inductor_config.triton, "mix_order_reduction"):
        pytest.skip("this torch's inductor has no mix-order reduction")
    monkeypatch.setattr(inductor_config.triton, "mix_order_reduction", True)  # restored after the test
    seen = []
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: seen.append(kw) or fn)
    for on in (False, True):
        seen.clear()
        train_cpu(tiny_run_config(byte_dataset, tmp_path / "runs", iterations=1, compile=True, mix_order_reduction=on),
                  tmp_path / f"run{on}")
        train_graph, eval_graph = seen[0], seen[1]  # the model, then its token_losses
        assert train_graph["options"].get("triton.mix_order_reduction", False) is on
        assert "options" not in eval_graph and inductor_config.triton.mix_order_reduction is False  # process-wide


def test_varlen_run_matches_sdpa_doc_isolated_and_every_batch_uses_its_primed_graph(byte_dataset, tmp_path,
                                                                                      monkeypatch):
    import pgolf.model.attn_backends as ab
    from pgolf.model.gpt import GPT

    monkeypatch.setattr(torch, "compile", lambda fn, **kw: fn)  # the priming path runs; graphs stay eager on CPU
    # a bucket of 3: the bound is a multiple of 3, rarely 3 * 2^k, and batches under it have many lengths (rounding
    # those to 3 * 2^k instead of to the primed bound was the second graph of the 2-H200 stall)
    monkeypatch.setattr(ab, "CU_BUCKET", 3)
    calls = []  # (phase, x shape, cu_seqlens length) of every forward: a new length is a new compiled graph
    phase = ["prime"]
    forward, token_losses, start = GPT.forward, GPT.token_losses, loop.Clock.start

    def forward_spy(self, x, y, **kw):
        calls.append((phase[0], "train", tuple(x.shape), (x is y, x.storage_offset(), y.storage_offset()),
                      kw["cu_seqlens"].numel() if "cu_seqlens" in kw else None, id(self)))
        return forward(self, x, y, **kw)

    def losses_spy(self, x, y, **kw):
        calls.append((phase[0], "eval", tuple(x.shape), None, kw["cu_seqlens"].numel() if "cu_seqlens" in kw else None,
                      id(self)))
        return token_losses(self, x, y, **kw)

    def start_spy(self):
        phase[0] = "clock"
        return start(self)

    monkeypatch.setattr(GPT, "forward", forward_spy)
    monkeypatch.setattr(GPT, "token_losses", losses_spy)
    monkeypatch.setattr(loop.Clock, "start", start_spy)
    base = tiny_run_config(byte_dataset, tmp_path / "runs", iterations=4, compile=True, warmup_steps=1, val_every=2)
    runs = {}
    for backend in ("sdpa", "varlen"):
        cfg = dataclasses.replace(base, model=dataclasses.replace(base.model, doc_isolated=True, attn_backend=backend))
        phase[0] = "prime"
        calls.clear()
        runs[backend] = train_cpu(cfg, tmp_path / backend)
    curve = {k: [p.get("train_loss", p.get("val_bpb")) for p in r.curve] for k, r in runs.items()}
    assert len(curve["varlen"]) == len(curve["sdpa"]) > 4
    assert curve["varlen"] == pytest.approx(curve["sdpa"], abs=1e-4)
    trained = calls[0][-1]  # the training model; the round trip scores a model rebuilt from the artifact, eagerly
    primed = {(kind, shape, cu) for ph, kind, shape, _, cu, m in calls if ph == "prime"}
    on_clock = {(kind, shape, cu) for ph, kind, shape, _, cu, m in calls if ph == "clock" and m == trained}
    assert {k for k, _, _ in on_clock} == {"train", "eval"}  # val_every=2: both graphs run on the clock
    assert on_clock <= primed  # and no cu_seqlens length (no compiled graph) is first met there
    assert len({(kind, shape) for kind, shape, _ in primed}) == len(primed)  # one padded length per shape
    rows = base.train.micro_batch_tokens // base.train.seq_len
    stream = loop.read_shard(sorted(byte_dataset.glob("*train*.bin"))[0])
    bound = ab.segment_bound(stream, rows=rows, seq_len=base.train.seq_len, bos_id=base.model.bos_id,
                             doc_isolated=True)
    assert ("train", (rows, base.train.seq_len), bound) in primed
    assert {layout for ph, kind, _, layout, _, m in calls if kind == "train"} == {(False, 0, 0)}  # as the loaders


def test_training_micro_batches_carry_cu_seqlens_built_on_the_host(byte_dataset, tmp_path, monkeypatch):
    from pgolf.data.dataset import Dataset
    from pgolf.data.loaders_common import build_loader
    from pgolf.model.gpt import GPT
    from pgolf.train import step as train_step

    cfg = tiny_run_config(byte_dataset, tmp_path / "runs", loader="docpack")
    model = GPT(dataclasses.replace(cfg.model, attn_backend="varlen", doc_isolated=True))
    moved = []
    monkeypatch.setattr(train_step, "host_to_device", lambda *t, device: moved.append(t) or t)
    data = Dataset.open(cfg.data, cfg.model.vocab_size)
    x, y, extra = train_step.next_micro_batch(build_loader(cfg.train, data), model, cfg.train, torch.device("cpu"))
    x0, y0 = build_loader(cfg.train, data).next_batch(cfg.train.micro_batch_tokens, cfg.train.seq_len)
    assert torch.equal(x, x0) and torch.equal(y, y0)
    assert torch.equal(extra["cu_seqlens"], model.attn_inputs(x0)["cu_seqlens"])
    assert len(moved) == 1 and moved[0][2] is extra["cu_seqlens"]  # copied with the batch, in one call
    sdpa = GPT(cfg.model)
    assert train_step.next_micro_batch(build_loader(cfg.train, data), sdpa, cfg.train, torch.device("cpu"))[2] == {}


def test_compile_on_cpu_without_a_cxx_compiler_names_the_field(monkeypatch):
    """The tiny preset compiles on CPU (inductor builds C++): without a compiler the run stops at start with a
    message that names train.compile, not inside its first compiled step."""
    from torch._inductor import cpp_builder

    def no_compiler():
        raise RuntimeError("No working C++ compiler found")

    monkeypatch.setattr(cpp_builder, "get_cpp_compiler", no_compiler)
    with pytest.raises(RuntimeError, match=r"train.compile=true on CPU needs a C\+\+ compiler .*No working C\+\+ "
                                           r"compiler found.*--set train.compile=false"):
        loop.require_cpu_compiler(torch.device("cpu"))
    loop.require_cpu_compiler(torch.device("cuda"))  # GPU runs build with Triton, not a C++ compiler
    monkeypatch.undo()
    loop.require_cpu_compiler(torch.device("cpu"))  # this machine has one


def test_tiny_preset_compiles_with_its_warm_up_outside_the_clock():
    from pgolf.presets import get_preset

    tc = get_preset("tiny").train
    assert tc.compile and tc.warmup_steps > 0 and tc.prime_eval
