"""model.attn_backend='fa4': FlashAttention-4 behind two torch custom ops (model/attn_fa4.py).

On CPU, FA4's two entry points are replaced by a reference written from the attention formulas (forward with
log-sum-exp; the backward by hand), so the ops' wiring (argument order, saved tensors, GQA shapes, autograd, the
compiled graph) is checked against torch's own attention. The kernels themselves: GPU tests at the end.
"""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from pgolf.config import ModelConfig
from pgolf.model import attn_fa4
from pgolf.model.attn_backends import (
    _attend_varlen,
    attend,
    needs_cu_seqlens,
    padded_cu_seqlens,
)
from pgolf.model.gpt import GPT


def _probs(q: Tensor, k: Tensor, cu: Tensor) -> tuple[Tensor, Tensor]:
    """Scores (H, N, N) masked to causal-within-segment, and their log-sum-exp (H, N); q (N, H, D), k (N, Hkv, D)."""
    n, h, d = q.shape
    k = k.repeat_interleave(h // k.size(1), dim=1)
    seg = torch.searchsorted(cu.long(), torch.arange(n), right=True)
    pos = torch.arange(n)
    allowed = (seg[:, None] == seg[None, :]) & (pos[None, :] <= pos[:, None])
    s = torch.einsum("qhd,khd->hqk", q.float(), k.float()) / d ** 0.5
    s = s.masked_fill(~allowed, float("-inf"))
    return s, torch.logsumexp(s, dim=-1)


class ReferenceFA4:
    """FA4's `_flash_attn_fwd` / `_flash_attn_bwd` as plain torch (fp32 math), with the keywords the ops pass."""

    calls: tuple[str, ...] = ()

    @classmethod
    def _flash_attn_fwd(cls, q, k, v, *, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, causal, return_lse):
        assert causal and return_lse and cu_seqlens_q is cu_seqlens_k and max_seqlen_q == max_seqlen_k
        cls.calls += ("fwd",)
        s, lse = _probs(q, k, cu_seqlens_q)
        vv = v.repeat_interleave(q.size(1) // v.size(1), dim=1).float()
        out = torch.einsum("hqk,khd->qhd", torch.exp(s - lse[..., None]), vv)
        return out.to(q.dtype), lse, None, None, None

    @classmethod
    def _flash_attn_bwd(cls, q, k, v, out, dout, lse, *, causal, cu_seqlens_q, cu_seqlens_k, max_seqlen_q,
                        max_seqlen_k):
        assert causal and dout.is_contiguous()
        cls.calls += ("bwd",)
        n, h, d = q.shape
        g = h // k.size(1)
        s, _ = _probs(q, k, cu_seqlens_q)
        p = torch.exp(s - lse[..., None])  # (H, N, N), from the saved lse
        do, vv = dout.float(), v.repeat_interleave(g, dim=1).float()
        kk = k.repeat_interleave(g, dim=1).float()
        dv = torch.einsum("hqk,qhd->khd", p, do)
        dp = torch.einsum("qhd,khd->hqk", do, vv)
        ds = p * (dp - (do * out.float()).sum(-1).T[..., None])
        dq = torch.einsum("hqk,khd->qhd", ds, kk) / d ** 0.5
        dk = torch.einsum("hqk,qhd->khd", ds, q.float()) / d ** 0.5
        fold = lambda t: t.view(n, k.size(1), g, d).sum(2)  # GQA: sum over each K/V head's queries
        return dq.to(q.dtype), fold(dk).to(k.dtype), fold(dv).to(v.dtype)


@pytest.fixture
def reference_fa4(monkeypatch):
    ReferenceFA4.calls = ()
    monkeypatch.setattr(attn_fa4, "require_fa4", lambda: ReferenceFA4)
    return ReferenceFA4


def qkv(B=2, H=4, Hkv=2, T=12, D=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    mk = lambda h: torch.randn(B, T, h, D, generator=g).transpose(1, 2).requires_grad_()
    return mk(H), mk(Hkv), mk(Hkv)


def ids_with_docs(B=2, T=12):
    x = torch.full((B, T), 5)
    x[0, [0, 4, 9]] = 1
    x[1, [3]] = 1
    return x


@pytest.mark.parametrize("Hkv", [4, 2, 1])
def test_ops_match_torch_attention_forward_and_backward(reference_fa4, Hkv):
    q, k, v = qkv(Hkv=Hkv)
    cu = padded_cu_seqlens(ids_with_docs(), bos_id=1, doc_isolated=True, size=16)  # padded: empty segments too
    got = attn_fa4.attend_fa4(q, k, v, cu)
    want = _attend_varlen(q, k, v, cu)  # varlen's dense-mask reference through SDPA
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    w = torch.randn_like(want)
    g_got = torch.autograd.grad((got * w).sum(), (q, k, v))
    g_want = torch.autograd.grad((want * w).sum(), (q, k, v))
    for a, b, name in zip(g_got, g_want, "qkv"):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5, msg=f"d{name}")
    assert reference_fa4.calls == ("fwd", "bwd")


def test_ops_trace_into_one_compiled_graph(reference_fa4):
    q, k, v = qkv()
    cu = padded_cu_seqlens(ids_with_docs(), bos_id=1, doc_isolated=True, size=16)
    compiled = torch.compile(attn_fa4.attend_fa4, backend="aot_eager", fullgraph=True)  # fails on a graph break
    torch._dynamo.reset()
    out = compiled(q, k, v, cu)
    out.sum().backward()
    assert q.grad is not None and k.grad.shape == k.shape and reference_fa4.calls == ("fwd", "bwd")
    torch.testing.assert_close(out, _attend_varlen(q, k, v, cu), atol=1e-5, rtol=1e-5)


def test_fake_kernels_give_the_real_shapes():
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        q, k = torch.empty(96, 8, 64, dtype=torch.bfloat16), torch.empty(96, 4, 64, dtype=torch.bfloat16)
        cu = torch.empty(9, dtype=torch.int32)
        out, lse = torch.ops.pgolf.fa4_varlen_fwd(q, k, k, cu, 48)
        dq, dk, dv = torch.ops.pgolf.fa4_varlen_bwd(out, q, k, k, out, lse, cu, 48)
    assert out.shape == q.shape and out.dtype == torch.bfloat16
    assert lse.shape == (8, 96) and lse.dtype == torch.float32  # FA4's varlen lse layout (H, total)
    assert (dq.shape, dk.shape, dv.shape) == (q.shape, k.shape, k.shape)
    with FakeTensorMode():  # strided inputs still give contiguous outputs, as FA4 allocates them
        q = torch.empty(8, 96, 64, dtype=torch.bfloat16).transpose(0, 1)
        k = torch.empty(4, 96, 64, dtype=torch.bfloat16).transpose(0, 1)
        cu = torch.empty(9, dtype=torch.int32)
        out, lse = torch.ops.pgolf.fa4_varlen_fwd(q, k, k, cu, 48)
        grads = torch.ops.pgolf.fa4_varlen_bwd(out, q, k, k, out, lse, cu, 48)
    assert not q.is_contiguous() and all(t.is_contiguous() for t in (out, lse, *grads))


def test_missing_package_says_what_to_install(monkeypatch):
    monkeypatch.setattr(attn_fa4, "FA4_MODULE", "pgolf_no_such_module.interface")
    with pytest.raises(ImportError, match=r"pip install flash-attn-4 .*use model.attn_backend='varlen'"):
        attn_fa4.require_fa4()


def test_fa4_model_on_cpu_is_the_varlen_model():
    kw = {"vocab_size": 64, "num_layers": 2, "model_dim": 32, "num_heads": 4, "num_kv_heads": 2, "doc_isolated": True}
    torch.manual_seed(0)
    fa4 = GPT(ModelConfig(attn_backend="fa4", **kw))
    torch.manual_seed(0)
    varlen = GPT(ModelConfig(attn_backend="varlen", **kw))
    x = ids_with_docs()
    assert needs_cu_seqlens(fa4.cfg) and needs_cu_seqlens(ModelConfig(attn_backend="fa4"))  # isolated or not
    assert torch.equal(fa4.logits(x, **fa4.attn_inputs(x)), varlen.logits(x, **varlen.attn_inputs(x)))


def test_attend_dispatches_cuda_tensors_to_the_ops(reference_fa4, monkeypatch):
    seen = []
    monkeypatch.setattr("pgolf.model.attn_backends.attend_fa4", lambda *a: seen.append(a) or a[0])
    q, k, v = qkv()
    cu = padded_cu_seqlens(ids_with_docs(), bos_id=1, doc_isolated=True)
    attend(q, k, v, cu, "fa4")  # CPU: the reference path
    assert not seen

    class CudaLike(Tensor):  # is_cuda only: attend must route it to attend_fa4
        @property
        def is_cuda(self):
            return True

    attend(q.detach().as_subclass(CudaLike), k, v, cu, "fa4")
    assert len(seen) == 1


# --- the kernels, on a Hopper or newer GPU with flash-attn-4 installed ---

def _fa4_gpu() -> bool:
    if not torch.cuda.is_available() or torch.cuda.get_device_capability()[0] < 9:
        return False
    try:
        attn_fa4.require_fa4()
    except ImportError:
        return False
    return True


@pytest.mark.gpu
@pytest.mark.parametrize("compiled", [False, True])
def test_fa4_kernels_match_torch_varlen_kernel(compiled):
    if not _fa4_gpu():
        pytest.skip("needs a Hopper/Blackwell GPU and flash-attn-4")
    dev = torch.device("cuda")
    B, H, Hkv, T, D = 4, 8, 4, 2048, 64
    g = torch.Generator(device=dev).manual_seed(0)
    mk = lambda h: torch.randn(B, T, h, D, device=dev, dtype=torch.bfloat16, generator=g).transpose(1, 2)
    q, k, v = (t.requires_grad_() for t in (mk(H), mk(Hkv), mk(Hkv)))
    ids = torch.randint(2, 100, (B, T), generator=torch.Generator().manual_seed(1))
    ids[torch.rand(B, T, generator=torch.Generator().manual_seed(2)) < 0.003] = 1
    cu = padded_cu_seqlens(ids, bos_id=1, doc_isolated=True, size=128).to(dev)
    fn = torch.compile(attn_fa4.attend_fa4, fullgraph=True) if compiled else attn_fa4.attend_fa4
    got = fn(q, k, v, cu)
    want = attend(q, k, v, cu, "varlen")
    w = torch.randn_like(want)
    g_got = torch.autograd.grad((got.float() * w).sum(), (q, k, v))
    g_want = torch.autograd.grad((want.float() * w).sum(), (q, k, v))
    torch.testing.assert_close(got, want, atol=2e-2, rtol=2e-2)
    for a, b, name in zip(g_got, g_want, "qkv"):
        torch.testing.assert_close(a, b, atol=5e-2, rtol=5e-2, msg=f"d{name}")
