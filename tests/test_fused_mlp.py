"""Issue 5, fused (leaky) relu² MLP (model/fused_mlp.py): the custom ops' autograd, fake and compile wiring on
CPU against the plain MLP, the model switch (off = baseline bit for bit, on = same loss and gradients, QAT
reaches it), and on GPU (``pytest -m gpu tests/test_fused_mlp.py``) the Triton kernel itself."""

from __future__ import annotations

import importlib.util

import pytest
import torch
import torch.nn.functional as F
from conftest import (
    mlp_operands,
    needs_triton_interpreter,
    out_and_grads,
    run_in_triton_interpreter,
)

from pgolf.config import ModelConfig
from pgolf.model import fused_mlp as fm
from pgolf.model.fused_mlp import fused_mlp
from pgolf.model.gpt import GPT

needs_triton = pytest.mark.skipif(not (torch.cuda.is_available() and importlib.util.find_spec("triton")),
                                  reason="needs CUDA and triton")


def plain(x, w_fc, w_proj, slope):
    return F.linear(F.leaky_relu(F.linear(x, w_fc), slope).square(), w_proj)


# --- CPU: the op against the plain MLP ---

@pytest.mark.parametrize("slope", [0.0, 0.5, 0.3])
def test_op_matches_plain_mlp_forward_and_backward(slope):
    args = mlp_operands()
    g_out = torch.randn(2, 20, 64, generator=torch.Generator().manual_seed(1))
    out_p, grads_p = out_and_grads(lambda *a: plain(*a, slope), args, g_out)
    out_f, grads_f = out_and_grads(lambda *a: fused_mlp(*a, slope), args, g_out)
    torch.testing.assert_close(out_f, out_p, atol=1e-5, rtol=1e-5)
    for name, a, b in zip(("x", "w_fc", "w_proj"), grads_f, grads_p):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5, msg=name)


@pytest.mark.parametrize("sign_bits", [False, True])
def test_op_traces_under_compile_fullgraph_and_passes_opcheck(sign_bits):
    args = mlp_operands(m=16, d=64, h=128)
    g_out = torch.randn(2, 8, 64)
    compiled = torch.compile(lambda *a: fused_mlp(*a, 0.5, sign_bits=sign_bits), fullgraph=True, backend="aot_eager")
    out_c, grads_c = out_and_grads(compiled, args, g_out)
    out_e, grads_e = out_and_grads(lambda *a: plain(*a, 0.5), args, g_out)
    torch.testing.assert_close(out_c, out_e, atol=1e-5, rtol=1e-5)
    for a, b in zip(grads_c, grads_e):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    x, w_fc, w_proj = (a.detach().flatten(0, -2) if a.ndim == 3 else a.detach() for a in args)
    torch.library.opcheck(torch.ops.pgolf.fused_mlp.default, (x.requires_grad_(), w_fc.requires_grad_(),
                                                              w_proj.requires_grad_(), 0.5, sign_bits))


# --- CPU: the model switch ---

def model(seed=0, **kw) -> GPT:
    torch.manual_seed(seed)
    m = GPT(ModelConfig(vocab_size=64, num_layers=2, model_dim=64, num_heads=4, num_kv_heads=2, **kw))
    with torch.no_grad():  # off the zero-init projections, so every parameter gets a gradient
        for p in m.parameters():
            p.add_(0.02 * torch.randn_like(p))
    return m


def loss_and_grads(m: GPT, x):
    m.zero_grad()
    loss = m(x, torch.roll(x, -1, dims=1))
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None}


X = torch.randint(0, 64, (2, 24), generator=torch.Generator().manual_seed(5))


def test_model_off_is_baseline_bit_for_bit(monkeypatch):
    calls = []
    monkeypatch.setattr(torch.ops.pgolf, "fused_mlp", lambda *a: calls.append(a))  # off: never reached
    loss_b, grads_b = loss_and_grads(model(), X)
    loss_o, grads_o = loss_and_grads(model(fused_mlp=False), X)
    assert torch.equal(loss_o, loss_b) and not calls
    assert grads_o.keys() == grads_b.keys() and all(torch.equal(grads_o[k], grads_b[k]) for k in grads_b)


@pytest.mark.parametrize("act,slope", [("relu2", 0.5), ("leaky_relu2", 0.5), ("leaky_relu2", 0.3)])
def test_model_on_matches_off(act, slope):
    kw = dict(mlp_act=act, mlp_leaky_slope=slope)
    loss_off, grads_off = loss_and_grads(model(**kw), X)
    loss_on, grads_on = loss_and_grads(model(fused_mlp=True, **kw), X)
    assert 3.0 < loss_off.item() < 5.0  # near ln 64: a real loss
    torch.testing.assert_close(loss_on, loss_off, atol=1e-6, rtol=0)
    assert grads_on.keys() == grads_off.keys() and len(grads_on) > 5
    for k in grads_off:
        torch.testing.assert_close(grads_on[k], grads_off[k], atol=1e-6, rtol=1e-4, msg=k)


def test_late_qat_reaches_the_fused_path():
    from pgolf.train import qat

    out = {}
    for fused in (False, True):
        m = model(fused_mlp=True) if fused else model()
        qat.attach(m, bits=4)
        qat.set_enabled(m, True)
        with torch.no_grad():
            out[fused] = m.logits(X)
    with torch.no_grad():
        unquantized = model().logits(X)
    torch.testing.assert_close(out[True], out[False], atol=1e-5, rtol=1e-5)
    assert (out[False] - unquantized).abs().max() > 1e-3  # 4-bit fake quantization really changes the forward


def test_swiglu_has_no_fused_kernel():
    with pytest.raises(ValueError, match=r"model\.fused_mlp"):
        ModelConfig(mlp_act="swiglu", fused_mlp=True)


# --- GPU: the Triton kernel (pytest -m gpu) ---

@pytest.mark.gpu
@needs_triton
@pytest.mark.parametrize("m,d,h", [(4096, 512, 2048), (1000, 512, 2048), (777, 128, 320)])
@pytest.mark.parametrize("slope", [0.5, 0.0])
def test_triton_kernel_matches_fp32_math(m, d, h, slope):
    args = mlp_operands(m=m, d=d, h=h, device="cuda", dtype=torch.bfloat16)
    assert fm.uses_triton(args[0])
    g_out = torch.randn(2, m // 2, d, device="cuda", dtype=torch.bfloat16)
    out_k, grads_k = out_and_grads(lambda *a: fused_mlp(*a, slope), args, g_out)
    ref = [a.detach().float().requires_grad_() for a in args]
    out_r, grads_r = out_and_grads(lambda *a: plain(*a, slope), ref, g_out.float())
    scale = out_r.abs().max()
    assert (out_k.float() - out_r).abs().max() < 2e-2 * scale
    for name, a, b in zip(("x", "w_fc", "w_proj"), grads_k, grads_r):
        assert (a.float() - b).abs().max() < 2e-2 * b.abs().max(), name


@pytest.mark.gpu
@needs_triton
@pytest.mark.parametrize("m", [4096, 1000])
def test_tma_and_pointer_kernels_agree_forward_and_backward(m):
    from pgolf.model import fused_mlp_triton as kern

    if torch.cuda.get_device_capability()[0] < 9:
        pytest.skip("the TMA kernel needs Hopper")
    x, w_fc, w_proj = (a.detach() for a in mlp_operands(m=m, d=512, h=2048, device="cuda", dtype=torch.bfloat16))
    x = x.flatten(0, 1)
    fwd = {tma: kern.gemm_act(x, w_fc, 0.5, tma=tma) for tma in (True, False)}
    want = x.float() @ w_fc.float().t()
    for pre, post in fwd.values():
        assert (pre.float() - want).abs().max() < 1e-2 * want.abs().max()
    torch.testing.assert_close(fwd[True][1], fwd[False][1], atol=2e-2, rtol=2e-2)
    g = torch.randn(m, 512, device="cuda", dtype=torch.bfloat16)
    pre = fwd[False][0]
    assert kern.tma_layout(g, w_proj.t()) is True  # the backward's b is W_proj^T, read as K x N
    bwd = {tma: kern.gemm_act(g, w_proj.t(), 0.5, aux=pre, tma=tma) for tma in (True, False)}
    want = (g.float() @ w_proj.float()) * torch.where(pre > 0, 2 * pre, 0.5 * pre).float()
    for got in bwd.values():
        assert (got.float() - want).abs().max() < 1e-2 * want.abs().max()


@pytest.mark.gpu
@needs_triton
def test_triton_kernel_pre_and_post_are_exact_roundings():
    from pgolf.model import fused_mlp_triton as kern

    x, w_fc, _ = (a.detach() for a in mlp_operands(m=512, d=256, h=512, device="cuda", dtype=torch.bfloat16))
    pre, post = kern.gemm_act(x.flatten(0, 1), w_fc, 0.5)
    want = (x.flatten(0, 1).float() @ w_fc.float().t())
    assert (pre.float() - want).abs().max() < 1e-2 * want.abs().max()
    torch.testing.assert_close(post, F.leaky_relu(pre.float(), 0.5).square().to(torch.bfloat16), atol=0, rtol=0)


@pytest.mark.gpu
@needs_triton
def test_gpt_fused_mlp_compiles_and_matches_unfused_on_gpu():
    from pgolf.model.gpt import cast_for_training

    torch._dynamo.reset()
    dev = torch.device("cuda")
    x = torch.randint(0, 64, (4, 256), device=dev)
    losses = {}
    for fused in (False, True):
        m = cast_for_training(model(fused_mlp=fused, mlp_act="leaky_relu2"), dev)
        c = torch.compile(m, dynamic=False, fullgraph=True)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = c(x, torch.roll(x, -1, dims=1))
        loss.backward()
        losses[fused] = (loss.item(), m.blocks[0].mlp.fc.weight.grad.float().norm().item())
    assert abs(losses[True][0] - losses[False][0]) < 1e-2
    assert abs(losses[True][1] - losses[False][1]) < 2e-2 * losses[False][1]


# --- CPU, where triton is installed: the kernel's indexing and epilogues in Triton's interpreter ---

INTERPRETED = """
import torch, torch.nn.functional as F
from pgolf.model import fused_mlp_triton as k
torch.manual_seed(0)
for (m, d, h, slope), cfg in [((300, 64, 320, 0.5), 0), ((256, 128, 256, 0.0), 1), ((200, 64, 192, 0.3), 3),
                                ((300, 64, 256, 0.5), 4)]:
    x, w_fc, w_proj = torch.randn(m, d), torch.randn(h, d) / d ** 0.5, torch.randn(d, h) / h ** 0.5
    pre, post = k.gemm_act(x, w_fc, slope, config=k.CONFIGS[cfg])
    torch.testing.assert_close(pre, x @ w_fc.t(), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(post, F.leaky_relu(pre, slope).square(), atol=0, rtol=0)
    g = torch.randn(m, d)
    g_pre = k.gemm_act(g, w_proj.t(), slope, aux=pre, config=k.CONFIGS[cfg])  # strided b, as the backward passes
    want = (g @ w_proj) * torch.where(pre > 0, 2 * pre, 2 * slope * slope * pre)
    torch.testing.assert_close(g_pre, want, atol=1e-4, rtol=1e-4)
for (m, d, h, slope), cfg in [((300, 64, 256, 0.5), 3), ((256, 128, 256, 0.0), 0), ((200, 64, 384, 0.3), 2),
                                ((600, 64, 512, 0.5), 5)]:
    x, w_fc, w_proj = torch.randn(m, d), torch.randn(h, d) / d ** 0.5, torch.randn(d, h) / h ** 0.5
    pre, post = k.gemm_act(x, w_fc, slope, config=k.TMA_CONFIGS[cfg], tma=True)  # persistent, 4 programs here
    torch.testing.assert_close(pre, x @ w_fc.t(), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(post, F.leaky_relu(pre, slope).square(), atol=0, rtol=0)
    g = torch.randn(m, d)
    assert k.tma_layout(g, w_proj.t()) is True
    g_pre = k.gemm_act(g, w_proj.t(), slope, aux=pre, config=k.TMA_CONFIGS[cfg], tma=True)
    want = (g @ w_proj) * torch.where(pre > 0, 2 * pre, 2 * slope * slope * pre)
    torch.testing.assert_close(g_pre, want, atol=1e-4, rtol=1e-4)
print("ok")
"""


@needs_triton_interpreter
def test_triton_kernel_in_the_interpreter():
    run_in_triton_interpreter(INTERPRETED)


def test_bench_writes_json_on_cpu(tmp_path):
    import json

    import fused_mlp_bench

    out = tmp_path / "bench.json"
    rc = fused_mlp_bench.main(["--device", "cpu", "--dtype", "fp32", "--rows", "64", "--dim", "64", "--warmup", "1",
                               "--iters", "2", "--variants", "fused", "--sweep", "--kernels", "2", "--out", str(out)])
    r = json.loads(out.read_text())
    assert rc == 0 and r["hidden"] == 256 and r["uses_triton"] is False
    assert [v["variant"] for v in r["results"]] == ["fused"] and r["results"][0]["ms_median"] > 0
    assert r["sweep"] == [{"error": "needs CUDA and triton"}]  # the kernel sweep runs on GPU only
    kernels = r["results"][0]["kernels"]  # on CPU: the ops' own CPU time, the matmuls among them
    assert 0 < len(kernels) <= 8 and all(k["us_per_step"] > 0 for k in kernels)
    assert any("mm" in k["name"] for k in kernels)
    kinds = r["results"][0]["kinds"]  # every op by kind, not only the listed ones
    assert kinds["matmul"] > 0 and sum(kinds.values()) >= sum(k["us_per_step"] for k in kernels) / 1e3 - 1e-3


def test_calibration_hooks_see_the_mlp_inputs_when_fused():
    # GPTQ / AWQ / LQER Hessians come from forward pre-hooks on mlp.fc and mlp.proj, which the fused path never calls
    from pgolf.quant.calib import collect_hessians

    batches = [torch.randint(0, 64, (2, 24), generator=torch.Generator().manual_seed(i)) for i in range(2)]
    plain_m, fused_m = model(mlp_act="leaky_relu2"), model(mlp_act="leaky_relu2", fused_mlp=True)
    want = collect_hessians(plain_m, batches).hessians
    got = collect_hessians(fused_m, batches).hessians
    assert got.keys() == want.keys() and "blocks.1.mlp.proj.weight" in got
    for k in want:
        torch.testing.assert_close(got[k], want[k], atol=1e-6, rtol=1e-5, msg=k)
    assert all(b.mlp.fused for b in fused_m.blocks)  # switched back on afterwards


def test_calibration_hooks_see_q_k_v_inputs_when_fused_qkv():
    from pgolf.quant.calib import collect_hessians

    batches = [torch.randint(0, 64, (2, 24), generator=torch.Generator().manual_seed(i)) for i in range(2)]
    plain_m, fused_m = model(), model(fused_qkv=True, fused_mlp=True)
    want, got = collect_hessians(plain_m, batches).hessians, collect_hessians(fused_m, batches).hessians
    assert got.keys() == want.keys() and "blocks.1.attn.c_v.weight" in got
    for k in want:
        torch.testing.assert_close(got[k], want[k], atol=1e-6, rtol=1e-5, msg=k)
    assert all(b.attn.fused_qkv and b.mlp.fused for b in fused_m.blocks)  # both switched back on
