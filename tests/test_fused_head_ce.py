"""model.fused_head_ce (model/fused_head_ce.py): the head GEMM + softcapped CE op whose forward computes the
gradients. CPU: the torch body against a float64 oracle, the upstream scale, opcheck, tracing, the model switch.
GPU (``pytest -m gpu tests/test_fused_head_ce.py``): the one-pass Triton kernel against the two-kernel fused_ce."""

from __future__ import annotations

import importlib.util

import pytest
import torch
import torch.nn.functional as F
from conftest import loss_and_grads, needs_triton_interpreter, run_in_triton_interpreter
from conftest import perturbed_gpt as model

from pgolf.config import ModelConfig
from pgolf.model.fused_head_ce import head_softcapped_ce
from pgolf.model.gpt import GPT

needs_triton = pytest.mark.skipif(not (torch.cuda.is_available() and importlib.util.find_spec("triton")),
                                  reason="needs CUDA and triton")


def sample(n: int, d: int, v: int, seed: int = 0, device: str = "cpu", dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    h = torch.randn(n, d, generator=gen) * 2.0
    w = torch.randn(v, d, generator=gen)
    w[::5] *= 8.0  # some logits far past the cap
    y = torch.randint(0, v, (n,), generator=gen)
    y[:2] = torch.tensor([0, v - 1])
    return h.to(device, dtype), w.to(device, dtype), y.to(device)


def oracle(h, w, y, cap: float, scale: float = 1.0):
    """float64 loss and the gradients of scale * loss through plain autograd."""
    hd = h.detach().double().requires_grad_()
    wd = w.detach().double().requires_grad_()
    z = cap * torch.tanh(hd @ wd.t() / cap)
    loss = F.cross_entropy(z, y)
    (scale * loss).backward()
    return loss.detach(), hd.grad, wd.grad


def test_bf16_gradients_take_the_upstream_scale_in_fp32():
    h, w, y = sample(16, 8, 40, seed=2, dtype=torch.bfloat16)
    hl = h.clone().requires_grad_()
    loss = head_softcapped_ce(hl, w, y, 30.0)
    (loss / 6).backward()  # 1/6 in bf16 is 0.16699: 0.2% off
    _, dh, _ = torch.ops.pgolf.head_softcapped_ce(h, w, y, 30.0)
    assert hl.grad.dtype == torch.bfloat16
    assert torch.equal(hl.grad, (dh.float() / 6).to(torch.bfloat16))


@pytest.mark.parametrize("cap, scale", [(30.0, 1.0), (15.0, 0.25)])
def test_loss_and_gradients_match_the_oracle(cap, scale):
    h, w, y = sample(40, 16, 97)
    hl, wl = h.clone().requires_grad_(), w.clone().requires_grad_()
    loss = head_softcapped_ce(hl, wl, y, cap)
    (scale * loss).backward()  # the backward scales the saved gradients by the upstream 0.25 (as loss / accum)
    ref, gh, gw = oracle(h, w, y, cap, scale)
    assert loss.dtype == torch.float32 and abs(loss.item() - ref.item()) < 1e-5
    torch.testing.assert_close(hl.grad.double(), gh, atol=1e-6, rtol=1e-4)
    torch.testing.assert_close(wl.grad.double(), gw, atol=1e-6, rtol=1e-4)


def test_opcheck_and_one_graph_under_compile():
    h, w, y = sample(8, 12, 33, seed=3)
    torch.library.opcheck(torch.ops.pgolf.head_softcapped_ce.default, (h.requires_grad_(), w, y, 30.0))
    lin = torch.nn.Linear(12, 12)

    def loss_fn(x, weight):
        return head_softcapped_ce(lin(x), weight, y, 20.0)

    wl = w.detach().clone().requires_grad_()
    eager = loss_fn(h.detach(), wl)
    eager.backward()
    g_eager, gl_eager = wl.grad.clone(), lin.weight.grad.clone()
    wl.grad, lin.weight.grad = None, None
    compiled = torch.compile(loss_fn, fullgraph=True, backend="aot_eager")(h.detach(), wl)  # raises on a break
    compiled.backward()
    torch.testing.assert_close(compiled, eager, atol=1e-6, rtol=0)
    torch.testing.assert_close(wl.grad, g_eager, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(lin.weight.grad, gl_eager, atol=1e-6, rtol=1e-5)


def test_bad_arguments_name_what_is_wrong():
    h, w, y = sample(4, 8, 10)
    with pytest.raises(ValueError, match=r"\(4, 8\), \(10, 8\) and \(3,\)"):
        head_softcapped_ce(h, w, y[:3], 30.0)
    with pytest.raises(ValueError, match="h is torch.float32 but weight is torch.float64"):
        head_softcapped_ce(h, w.double(), y, 30.0)
    with pytest.raises(ValueError, match="cap must be positive"):
        head_softcapped_ce(h, w, y, 0.0)


# --- the model switch ---

def batch():
    x = torch.randint(0, 64, (2, 24), generator=torch.Generator().manual_seed(5))
    return x, torch.roll(x, -1, dims=1)


def test_off_is_the_baseline_bit_for_bit():
    x, y = batch()
    loss_b, grads_b = loss_and_grads(model(), x, y)
    loss_o, grads_o = loss_and_grads(model(fused_head_ce=False), x, y)
    assert torch.equal(loss_o, loss_b) and grads_o.keys() == grads_b.keys()
    assert all(torch.equal(grads_o[k], grads_b[k]) for k in grads_b)


@pytest.mark.parametrize("tied", [True, False])
def test_on_matches_off_tied_and_untied(tied):
    x, y = batch()
    loss_off, grads_off = loss_and_grads(model(tie_embeddings=tied), x, y)
    loss_on, grads_on = loss_and_grads(model(tie_embeddings=tied, fused_head_ce=True), x, y)
    assert abs(loss_on.item() - loss_off.item()) < 1e-5
    assert grads_on.keys() == grads_off.keys()
    for k, g in grads_off.items():
        torch.testing.assert_close(grads_on[k], g, atol=1e-6, rtol=1e-4, msg=k)


# --- CPU, where triton is installed: the one-pass kernel in Triton's interpreter ---

INTERPRETED = """
import torch, torch.nn.functional as F
from pgolf.model import fused_ce_triton as k
torch.manual_seed(0)
for n, v, cap in ((6, 300, 30.0), (5, 1024, 15.0)):
    x = torch.randn(n, v) * 20
    y = torch.randint(0, v, (n,))
    y[0], y[1] = 0, v - 1
    for dtype, tol in ((torch.float32, 1e-6), (torch.bfloat16, 4e-3)):
        grad, losses = x.to(dtype).clone(), torch.empty(n)
        leaf = grad.float().clone().requires_grad_()
        F.cross_entropy(cap * torch.tanh(leaf / cap), y, reduction="none").mean().backward()
        want = F.cross_entropy(cap * torch.tanh(leaf.detach() / cap), y, reduction="none")
        k.launch_loss_grad(grad, y, losses, cap, 1.0 / n)  # the gradient overwrites the logits
        torch.testing.assert_close(losses, want, atol=1e-5, rtol=1e-5)
        assert grad.dtype == dtype and (grad.float() - leaf.grad).abs().max() < tol
try:
    k.launch_loss_grad(torch.zeros(2, 16385), torch.zeros(2, dtype=torch.long), torch.empty(2), 30.0, 1.0)
except ValueError as e:
    assert "16385 > 16384" in str(e)
else:
    raise AssertionError("a row over the tile was accepted")
print("ok")
"""


@needs_triton_interpreter
def test_triton_kernel_in_the_interpreter():
    run_in_triton_interpreter(INTERPRETED)


def test_vocab_past_the_kernels_tile_is_refused():
    with pytest.raises(ValueError, match="model.vocab_size=20000 > 16384; use model.fused_ce"):
        ModelConfig(vocab_size=20000, fused_head_ce=True)


# --- GPU: the Triton kernel ---

@pytest.mark.gpu
@needs_triton
@pytest.mark.parametrize("v", [8192, 1000])
def test_triton_kernel_matches_the_oracle_in_bf16(v):
    h, w, y = sample(512, 64, v, device="cuda", dtype=torch.bfloat16)
    hl, wl = h.clone().requires_grad_(), w.clone().requires_grad_()
    loss = head_softcapped_ce(hl, wl, y, 30.0)
    (0.5 * loss).backward()
    ref, gh, gw = oracle(h.float(), w.float(), y, 30.0, 0.5)  # bf16 inputs, exact math after them
    assert abs(loss.item() - ref.item()) < 2e-2 * max(1.0, ref.item())
    for got, want in ((hl.grad, gh), (wl.grad, gw)):
        assert got.dtype == torch.bfloat16
        assert F.cosine_similarity(got.double().flatten(), want.flatten(), dim=0) > 0.999


@pytest.mark.gpu
@needs_triton
def test_gpt_on_matches_fused_ce_on_gpu_compiled():
    """pr1855's head as the loop runs it (bf16 autocast, fullgraph compile): fused_head_ce against fused_ce."""
    from pgolf.model.gpt import cast_for_training

    x = torch.randint(0, 1024, (4, 256), device="cuda")
    y = torch.roll(x, -1, dims=1)
    out = {}
    for head in (False, True):
        torch.manual_seed(0)
        m = cast_for_training(GPT(ModelConfig(num_layers=2, fused_ce=True, fused_head_ce=head)),
                              torch.device("cuda"))
        with torch.no_grad():
            for p in m.parameters():
                p.add_(0.01 * torch.randn_like(p))
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = torch.compile(m, dynamic=False, fullgraph=True)(x, y)
        loss.backward()
        out[head] = (loss.item(), m.tok_emb.weight.grad.float().flatten(), m.blocks[0].attn.c_q.weight.grad.flatten())
    assert abs(out[True][0] - out[False][0]) < 1e-3
    for i in (1, 2):
        assert F.cosine_similarity(out[True][i], out[False][i], dim=0) > 0.999
