"""Issue 5, fused softcapped cross-entropy (model/fused_ce.py): reference and custom-op paths against a float64
oracle, the op's autograd / fake / compile wiring on CPU, the model switch (off = baseline bit for bit, on = same
loss and gradients), and on GPU (``pytest -m gpu tests/test_fused_ce.py``) the Triton kernels themselves."""

from __future__ import annotations

import functools
import importlib.util

import pytest
import torch
import torch.nn.functional as F
from conftest import loss_and_grads
from conftest import perturbed_gpt as model

from pgolf.config import ModelConfig
from pgolf.model import fused_ce
from pgolf.model import gpt as gpt_mod
from pgolf.model.fused_ce import softcapped_cross_entropy
from pgolf.model.gpt import GPT

needs_triton = pytest.mark.skipif(not (torch.cuda.is_available() and importlib.util.find_spec("triton")),
                                  reason="needs CUDA and triton")


def oracle_losses(logits: torch.Tensor, targets: torch.Tensor, cap: float) -> torch.Tensor:
    """Per-row CE of cap * tanh(logits / cap) in float64 (differentiable)."""
    z = cap * torch.tanh(logits.double() / cap)
    return torch.logsumexp(z, dim=1) - z.gather(1, targets[:, None]).squeeze(1)


def oracle_grad(logits: torch.Tensor, targets: torch.Tensor, cap: float, g: torch.Tensor) -> torch.Tensor:
    leaf = logits.detach().double().requires_grad_()
    (oracle_losses(leaf, targets, cap) * g.double()).sum().backward()
    return leaf.grad


def sample(n: int, v: int, scale: float = 12.0, seed: int = 0, device: str = "cpu"):
    """Logits with a few saturated entries (|l| >> cap), targets covering both vocabulary edges."""
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, v, generator=gen) * scale
    logits[::7, ::5] *= 20.0
    targets = torch.randint(0, v, (n,), generator=gen)
    targets[:3] = torch.tensor([0, v - 1, 0])
    return logits.to(device), targets.to(device)


# --- CPU: the two torch paths ---

@pytest.mark.parametrize("cap", [30.0, 15.0])
def test_reference_matches_softcap_then_cross_entropy(cap):
    logits, y = sample(48, 97)
    a = logits.clone().requires_grad_()
    b = logits.clone().requires_grad_()
    loss = softcapped_cross_entropy(a, y, cap, impl="reference")
    ref = F.cross_entropy(cap * torch.tanh(b / cap), y)
    loss.backward()
    ref.backward()
    assert torch.equal(loss, ref) and torch.equal(a.grad, b.grad)
    assert abs(loss.item() - oracle_losses(logits, y, cap).mean().item()) < 1e-5
    torch.testing.assert_close(a.grad.double(), oracle_grad(logits, y, cap, torch.full((48,), 1 / 48)),
                               atol=1e-7, rtol=1e-5)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_custom_op_path_matches_reference(reduction):
    logits, y = sample(40, 131, seed=1)
    g = torch.randn(40) if reduction == "none" else torch.tensor(1.7)
    out = {}
    for impl in ("reference", "fused"):
        leaf = logits.clone().requires_grad_()
        loss = softcapped_cross_entropy(leaf, y, 30.0, reduction=reduction, impl=impl)
        loss.backward(g)
        out[impl] = (loss.detach(), leaf.grad)
    assert out["fused"][0].shape == out["reference"][0].shape
    torch.testing.assert_close(out["fused"][0], out["reference"][0], atol=2e-5, rtol=1e-6)
    torch.testing.assert_close(out["fused"][1], out["reference"][1], atol=1e-6, rtol=1e-5)
    assert out["fused"][1].abs().sum() > 0.1


def test_custom_op_bf16_logits_give_bf16_grad_and_fp32_loss():
    logits, y = sample(16, 64, seed=2)
    leaf = logits.bfloat16().requires_grad_()
    loss = softcapped_cross_entropy(leaf, y, 30.0, reduction="none", impl="fused")
    g = torch.randn(16)
    loss.backward(g)
    assert loss.dtype == torch.float32 and leaf.grad.dtype == torch.bfloat16
    ref = oracle_losses(leaf.detach(), y, 30.0)  # the oracle sees the same bf16-rounded inputs
    torch.testing.assert_close(loss.double(), ref, atol=1e-4, rtol=1e-6)
    torch.testing.assert_close(leaf.grad.double(), oracle_grad(leaf, y, 30.0, g), atol=1e-4, rtol=1e-2)


def test_lse_output_gradient_is_softmax():
    """The op's second output (lse) gets its own gradient: d lse / d z = softmax(z)."""
    logits, y = sample(12, 50, seed=3)
    leaf = logits.clone().requires_grad_()
    losses, lse = torch.ops.pgolf.softcapped_ce(leaf, y, 20.0)
    (losses.sum() + 0.5 * lse.sum()).backward()
    ref_leaf = logits.double().requires_grad_()
    z = 20.0 * torch.tanh(ref_leaf / 20.0)
    ref_lse = torch.logsumexp(z, dim=1)
    (oracle_losses(ref_leaf, y, 20.0).sum() + 0.5 * ref_lse.sum()).backward()
    torch.testing.assert_close(lse.double(), ref_lse.detach(), atol=1e-5, rtol=1e-6)
    torch.testing.assert_close(leaf.grad.double(), ref_leaf.grad, atol=1e-6, rtol=1e-5)


def test_custom_op_registration_opcheck():
    """Schema, fake tensor, autograd registration and AOT dispatch of pgolf::softcapped_ce (torch-math body)."""
    logits, y = sample(8, 33, seed=4)
    torch.library.opcheck(torch.ops.pgolf.softcapped_ce.default, (logits.requires_grad_(), y, 30.0))


def test_custom_op_traces_in_one_graph():
    """fullgraph=True would raise on a graph break; aot_eager runs the fake impl and the registered backward."""
    torch.manual_seed(0)
    lin = torch.nn.Linear(16, 45)
    x, y = torch.randn(24, 16), torch.randint(0, 45, (24,))

    def loss_fn(x, y):
        return softcapped_cross_entropy(lin(x), y, 15.0, impl="fused")

    eager = loss_fn(x, y)
    eager.backward()
    g_eager = lin.weight.grad.clone()
    lin.weight.grad = None
    compiled = torch.compile(loss_fn, fullgraph=True, backend="aot_eager")(x, y)
    compiled.backward()
    torch.testing.assert_close(compiled, eager, atol=1e-6, rtol=0)
    torch.testing.assert_close(lin.weight.grad, g_eager, atol=1e-6, rtol=1e-5)


def test_bad_arguments_raise():
    logits, y = sample(4, 10)
    for kw, match in (({"reduction": "avg"}, "reduction='avg'"), ({"impl": "cuda"}, "impl='cuda'"),
                      ({"cap": 0.0}, "cap must be positive")):
        with pytest.raises(ValueError, match=match):
            softcapped_cross_entropy(logits, y, **{"cap": 30.0, **kw})
    with pytest.raises(ValueError, match=r"\(4, 10\) and \(3,\)"):
        softcapped_cross_entropy(logits, y[:3], 30.0)
    assert not fused_ce.uses_triton(logits, 30.0)  # CPU tensors never take the kernel


# --- CPU: the model switch ---

def batch(seed: int = 5):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 64, (2, 24), generator=gen)
    x[0, 0], x[1, -1] = 0, 63
    return x, torch.roll(x, -1, dims=1)


def test_model_off_is_baseline_bit_for_bit():
    x, y = batch()
    base, off = model(), model(fused_ce=False)
    assert all(torch.equal(a, b) for a, b in zip(base.state_dict().values(), off.state_dict().values()))
    loss_b, grads_b = loss_and_grads(base, x, y)
    loss_o, grads_o = loss_and_grads(off, x, y)
    assert torch.equal(loss_o, loss_b)
    assert torch.equal(loss_o, F.cross_entropy(off.logits(x).flatten(0, 1), y.flatten()).detach())
    assert grads_o.keys() == grads_b.keys() and all(torch.equal(grads_o[k], grads_b[k]) for k in grads_b)


@pytest.mark.parametrize("impl", ["auto", "fused"])
def test_model_on_matches_off(monkeypatch, impl):
    """On CPU "auto" is the reference path; "fused" forces the custom op inside GPT.forward."""
    monkeypatch.setattr(gpt_mod, "softcapped_cross_entropy", functools.partial(softcapped_cross_entropy, impl=impl))
    x, y = batch()
    loss_off, grads_off = loss_and_grads(model(), x, y)
    on = model(fused_ce=True)
    loss_on, grads_on = loss_and_grads(on, x, y)
    assert 3.0 < loss_off.item() < 5.0  # near ln 64: a real loss, not a degenerate one
    torch.testing.assert_close(loss_on, loss_off, atol=1e-6, rtol=0)
    assert grads_on.keys() == grads_off.keys() and len(grads_on) > 5
    for k in grads_off:
        torch.testing.assert_close(grads_on[k], grads_off[k], atol=1e-6, rtol=1e-4, msg=k)
    torch.testing.assert_close(on.token_losses(x, y), model().token_losses(x, y), atol=0, rtol=0)  # eval unchanged


# --- GPU: the Triton kernels (pytest -m gpu) ---

def _kernel_vs_oracle(n, v, dtype, cap, seed=0, logits=None, targets=None):
    if logits is None:
        logits, targets = sample(n, v, seed=seed, device="cuda")
        logits = logits.to(dtype)
    g = torch.randn(logits.shape[0], device="cuda")
    leaf = logits.detach().requires_grad_()
    assert fused_ce.uses_triton(leaf, cap)
    losses = softcapped_cross_entropy(leaf, targets, cap, reduction="none")
    losses.backward(g)
    ref = oracle_losses(logits, targets, cap)
    return losses, leaf.grad, ref, oracle_grad(logits, targets, cap, g)


@pytest.mark.gpu
@needs_triton
@pytest.mark.parametrize("v", [1024, 8192])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_triton_kernel_matches_oracle(v, dtype):
    """Tolerances: the loss is fp32 on both dtypes (the oracle sees the same rounded inputs), |err| <= 2e-4 nats.
    The gradient is upstream g ~ N(0, 1) times softmax terms <= 1; fp32 to 1e-5 abs, bf16 to one bf16 ulp (2^-7
    relative)."""
    losses, grad, ref, ref_grad = _kernel_vs_oracle(4096, v, dtype, 30.0)
    assert losses.dtype == torch.float32 and grad.dtype == dtype and grad.shape == (4096, v)
    torch.testing.assert_close(losses.double(), ref, atol=2e-4, rtol=0)
    atol, rtol = (1e-5, 1e-4) if dtype == torch.float32 else (1e-5, 2 ** -7)
    torch.testing.assert_close(grad.double(), ref_grad, atol=atol, rtol=rtol)


@pytest.mark.gpu
@needs_triton
@pytest.mark.parametrize("cap", [15.0, 40.0])
def test_triton_kernel_edges_odd_shapes_and_caps(cap):
    """V not a multiple of the block (masked tail), odd N, targets only at the vocabulary edges 0 and V-1."""
    v = 1000
    logits, _ = sample(257, v, seed=7, device="cuda")
    targets = torch.where(torch.arange(257, device="cuda") % 2 == 0, 0, v - 1)
    losses, grad, ref, ref_grad = _kernel_vs_oracle(257, v, torch.float32, cap, logits=logits, targets=targets)
    torch.testing.assert_close(losses.double(), ref, atol=2e-4, rtol=0)
    torch.testing.assert_close(grad.double(), ref_grad, atol=1e-5, rtol=1e-4)
    assert torch.isfinite(losses).all() and (grad[:, 0].abs().sum() > 0)


@pytest.mark.gpu
@needs_triton
def test_triton_kernel_strided_logits_and_mean():
    """A column slice of a wider matrix (row stride != V) goes in without a copy; mean equals the oracle mean."""
    wide, _ = sample(512, 1088, seed=8, device="cuda")
    logits = wide[:, :1024]
    targets = torch.randint(0, 1024, (512,), device="cuda")
    assert not logits.is_contiguous()
    losses, grad, ref, ref_grad = _kernel_vs_oracle(512, 1024, torch.float32, 30.0, logits=logits, targets=targets)
    torch.testing.assert_close(losses.double(), ref, atol=2e-4, rtol=0)
    torch.testing.assert_close(grad.double(), ref_grad, atol=1e-5, rtol=1e-4)
    mean = softcapped_cross_entropy(logits, targets, 30.0)
    assert abs(mean.item() - ref.mean().item()) < 1e-4


@pytest.mark.gpu
@needs_triton
def test_triton_lse_gradient_and_opcheck():
    logits, y = sample(64, 777, seed=9, device="cuda")
    leaf = logits.clone().requires_grad_()
    losses, lse = torch.ops.pgolf.softcapped_ce(leaf, y, 30.0)
    (losses.sum() + 0.5 * lse.sum()).backward()
    ref_leaf = logits.double().requires_grad_()
    ref_lse = torch.logsumexp(30.0 * torch.tanh(ref_leaf / 30.0), dim=1)
    (oracle_losses(ref_leaf, y, 30.0).sum() + 0.5 * ref_lse.sum()).backward()
    torch.testing.assert_close(lse.double(), ref_lse.detach(), atol=1e-4, rtol=0)
    torch.testing.assert_close(leaf.grad.double(), ref_leaf.grad, atol=1e-5, rtol=1e-4)
    torch.library.opcheck(torch.ops.pgolf.softcapped_ce.default, (logits.requires_grad_(), y, 30.0))


@pytest.mark.gpu
@needs_triton
def test_triton_under_torch_compile_fullgraph():
    """A small head module compiled with inductor, fullgraph, under bf16 autocast, against eager fp32 math."""

    class Head(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(64, 1024, bias=False)

        def forward(self, h, y):
            return softcapped_cross_entropy(self.lin(h), y, 30.0)

    torch.manual_seed(0)
    head = Head().cuda()
    h = torch.randn(2048, 64, device="cuda")
    y = torch.randint(0, 1024, (2048,), device="cuda")
    y[:2] = torch.tensor([0, 1023], device="cuda")
    compiled = torch.compile(head, fullgraph=True)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss = compiled(h, y)
        loss.backward()
        g_compiled = head.lin.weight.grad.clone()
        head.lin.weight.grad = None
        raw = head.lin(h)  # the same bf16 matmul, then the reference path in fp32
    ref = softcapped_cross_entropy(raw, y, 30.0, impl="reference")
    ref.backward()
    assert abs(loss.item() - ref.item()) < 1e-3
    cos = F.cosine_similarity(g_compiled.flatten(), head.lin.weight.grad.flatten(), dim=0)
    assert cos > 0.999, cos


@pytest.mark.gpu
@needs_triton
def test_gpt_fused_ce_close_to_eager_head_on_gpu():
    """Under autocast the eager head takes tanh in bf16 and the fused one in fp32: close, not equal. The fused model
    also compiles with fullgraph=True, as the training loop does."""
    from pgolf.model.gpt import cast_for_training

    x = torch.randint(0, 1024, (4, 256), device="cuda")
    y = torch.roll(x, -1, dims=1)
    out = {}
    for on in (False, True):
        torch.manual_seed(0)
        m = cast_for_training(GPT(ModelConfig(num_layers=2, fused_ce=on)), torch.device("cuda"))
        with torch.no_grad():
            for p in m.parameters():
                p.add_(0.01 * torch.randn_like(p))
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = m(x, y)
            compiled = torch.compile(m, dynamic=False, fullgraph=True)(x, y) if on else loss
        loss.backward()
        out[on] = (loss.item(), m.tok_emb.weight.grad.float().flatten())
        assert abs(compiled.item() - loss.item()) < 2e-2
    assert abs(out[True][0] - out[False][0]) < 2e-2
    assert F.cosine_similarity(out[True][1], out[False][1], dim=0) > 0.99
