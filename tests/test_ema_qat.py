"""EMA / SWA weight averaging and late STE QAT under torch.compile (issue 5).

    .venv/bin/python -m pytest tests/test_ema_qat.py -q
"""

from __future__ import annotations

import dataclasses
import json
import shutil

import pytest
import torch
from torch import nn

from conftest import tiny_run_config, train_cpu, with_train
from pgolf.config import ModelConfig
from pgolf.model.gpt import GPT
from pgolf.model.layers import CastedLinear
from pgolf.pipeline import run
from pgolf.train import checkpoint, qat
from pgolf.train.ema import EMA, SWA, WeightAverager


class _Toy(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(3, 2)
        self.emb = nn.Embedding(4, 3).to(torch.bfloat16)
        self.register_buffer("count", torch.tensor(0, dtype=torch.int64))


# ----------------------------------------------------------------------------------------------
# EMA / SWA


def test_ema_exact_recurrence_on_a_toy():
    torch.manual_seed(0)
    m = _Toy()
    d = 0.9
    ema = EMA(m, d)
    assert ema.names == ["lin.weight", "lin.bias", "emb.weight"]  # the int buffer is not averaged
    expect = {k: v.detach().float().clone() for k, v in m.state_dict().items() if v.is_floating_point()}
    for step in range(5):
        with torch.no_grad():
            for p in m.parameters():
                p.add_(torch.randn_like(p))
        ema.update(m)
        for k, v in m.state_dict().items():
            if k in expect:
                expect[k].mul_(d).add_(v.float(), alpha=1 - d)  # the records' in-place form
    for k, v in ema.state().items():
        assert v.dtype == torch.float32
        assert torch.equal(v, expect[k]), k
    # closed form on a constant target: e_n = theta + d^n (e_0 - theta)
    p = nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        p.weight.fill_(0.0)
    e = EMA(p, 0.5)
    with torch.no_grad():
        p.weight.fill_(1.0)
    for _ in range(4):
        e.update(p)
    assert e.state()["weight"].item() == 1.0 - 0.5**4


def test_swa_uniform_average_of_late_snapshots():
    m = _Toy()
    avg = WeightAverager(m, swa_every=2, swa_start_lr_mul=0.5)
    seen = []
    for step in range(1, 9):  # lr_mul 1.0 .. 0.125; below 0.5 from step 5
        with torch.no_grad():
            m.lin.weight.fill_(float(step))
        lr = 1.0 - (step - 1) / 8
        avg.after_step(m, step, lr)
        if step % 2 == 0 and lr < 0.5:
            seen.append(float(step))
    assert seen == [6.0, 8.0] and avg.swa.count == 2 and avg.swa.first_step == 6
    assert avg.kind == "swa"
    assert torch.equal(avg.averaged_state()["lin.weight"], torch.full((2, 3), 7.0))
    assert SWA(m, 5, 0.2).state() is None


def test_averager_apply_keeps_dtypes_and_prefers_swa_once_it_has_snapshots():
    torch.manual_seed(1)
    m = _Toy()
    avg = WeightAverager(m, ema_decay=0.5, swa_every=1, swa_start_lr_mul=0.3)
    w0 = m.lin.weight.detach().clone()
    with torch.no_grad():
        m.lin.weight.add_(2.0)
    avg.after_step(m, 1, 1.0)  # no SWA snapshot yet (lr_mul 1.0 >= 0.3): EMA is applied
    assert avg.kind == "ema"
    assert avg.apply_to(m)
    torch.testing.assert_close(m.lin.weight.detach(), w0 + 1.0, atol=1e-6, rtol=0)
    assert m.emb.weight.dtype == torch.bfloat16 and m.count.dtype == torch.int64
    avg.after_step(m, 2, 0.1)
    assert avg.kind == "swa" and avg.describe().startswith("averaging:swa")
    assert WeightAverager.from_config(m, dataclasses.make_dataclass("T", [("ema_decay", float, 0.0),
                                                                          ("swa_every", int, 0),
                                                                          ("swa_start_lr_mul", float, 0.2)])()) is None


def test_averager_state_dict_roundtrip_and_mismatch():
    m = _Toy()
    a = WeightAverager(m, ema_decay=0.9, swa_every=1, swa_start_lr_mul=2.0)
    for s in range(1, 4):
        with torch.no_grad():
            m.lin.weight.mul_(1.5)
        a.after_step(m, s, 1.0)
    b = WeightAverager(_Toy(), ema_decay=0.9, swa_every=1, swa_start_lr_mul=2.0)
    b.load_state_dict(a.state_dict())
    assert b.swa.count == 3
    for k in a.ema.names:
        assert torch.equal(a.ema.state()[k], b.ema.state()[k])
        assert torch.equal(a.swa.state()[k], b.swa.state()[k])
    with pytest.raises(ValueError, match="SWA"):
        WeightAverager(_Toy(), ema_decay=0.9).load_state_dict(a.state_dict())


def test_ema_swa_qat_resume_is_bit_exact(byte_dataset, tmp_path, monkeypatch):
    cfg = with_train(tiny_run_config(byte_dataset, tmp_path, iterations=6, checkpoint_every=3, warmdown_iters=6),
                      ema_decay=0.8, swa_every=2, swa_start_lr_mul=0.9, qat_bits=6, qat_start_lr_mul=0.6)
    straight = train_cpu(cfg, tmp_path / "straight")
    assert straight.averager.swa.count == 3  # steps 2, 4, 6 (lr_mul at their starts: 5/6, 3/6, 1/6)

    real_save, snap = checkpoint.save, tmp_path / "at3"

    def save_and_snapshot(run_dir, rt, model, opt, loader, *, step, elapsed_s, curve, **kw):
        real_save(run_dir, rt, model, opt, loader, step=step, elapsed_s=elapsed_s, curve=curve, **kw)
        if step == 3:
            shutil.copytree(run_dir, snap)

    monkeypatch.setattr(checkpoint, "save", save_and_snapshot)
    train_cpu(cfg, tmp_path / "interrupted")
    monkeypatch.setattr(checkpoint, "save", real_save)
    saved = torch.load(snap / checkpoint.MODEL_FILE, weights_only=False)["extras"]
    assert saved["qat"]["enabled_at"] is None and saved["averager"]["swa"]["count"] == 1  # QAT switches at step 4
    resumed = train_cpu(cfg, snap, resume=True)
    assert resumed.steps == 6
    for k, v in straight.model.state_dict().items():
        assert torch.equal(v, resumed.model.state_dict()[k]), k
    for part in ("ema", "swa"):
        for k, v in getattr(straight.averager, part).state().items():
            assert torch.equal(v, getattr(resumed.averager, part).state()[k]), (part, k)
    with pytest.raises(ValueError, match="technique state"):
        train_cpu(with_train(cfg, ema_decay=0.0, swa_every=0), snap, resume=True)


def test_pipeline_scores_and_exports_the_ema_weights(byte_dataset, tmp_path):
    cfg = with_train(tiny_run_config(byte_dataset, tmp_path / "runs", iterations=8), ema_decay=0.5)
    summary = run(cfg, run_id="ema")
    bpb = summary["val_bpb"]
    assert summary["averaging"] == "ema"
    assert bpb["prequant"] != bpb["prequant_last_step"]
    log = (tmp_path / "runs" / "ema" / "train.log").read_text()
    assert "prequant_post_ema val_loss" in log and "averaging:ema" in log
    # the float weights kept for export are the EMA weights, not the last step's
    fp32 = torch.load(tmp_path / "runs" / "ema" / "model_fp32.pt", weights_only=False)
    last = train_cpu(with_train(cfg, ema_decay=0.0), tmp_path / "plain").model.state_dict()
    assert any(not torch.equal(fp32[k], v.float()) for k, v in last.items())
    assert json.loads((tmp_path / "runs" / "ema" / "summary.json").read_text())["val_bpb"] == bpb


# ----------------------------------------------------------------------------------------------
# QAT


def test_fake_quant_rows_levels_and_scale():
    w = torch.tensor([[0.31, -0.1, 0.02, 0.0], [-2.0, 1.0, 0.5, 0.26]])
    q = qat.fake_quant_rows(w, 3)  # qmax 3: scale = rowmax / 3
    s = torch.tensor([[0.31 / 3], [2.0 / 3]])
    assert torch.allclose(q, torch.round(w / s) * s)
    assert torch.equal(torch.round(q / s), torch.tensor([[3.0, -1.0, 0.0, 0.0], [-3.0, 2.0, 1.0, 0.0]]))
    w6 = torch.randn(16, 64)
    levels = torch.round(qat.fake_quant_rows(w6, 6) / (w6.abs().amax(1, keepdim=True) / 31))
    assert levels.abs().max() == 31 and levels.unique().numel() > 40
    assert (qat.fake_quant_rows(w6, 6) - w6).abs().max() <= w6.abs().max() / 31 / 2 + 1e-6


def test_ste_passes_the_gradient_straight_through():
    w = torch.randn(4, 8, requires_grad=True)
    for flag in (0.0, 1.0):
        out = qat.ste(w, 4, torch.tensor(flag))
        (out * torch.arange(32.0).view(4, 8)).sum().backward()
        assert torch.equal(w.grad, torch.arange(32.0).view(4, 8))
        w.grad = None
    assert torch.equal(qat.ste(w, 4, torch.tensor(0.0)), w)
    assert torch.equal(qat.ste(w, 4, torch.tensor(1.0)), qat.fake_quant_rows(w, 4))


def _tiny_gpt():
    torch.manual_seed(0)
    m = GPT(ModelConfig(vocab_size=64, num_layers=2, model_dim=32, num_heads=2, num_kv_heads=1))
    with torch.no_grad():  # non-zero output projections so every matrix matters
        for mod in m.modules():
            if isinstance(mod, CastedLinear):
                mod.weight.normal_(0, 0.2)
    return m


@pytest.mark.parametrize("backend", ["aot_eager"])  # dynamo + AOT autograd; plain dynamo: the recompile test
def test_qat_flag_changes_the_compiled_forward(backend):
    import torch._dynamo

    torch._dynamo.reset()
    x = torch.randint(0, 64, (2, 16), generator=torch.Generator().manual_seed(1))
    y = torch.randint(0, 64, (2, 16), generator=torch.Generator().manual_seed(2))
    ref = _tiny_gpt()
    plain = ref(x, y)
    model = _tiny_gpt()
    names = qat.attach(model, 4)
    assert len(names) == 12 and all(isinstance(model.get_submodule(n), CastedLinear) for n in names)
    assert set(model.state_dict()) == set(ref.state_dict())  # the flag buffer is not persistent
    compiled = torch.compile(model, backend=backend, fullgraph=True, dynamic=False)
    off = compiled(x, y)
    assert torch.equal(off, plain)  # flag 0: bit-identical to the model without QAT
    qat.set_enabled(model, True)
    on = compiled(x, y)
    with torch.no_grad():  # expected: the plain model with every block matrix replaced by q(W)
        for n in names:
            ref.get_submodule(n).weight.copy_(qat.fake_quant_rows(ref.get_submodule(n).weight, 4))
    expected = ref(x, y)
    assert abs(on.item() - off.item()) > 1e-3
    torch.testing.assert_close(on, expected, atol=1e-5, rtol=0)
    qat.set_enabled(model, False)
    assert torch.equal(compiled(x, y), plain)
    # gradients still reach the float weights while QAT is on
    qat.set_enabled(model, True)
    compiled(x, y).backward()
    assert model.blocks[0].mlp.fc.weight.grad.abs().sum() > 0


def test_qat_flag_does_not_recompile():
    import torch._dynamo
    from torch._dynamo.testing import CompileCounter

    torch._dynamo.reset()
    model = _tiny_gpt()
    qat.attach(model, 6)
    counter = CompileCounter()
    compiled = torch.compile(model, backend=counter, fullgraph=True, dynamic=False)
    x = torch.randint(0, 64, (2, 16))
    a = compiled(x, x)
    qat.set_enabled(model, True)
    b = compiled(x, x)
    assert counter.frame_count == 1 and not torch.equal(a, b)


def test_late_qat_switch_is_sticky_and_resumable():
    model = _tiny_gpt()
    ctl = qat.LateQAT(model, 6, 0.15)
    flags = lambda: {m.qat_flag.item() for m in model.modules() if isinstance(m, qat.QATLinear)}  # noqa: E731
    assert [ctl.before_step(s, mul) for s, mul in enumerate((1.0, 0.5, 0.2, 0.149, 0.1, 0.3))] == \
        [False, False, False, True, False, False]
    assert ctl.enabled_at == 3 and flags() == {1.0}
    other = qat.LateQAT(_tiny_gpt(), 6, 0.15)
    other.load_state_dict(ctl.state_dict())
    assert other.enabled
    with pytest.raises(ValueError, match="qat_bits=4"):
        qat.LateQAT(_tiny_gpt(), 4, 0.15).load_state_dict(ctl.state_dict())
    with pytest.raises(ValueError, match="train.qat_bits=9"):
        qat.attach(_tiny_gpt(), 9)


@pytest.mark.gpu
def test_gpu_qat_under_inductor():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    from torch import _dynamo

    _dynamo.reset()
    from pgolf.model.gpt import cast_for_training

    model = cast_for_training(_tiny_gpt(), torch.device("cuda"))
    qat.attach(model, 6)
    compiled = torch.compile(model, fullgraph=True, dynamic=False)
    x = torch.randint(0, 64, (4, 128), device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        off = compiled(x, x).float()
        qat.set_enabled(model, True)
        on = compiled(x, x).float()
        qat.set_enabled(model, False)
        again = compiled(x, x).float()
    assert abs(on.item() - off.item()) > 1e-4 and torch.equal(off, again)
