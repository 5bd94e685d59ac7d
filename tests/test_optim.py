"""Tests for pgolf.optim (policy table, Muon / Newton–Schulz, optimizer builder). CPU, a few seconds.

    .venv/bin/python -m pytest tests/test_optim.py -q
"""

from __future__ import annotations

import os
import tempfile

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pgolf.config import OptimConfig
from pgolf.optim.builder import Optimizers, build_optimizers, muon_momentum_at
from pgolf.optim.muon import NS5_COEFFS, Muon, muon_scale, zeropower_newton_schulz
from pgolf.optim.policy import (
    DEFAULT_POLICY,
    PolicyRow,
    baseline_policy,
    policy_for,
    replace_row,
    resolve_policy,
    with_rows,
)

@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny matrices: thread start-up and contention dominate, so run this module on one thread."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ----------------------------------------------------------------------------------------------
# A stand-in with the baseline's parameter names (the real GPT is tested separately when present).


class _Attn(nn.Module):
    def __init__(self, d: int, heads: int):
        super().__init__()
        self.c_q = nn.Linear(d, d, bias=False)
        self.c_k = nn.Linear(d, d // 2, bias=False)
        self.c_v = nn.Linear(d, d // 2, bias=False)
        self.proj = nn.Linear(d, d, bias=False)
        self.q_gain = nn.Parameter(torch.full((heads,), 1.5))

    def forward(self, x):
        q = self.c_q(x) * self.q_gain.repeat_interleave(x.size(-1) // self.q_gain.numel())
        return self.proj(torch.tanh(q + torch.cat((self.c_k(x), self.c_v(x)), -1)))


class _MLP(nn.Module):
    def __init__(self, d: int):
        super().__init__()
        self.fc = nn.Linear(d, 2 * d, bias=False)
        self.proj = nn.Linear(2 * d, d, bias=False)

    def forward(self, x):
        return self.proj(torch.relu(self.fc(x)).square())


class _Block(nn.Module):
    def __init__(self, d: int, heads: int):
        super().__init__()
        self.attn, self.mlp = _Attn(d, heads), _MLP(d)
        self.attn_scale = nn.Parameter(torch.ones(d))
        self.mlp_scale = nn.Parameter(torch.ones(d))
        self.resid_mix = nn.Parameter(torch.stack((torch.ones(d), torch.zeros(d))))

    def forward(self, x, x0):
        x = self.resid_mix[0] * x + self.resid_mix[1] * x0
        x = x + self.attn_scale * self.attn(F.rms_norm(x, (x.size(-1),)))
        return x + self.mlp_scale * self.mlp(F.rms_norm(x, (x.size(-1),)))


class TinyGPT(nn.Module):
    def __init__(self, vocab=32, d=16, layers=3, heads=4, tie=True):
        super().__init__()
        self.tok_emb = nn.Embedding(vocab, d)
        self.skip_weights = nn.Parameter(torch.ones(layers // 2, d))
        self.blocks = nn.ModuleList(_Block(d, heads) for _ in range(layers))
        self.lm_head = None if tie else nn.Linear(d, vocab, bias=False)

    def forward(self, ids, tgt):
        x = x0 = self.tok_emb(ids)
        skips = []
        for i, b in enumerate(self.blocks):
            if i >= len(self.blocks) - self.skip_weights.size(0) and skips:
                x = x + self.skip_weights[len(skips) - 1] * skips.pop()
            x = b(x, x0)
            if i < self.skip_weights.size(0):
                skips.append(x)
        w = self.tok_emb.weight if self.lm_head is None else self.lm_head.weight
        return F.cross_entropy((F.rms_norm(x, (x.size(-1),)) @ w.T).flatten(0, 1), tgt.flatten())


def _batch(seed, vocab=32, b=4, t=8):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (b, t), generator=g), torch.randint(0, vocab, (b, t), generator=g)


def _train(model, opt: Optimizers, steps, start=0, cfg=OptimConfig()):
    for s in range(start, start + steps):
        opt.set_muon_momentum(muon_momentum_at(s, cfg))
        opt.set_lr_mul(1.0 - 0.1 * s)
        model(*_batch(s)).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)


def _model(seed=0, **kw):
    torch.manual_seed(seed)
    return TinyGPT(**kw)


# ----------------------------------------------------------------------------------------------
# Newton–Schulz


@pytest.mark.parametrize("shape", [(64, 128), (128, 64)])
def test_ns5_singular_values_and_polar_alignment(shape):
    # Measured on CPU for seeds 0-2: singular values in [0.672, 1.138], i.e. NS5 is not exactly
    # orthogonal; it pushes every singular value into a band around 1.
    for seed in range(3):
        G = torch.randn(*shape, generator=torch.Generator().manual_seed(seed))
        X = zeropower_newton_schulz(G)
        assert X.dtype == torch.bfloat16 and X.shape == G.shape
        s = torch.linalg.svdvals(X.float())
        assert 0.6 < s.min().item() and s.max().item() < 1.2, (s.min(), s.max())
        assert 0.8 < s.mean().item() < 1.05
        U, _, Vh = torch.linalg.svd(G, full_matrices=False)
        polar = U @ Vh
        cos = (X.float() * polar).sum() / (X.float().norm() * polar.norm())
        assert cos > 0.98, cos


def test_ns5_batched_equals_per_matrix():
    g = torch.Generator().manual_seed(1)
    G = torch.randn(5, 48, 96, generator=g)
    G[1] *= 300.0  # a global (not per-matrix) norm would crush the other matrices
    G[3] *= 1e-3
    batched = zeropower_newton_schulz(G)
    single = torch.stack([zeropower_newton_schulz(m) for m in G])
    torch.testing.assert_close(batched.float(), single.float(), atol=1e-3, rtol=0)
    # Tall matrices go through the transpose branch; 4-D batches work too.
    T = G.mT.reshape(5, 1, 96, 48)
    torch.testing.assert_close(zeropower_newton_schulz(T).squeeze(1).float(), single.mT.float(), atol=1e-3, rtol=0)


def test_ns_per_step_coeffs_and_errors():
    G = torch.randn(16, 32)
    same = zeropower_newton_schulz(G, steps=3, coeffs=[NS5_COEFFS] * 3)
    assert torch.equal(same, zeropower_newton_schulz(G, steps=3))
    with pytest.raises(ValueError, match="triples"):
        zeropower_newton_schulz(G, steps=5, coeffs=[NS5_COEFFS] * 2)
    with pytest.raises(ValueError, match="matrix"):
        zeropower_newton_schulz(torch.randn(8))


# ----------------------------------------------------------------------------------------------
# Muon


def test_muon_step_matches_formula():
    torch.manual_seed(0)
    p = nn.Parameter(torch.randn(24, 12))  # tall: scale sqrt(2)
    p0 = p.detach().clone()
    opt = Muon([p], lr=0.1, momentum=0.9, process_group=None)
    g1, g2 = torch.randn(24, 12), torch.randn(24, 12)
    p.grad = g1.clone()
    opt.step()
    u1 = zeropower_newton_schulz(g1 + 0.9 * g1) * muon_scale((24, 12))
    expected = p0 - 0.1 * u1.float()
    assert torch.allclose(p.detach(), expected, atol=1e-6)
    p.grad = g2.clone()
    opt.param_groups[0]["lr"] = 0.05
    opt.step()
    buf = 0.9 * g1 + g2
    assert torch.allclose(opt.state[p]["momentum_buffer"], buf, atol=1e-6)
    u2 = zeropower_newton_schulz(g2 + 0.9 * buf) * 2**0.5
    assert torch.allclose(p.detach(), expected - 0.05 * u2.float(), atol=1e-6)
    assert muon_scale((12, 24)) == 1.0


def test_muon_weight_decay_and_plain_momentum():
    torch.manual_seed(0)
    p = nn.Parameter(torch.randn(8, 8))
    p0 = p.detach().clone()
    g = torch.randn(8, 8)
    opt = Muon([p], lr=0.1, momentum=0.5, nesterov=False, weight_decay=0.2, process_group=None)
    p.grad = g
    opt.step()
    assert torch.allclose(p.detach(), p0 * (1 - 0.1 * 0.2) - 0.1 * zeropower_newton_schulz(g).float(), atol=1e-7)
    with pytest.raises(ValueError, match="not a matrix"):
        Muon([nn.Parameter(torch.ones(3))], lr=0.1)


def test_muon_decreases_loss_on_toy_problem():
    torch.manual_seed(0)
    A = torch.randn(32, 16)
    W_true = torch.randn(16, 32) / 6
    W = nn.Parameter(torch.zeros(16, 32))
    V = nn.Parameter(torch.zeros(16, 32))  # same shape: exercises the batched bucket
    opt = Muon([W, V], lr=0.1, momentum=0.9, process_group=None)

    def loss_fn():
        return ((W @ A - W_true @ A) ** 2).mean() + ((V @ A + W_true @ A) ** 2).mean()

    first = loss_fn().item()
    for s in range(40):
        opt.param_groups[0]["lr"] = 0.1 * (1 - s / 40)  # Muon steps have a fixed spectral size: decay to settle
        opt.zero_grad()
        loss_fn().backward()
        opt.step()
    last = loss_fn().item()
    assert last < 0.02 * first, (first, last)  # measured 2.33 -> 0.0087


# ----------------------------------------------------------------------------------------------
# Policy table

BASELINE_NAMES_PER_BLOCK = {
    "attn.c_q.weight": ("block_matrix", "muon", "matrix_lr", "int8"),
    "attn.c_k.weight": ("block_matrix", "muon", "matrix_lr", "int8"),
    "attn.c_v.weight": ("block_matrix", "muon", "matrix_lr", "int8"),
    "attn.proj.weight": ("block_matrix", "muon", "matrix_lr", "int8"),
    "mlp.fc.weight": ("block_matrix", "muon", "matrix_lr", "int8"),
    "mlp.proj.weight": ("block_matrix", "muon", "matrix_lr", "int8"),
    "attn.q_gain": ("control", "adam", "scalar_lr", "float32"),
    "attn_scale": ("control", "adam", "scalar_lr", "float32"),
    "mlp_scale": ("control", "adam", "scalar_lr", "float32"),
    "resid_mix": ("control", "adam", "scalar_lr", "float32"),
}


@pytest.mark.parametrize("tie", [True, False])
def test_policy_covers_baseline_names(tie):
    model = _model(tie=tie)
    rows = baseline_policy(tie_embeddings=tie)
    table = resolve_policy(model.named_parameters(), rows)
    assert list(table) == [n for n, _ in model.named_parameters()]
    for i in range(3):
        for suffix, (row, optim, lr_key, quant) in BASELINE_NAMES_PER_BLOCK.items():
            r = table[f"blocks.{i}.{suffix}"]
            assert (r.name, r.optim, r.lr_key, r.quant) == (row, optim, lr_key, quant), suffix
    assert table["tok_emb.weight"].lr_key == ("tied_embed_lr" if tie else "embed_lr")
    assert table["skip_weights"].name == "control"
    if not tie:
        assert table["lm_head.weight"].lr_key == "head_lr" and table["lm_head.weight"].optim == "adam"
    else:
        assert "lm_head" not in {r.name for r in rows}


def test_policy_for_model_cfg():
    from pgolf.config import ModelConfig

    assert policy_for(ModelConfig()) == DEFAULT_POLICY
    assert [r.name for r in policy_for(ModelConfig(tie_embeddings=False))] == ["tok_emb", "lm_head", "control", "block_matrix"]


def test_policy_matches_real_gpt_when_present():
    gpt = pytest.importorskip("pgolf.model.gpt")
    from pgolf.config import ModelConfig

    for tie in (True, False):
        cfg = ModelConfig(vocab_size=64, num_layers=3, model_dim=32, num_heads=4, num_kv_heads=2, tie_embeddings=tie)
        model = gpt.GPT(cfg)
        table = resolve_policy(model.named_parameters(), policy_for(cfg))
        assert build_optimizers(model, OptimConfig()).policy == table  # rows picked from model.cfg
        muon = sorted(n for n, r in table.items() if r.optim == "muon")
        assert len(muon) == 6 * 3 and all(n.startswith("blocks.") and n.endswith(".weight") for n in muon)
        for n, p in model.named_parameters():  # the model's own notion of control tensors agrees
            if hasattr(gpt, "control_param"):
                assert (table[n].name == "control") == gpt.control_param(n, p), n


def test_policy_unmatched_param_is_named():
    model = _model()
    model.extra_proj = nn.Parameter(torch.zeros(4, 4))  # 2-D outside blocks: no row wants it
    model.blocks[0].bank = nn.Parameter(torch.zeros(2, 4, 4))  # 3-D: no row wants it either
    with pytest.raises(ValueError) as e:
        resolve_policy(model.named_parameters(), DEFAULT_POLICY)
    msg = str(e.value)
    assert "unmatched: extra_proj (4, 4); blocks.0.bank (2, 4, 4)" in msg
    assert "tok_emb.weight" not in msg and "several rows" not in msg


def test_policy_double_match_is_named():
    rows = with_rows(DEFAULT_POLICY, PolicyRow("embed_again", r"tok_emb\..*", "adam", "embed_lr"))
    with pytest.raises(ValueError) as e:
        resolve_policy(_model().named_parameters(), rows)
    msg = str(e.value)
    assert "several rows" in msg and "tok_emb.weight -> tok_emb, embed_again" in msg
    with pytest.raises(ValueError, match="duplicate row names"):
        resolve_policy([], DEFAULT_POLICY + DEFAULT_POLICY[:1])


def test_policy_row_validation_and_editing():
    with pytest.raises(ValueError, match="optim='sgd'"):
        PolicyRow("x", "a", "sgd", "matrix_lr")
    with pytest.raises(ValueError, match="lr_key='lr'"):
        PolicyRow("x", "a", "adam", "lr")
    with pytest.raises(ValueError, match="quant='int4'"):
        PolicyRow("x", "a", "adam", "scalar_lr", quant="int4")
    rows = replace_row(DEFAULT_POLICY, "tok_emb", quant="float16")
    assert [r.name for r in rows] == [r.name for r in DEFAULT_POLICY] and rows[0].quant == "float16"
    rows = with_rows(rows, PolicyRow("tok_emb", r"tok_emb\.weight", "adam", "embed_lr"))
    assert rows[0].lr_key == "embed_lr" and len(rows) == len(DEFAULT_POLICY)
    with pytest.raises(ValueError, match="no policy row named 'nope'"):
        replace_row(DEFAULT_POLICY, "nope", quant="keep")


# ----------------------------------------------------------------------------------------------
# Builder


def test_muon_momentum_warmup():
    cfg = OptimConfig()
    assert muon_momentum_at(0, cfg) == pytest.approx(0.85)
    assert muon_momentum_at(250, cfg) == pytest.approx(0.90)
    assert muon_momentum_at(500, cfg) == pytest.approx(0.95)
    assert muon_momentum_at(10_000, cfg) == pytest.approx(0.95)
    assert muon_momentum_at(3, OptimConfig(muon_momentum_warmup_steps=0)) == 0.95


def test_builder_groups_and_setters():
    model = _model(tie=False)
    cfg = OptimConfig()
    opt = build_optimizers(model, cfg, policy_rows=baseline_policy(tie_embeddings=False))
    muon_params = {id(p) for g in opt.muon.param_groups for p in g["params"]}
    for n, p in model.named_parameters():
        assert (id(p) in muon_params) == (opt.policy[n].optim == "muon")
    lrs = {g["lr_key"]: g["lr"] for g in opt.adam.param_groups}
    assert lrs == {"embed_lr": 0.6, "head_lr": 0.008, "scalar_lr": 0.04}
    assert opt.muon.param_groups[0]["lr"] == 0.04 and opt.muon.param_groups[0]["momentum"] == pytest.approx(0.85)
    assert all(g["weight_decay"] == 0.0 for g in opt.param_groups())
    assert opt.adam.defaults["betas"] == (0.9, 0.95) and opt.adam.defaults["eps"] == 1e-8
    opt.set_lr_mul(0.5)
    assert {g["lr_key"]: g["lr"] for g in opt.adam.param_groups} == {"embed_lr": 0.3, "head_lr": 0.004, "scalar_lr": 0.02}
    assert opt.muon.param_groups[0]["lr"] == 0.02
    opt.set_muon_momentum(0.93)
    assert opt.muon.param_groups[0]["momentum"] == 0.93
    assert len(opt.summary()) == 4
    with pytest.raises(ValueError, match="wd_key='no_such_wd' is not a field of OptimConfig"):
        build_optimizers(model, cfg, policy_rows=replace_row(baseline_policy(False), "lm_head", wd_key="no_such_wd"))


def test_adam_half_matches_torch_adamw():
    cfg = OptimConfig()
    model, ref_model = _model(), _model()
    opt = build_optimizers(model, cfg)
    named_ref = dict(ref_model.named_parameters())
    ref_groups = [
        {"params": [named_ref[n] for n in names], "lr": g["lr"]}
        for g, names in zip(opt.adam.param_groups, opt.group_names["adam"])
    ]
    ref = torch.optim.AdamW(ref_groups, betas=(cfg.beta1, cfg.beta2), eps=cfg.adam_eps, weight_decay=0.0)
    adam_names = [n for names in opt.group_names["adam"] for n in names]
    assert set(adam_names) == {n for n, r in opt.policy.items() if r.optim == "adam"}
    gen = torch.Generator().manual_seed(7)
    for step in range(6):
        mul = 1.0 - 0.15 * step
        opt.set_lr_mul(mul)
        for g_ref, g in zip(ref.param_groups, opt.adam.param_groups):
            g_ref["lr"] = g["base_lr"] * mul
        for n in adam_names:
            grad = torch.randn(named_ref[n].shape, generator=gen)
            dict(model.named_parameters())[n].grad = grad.clone()
            named_ref[n].grad = grad.clone()
        opt.adam.step()
        ref.step()
        for n in adam_names:
            torch.testing.assert_close(dict(model.named_parameters())[n], named_ref[n], atol=1e-7, rtol=0)
    moved = (dict(model.named_parameters())["tok_emb.weight"] - _model().tok_emb.weight).abs().max()
    assert moved > 1e-3  # the comparison is not vacuous


def test_state_dict_roundtrip_is_bit_exact(tmp_path):
    cfg = OptimConfig()
    model = _model()
    opt = build_optimizers(model, cfg)
    _train(model, opt, 3)
    ckpt = tmp_path / "ckpt.pt"
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, ckpt)
    _train(model, opt, 3, start=3)
    expected = {n: p.detach().clone() for n, p in model.named_parameters()}

    model2 = _model(seed=123)  # different init: everything must come from the checkpoint
    opt2 = build_optimizers(model2, cfg)
    sd = torch.load(ckpt)
    model2.load_state_dict(sd["model"])
    opt2.load_state_dict(sd["opt"])
    _train(model2, opt2, 3, start=3)
    for n, p in model2.named_parameters():
        assert torch.equal(p.detach(), expected[n]), n
    assert opt2.muon.param_groups[0]["base_lr"] == cfg.matrix_lr


# ----------------------------------------------------------------------------------------------
# Distributed Muon: 2 gloo processes give the single-process result

_DIST_STEPS = 4


def _run_steps(model, opt):
    gen = torch.Generator().manual_seed(99)
    for s in range(_DIST_STEPS):
        opt.set_muon_momentum(muon_momentum_at(s * 100, OptimConfig()))
        opt.set_lr_mul(1.0 - 0.2 * s)
        for p in model.parameters():
            p.grad = torch.randn(p.shape, generator=gen)  # identical on every rank, as after DDP
        opt.step()


def _dist_worker(rank, world, port, out_dir):
    import datetime

    import torch.distributed as dist

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    store = dist.TCPStore("127.0.0.1", port, is_master=False)  # a client of the test's store (it hosts it)
    dist.init_process_group("gloo", store=store, rank=rank, world_size=world, timeout=datetime.timedelta(seconds=120))
    try:
        model = _model(layers=3)
        opt = build_optimizers(model, OptimConfig())  # process_group="auto" picks up the gloo group
        assert opt.muon._dist()[1:] == (world, rank)
        _run_steps(model, opt)
        torch.save({"params": {n: p.detach() for n, p in model.named_parameters()},
                    "muon": opt.muon.state_dict()}, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()
        torch.set_num_threads(threads)


def test_muon_two_process_gloo_matches_single_process():
    import torch.distributed as dist
    import torch.multiprocessing as mp

    model = _model(layers=3)
    opt = build_optimizers(model, OptimConfig())
    assert opt.muon._dist()[1] == 1
    _run_steps(model, opt)
    single = {n: p.detach() for n, p in model.named_parameters()}

    # World 2: a spawned process is rank 1 and this process is rank 0 (one torch import instead of two).
    with tempfile.TemporaryDirectory() as out_dir:
        store = dist.TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False)  # port 0: the kernel's pick
        child = mp.get_context("spawn").Process(target=_dist_worker, args=(1, 2, store.port, out_dir), daemon=True)
        child.start()
        try:
            _dist_worker(0, 2, store.port, out_dir)
        finally:
            child.join(timeout=120)
            if child.is_alive():
                child.kill()
        assert child.exitcode == 0, f"rank 1 exited with {child.exitcode}"
        assert not dist.is_initialized()
        results = [torch.load(os.path.join(out_dir, f"rank{r}.pt")) for r in range(2)]
    for res in results:
        for n, p in single.items():
            torch.testing.assert_close(res["params"][n], p, atol=1e-6, rtol=0, msg=n)
    # Every rank holds the full momentum state, so rank 0 alone can checkpoint.
    s0, s1, s_single = results[0]["muon"]["state"], results[1]["muon"]["state"], opt.muon.state_dict()["state"]
    assert set(s0) == set(s1) == set(s_single) and len(s0) == 18
    for k in s0:
        assert torch.equal(s0[k]["momentum_buffer"], s1[k]["momentum_buffer"])
        assert torch.equal(s0[k]["momentum_buffer"], s_single[k]["momentum_buffer"])


# ----------------------------------------------------------------------------------------------
# GPU: compiled Newton–Schulz and fused Adam on the real model


@pytest.mark.gpu
def test_gpu_compiled_ns_and_fused_adam_on_real_gpt():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    gpt = pytest.importorskip("pgolf.model.gpt")
    from pgolf.config import ModelConfig

    G = torch.randn(6, 256, 512, device="cuda")
    eager = zeropower_newton_schulz(G)
    single = torch.stack([zeropower_newton_schulz(m) for m in G])
    torch.testing.assert_close(eager.float(), single.float(), atol=2e-2, rtol=0)
    torch.testing.assert_close(torch.compile(zeropower_newton_schulz)(G).float(), eager.float(), atol=2e-2, rtol=0)

    cfg = ModelConfig(num_layers=3)
    torch.manual_seed(0)
    model = gpt.cast_for_training(gpt.GPT(cfg), torch.device("cuda"))
    opt = build_optimizers(model, OptimConfig(), policy_rows=policy_for(cfg))
    assert opt.muon.compile_ns and opt.adam.defaults["fused"]
    ids = torch.randint(0, cfg.vocab_size, (4, 128), device="cuda")
    losses = []
    for s in range(8):
        opt.set_muon_momentum(muon_momentum_at(s, OptimConfig()))
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(ids[:, :-1], ids[:, 1:])
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.5, losses
