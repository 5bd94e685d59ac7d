"""TrainStep (train/step.py): the loop's step, its profile annotations, and its CUDA-graph mode's gradients."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from conftest import tiny_run_config

from pgolf.data.dataset import Dataset
from pgolf.data.loaders_common import build_loader
from pgolf.model.gpt import GPT
from pgolf.optim.builder import build_optimizers
from pgolf.train import step as step_mod
from pgolf.train.ema import WeightAverager
from pgolf.train.runtime import Runtime
from pgolf.train.step import TrainStep, own_gradients


def make_step(byte_dataset, tmp_path, **train_kw) -> TrainStep:
    """A CPU TrainStep of the tiny config (2 micro-batches a step), clip 0.3, eager even when train.compile is on."""
    torch.manual_seed(0)
    cfg = tiny_run_config(byte_dataset, tmp_path / "runs", **train_kw)
    cfg = dataclasses.replace(cfg, optim=dataclasses.replace(cfg.optim, grad_clip_norm=0.3))
    model = GPT(cfg.model)
    return TrainStep(model, model, build_optimizers(model, cfg.optim),
                     build_loader(cfg.train, Dataset.open(cfg.data, cfg.model.vocab_size)), cfg, cfg.train,
                     Runtime(rank=0, local_rank=0, world_size=1, device=torch.device("cpu"), distributed=False),
                     averager=WeightAverager.from_config(model, cfg.train))


def test_train_step_annotates_its_phases_for_range_spans(byte_dataset, tmp_path):
    """Each micro-batch's forward, the clip and the EMA are marked (the optimizers mark their own steps), so a GPU
    profile's `ranges` (profile.range_spans) splits the step's work by phase."""
    step = make_step(byte_dataset, tmp_path, ema_decay=0.99)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        step(0, 0.0)
    names = [ev.name for ev in prof.events()]
    assert names.count("pgolf.forward") == step.accum == 2
    assert names.count("pgolf.clip") == names.count("pgolf.ema") == 1
    assert any(n.startswith("Optimizer.step#Muon") for n in names)


def test_own_gradients_copies_every_gradient_and_leaves_missing_ones_missing():
    a, b, c = (torch.nn.Parameter(torch.randn(3, 2)) for _ in range(3))
    model = torch.nn.ParameterList([a, b, c])
    a.grad, b.grad = torch.randn(3, 2), torch.randn(3, 2)
    before = [a.grad, b.grad]
    own_gradients(model)
    for p, old in zip((a, b), before):
        assert p.grad.data_ptr() != old.data_ptr()
        torch.testing.assert_close(p.grad, old, rtol=0, atol=0)
    assert c.grad is None


def test_cuda_graph_mode_copies_the_first_backwards_gradients_and_trains_the_same(byte_dataset, tmp_path,
                                                                                   monkeypatch):
    """train.compile_mode=reduce-overhead: after the first micro-batch's backward, once per step, the gradients are
    copied out of what would be CUDA-graph output buffers; the step's result is the default mode's."""
    calls = []
    real = step_mod.own_gradients
    monkeypatch.setattr(step_mod, "own_gradients", lambda m: calls.append(1) or real(m))
    losses, params = {}, {}
    for mode in ("default", "reduce-overhead"):
        step = make_step(byte_dataset, tmp_path, compile=True, compile_mode=mode, ema_decay=0.99)
        assert step.replays_graphs == (mode == "reduce-overhead") and step.accum == 2
        losses[mode] = [step(i, 0.0).item() for i in range(3)]
        params[mode] = {k: v.clone() for k, v in step.model.state_dict().items()}
    assert len(calls) == 3  # the graph mode's three steps only
    assert losses["reduce-overhead"] == losses["default"]
    for k, v in params["default"].items():
        torch.testing.assert_close(params["reduce-overhead"][k], v, rtol=0, atol=0)


def test_graph_mode_needs_the_compiler(byte_dataset, tmp_path):
    assert not make_step(byte_dataset, tmp_path, compile=False, compile_mode="reduce-overhead").replays_graphs
    assert make_step(byte_dataset, tmp_path, compile=True, compile_mode="max-autotune").replays_graphs
    assert not make_step(byte_dataset, tmp_path, compile=True, compile_mode="max-autotune-no-cudagraphs").replays_graphs
    with pytest.raises(ValueError, match="train.compile_mode='reduce_overhead'"):
        from pgolf.train.schedule import check_train_techniques
        check_train_techniques(tiny_run_config(byte_dataset, tmp_path, compile_mode="reduce_overhead").train)


def test_process_group_waits_longer_than_nccls_ten_minutes(monkeypatch):
    """Rank 0 exports alone while the other ranks wait at a barrier: the group's timeout outlasts a long export."""
    import datetime

    from pgolf.train import runtime

    seen = {}
    monkeypatch.setattr(runtime.dist, "is_initialized", lambda: False)
    monkeypatch.setattr(runtime.dist, "init_process_group", lambda **kw: seen.update(kw))
    for k, v in {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1"}.items():
        monkeypatch.setenv(k, v)
    rt = runtime.init_runtime("cpu")
    assert rt.distributed and rt.rank == 1 and seen["backend"] == "gloo"
    assert seen["timeout"] == runtime.PROCESS_GROUP_TIMEOUT >= datetime.timedelta(minutes=30)


def test_graph_modes_are_the_modes_inductor_runs_as_cuda_graphs():
    import torch._inductor as inductor

    from pgolf.train.schedule import COMPILE_MODES, GRAPH_MODES

    for mode in COMPILE_MODES:
        assert (mode in GRAPH_MODES) == bool(inductor.list_mode_options(mode).get("triton.cudagraphs")), mode
