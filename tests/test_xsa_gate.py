"""model.fused_xsa_gate (model/xsa_gate.py): XSA and the output gate as one op with a one-pass backward.
float64 gradcheck with and without gate / coef, the same values and gradients as the composed ops
(attention.xsa_project_out, then the gate), the model switch for each gate kind, fullgraph compile; on a GPU the
Triton kernels against the torch bodies and the compiled bf16 model against the plain one."""

from __future__ import annotations

import itertools

import pytest
import torch
from conftest import (
    assert_compiled_bf16_agree,
    assert_same_loss_and_grads,
    assert_triton_matches_torch_body,
    needs_triton_interpreter,
    run_in_triton_interpreter,
    switch_pair,
    token_batch,
)

from pgolf.config import ModelConfig
from pgolf.model.attention import xsa_project_out
from pgolf.model.xsa_gate import xsa_gate

FLAGS = list(itertools.product([False, True], [False, True]))  # (gate, coef)


def sample(gate: bool, coef: bool, dtype=torch.float64, shape=(2, 5, 4, 2, 8), seed=0, device="cpu"):
    """y (B, T, H, D) as attention's transposed view, v (B, T, Hkv, D) as a slice of a fused qkv output (one
    token's v exactly zero, where v^ is clamped), gate (B, T, H) in (0, 1), coef (H,)."""
    B, T, H, Hkv, D = shape
    g = torch.Generator().manual_seed(seed)
    y = torch.randn(B, H, T, D, generator=g, dtype=dtype).transpose(1, 2)
    v = torch.randn(B, T, 3 * Hkv, D, generator=g, dtype=dtype)[:, :, Hkv:2 * Hkv]
    v[0, 1, 0] = 0.0
    gt = torch.rand(B, T, H, generator=g, dtype=dtype) if gate else None
    ct = torch.randn(H, generator=g, dtype=dtype) if coef else None
    return [t if t is None else t.to(device).requires_grad_() for t in (y, v, gt, ct)]


def composed(y, v, gate, coef):
    out = xsa_project_out(y.transpose(1, 2), v.transpose(1, 2), coef)
    if gate is not None:
        out = out * gate.transpose(1, 2)[..., None]
    return out.transpose(1, 2)


@pytest.mark.parametrize("gate,coef", FLAGS)
def test_gradcheck(gate, coef):
    y, v, g, c = sample(gate, coef)
    v.data[0, 1, 0] = 0.3  # gradcheck's finite differences straddle the clamp at |v| = 0: check it elsewhere
    args = [t for t in (y, v, g, c) if t is not None]

    def fn(*a):
        it = iter(a)
        return xsa_gate(next(it), next(it), next(it) if gate else None, next(it) if coef else None)

    assert torch.autograd.gradcheck(fn, args)


@pytest.mark.parametrize("gate,coef", FLAGS)
def test_matches_composed_ops(gate, coef):
    y, v, g, c = sample(gate, coef, dtype=torch.float32, seed=1)
    inputs = [t for t in (y, v, g, c) if t is not None]
    out = xsa_gate(y, v, g, c)
    ref = composed(y, v, g, c)
    assert out.shape == y.shape and out.is_contiguous()
    torch.testing.assert_close(out, ref, atol=1e-6, rtol=1e-5)
    dout = torch.randn(out.shape, generator=torch.Generator().manual_seed(2))
    for a, b in zip(torch.autograd.grad(out, inputs, dout), torch.autograd.grad(ref, inputs, dout)):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_xsa_removes_the_value_direction():
    """Without gate and coef each head's output is orthogonal to its own KV head's value (a wrong group mapping
    or a dropped term fails this)."""
    y, v, _, _ = sample(False, False, dtype=torch.float32, shape=(1, 6, 6, 3, 16), seed=3)
    out = xsa_gate(y, v).detach().reshape(1, 6, 3, 2, 16)
    dots = (out * v.detach().unsqueeze(3)).sum(-1)
    assert dots.abs().max() < 1e-5
    assert (out - y.detach().reshape(1, 6, 3, 2, 16)).abs().max() > 0.1


@pytest.mark.parametrize("gate_kw", [{}, {"sparse_attn_gate_width": 4, "sparse_attn_gate_scale": 0.5},
                                     {"attn_out_gate_width": 4}, {"gated_attn": True}])
@pytest.mark.parametrize("xsa_gated", [False, True])
def test_model_switch_same_loss_and_gradients(gate_kw, xsa_gated):
    base, fused = switch_pair({"fused_xsa_gate": True}, rope_dims=4, xsa_layers="last:1", xsa_gated=xsa_gated,
                              **gate_kw)
    assert [b.attn.fused_xsa_gate for b in fused.blocks] == [False, True]
    assert not any(b.attn.fused_xsa_gate for b in base.blocks)
    assert_same_loss_and_grads(base, fused, *token_batch())


def test_fullgraph_compile_matches_eager():
    y, v, g, c = sample(True, True, dtype=torch.float32, seed=4)
    fn = torch.compile(xsa_gate, fullgraph=True, backend="aot_eager")
    out = fn(y, v, g, c)
    torch.testing.assert_close(out, xsa_gate(y, v, g, c))
    got = torch.autograd.grad(out.square().sum(), (y, v, g, c))
    want = torch.autograd.grad(composed(y, v, g, c).square().sum(), (y, v, g, c))
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_default_off_and_same_parameters():
    assert ModelConfig().fused_xsa_gate is False
    base, fused = switch_pair({"fused_xsa_gate": True}, xsa_layers="all", sparse_attn_gate_width=4)
    assert [n for n, _ in base.named_parameters()] == [n for n, _ in fused.named_parameters()]


def test_needs_xsa_layers():
    with pytest.raises(ValueError, match="fused_xsa_gate=True needs XSA layers"):
        ModelConfig(fused_xsa_gate=True)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("gate,coef", FLAGS)
def test_gpu_triton_matches_torch_body(gate, coef, dtype):
    from pgolf.model import xsa_gate as op

    y, v, g, c = (t if t is None else t.detach().to(dtype)
                  for t in sample(gate, coef, torch.float32, shape=(2, 96, 8, 4, 64), seed=6, device="cuda"))
    assert op.uses_triton(y)
    dout = torch.randn(y.shape, device="cuda", dtype=dtype)
    assert_triton_matches_torch_body(lambda: (op._xsa_gate(y, v, g, c), *op._xsa_gate_bwd(dout, y, v, g, c)),
                                     ("out", "dy", "dv", "dgate", "dcoef"), dtype)


@pytest.mark.gpu
def test_gpu_compiled_bf16_model_matches_plain():
    base, fused = switch_pair({"fused_xsa_gate": True}, rope_dims=4, xsa_layers="all", xsa_gated=True,
                              sparse_attn_gate_width=4)
    assert_compiled_bf16_agree(base.cuda(), fused.cuda(), *(t.cuda() for t in token_batch(5, (4, 64))))


@pytest.mark.parametrize("gate,coef", FLAGS)
def test_opcheck_fake_and_autograd_registration(gate, coef):
    """torch.library.opcheck: schema, fake tensors (shapes and strides as the real op's), autograd registration."""
    y, v, g, c = sample(gate, coef, dtype=torch.float32, seed=7)
    torch.library.opcheck(torch.ops.pgolf.xsa_gate.default, (y, v, g, c))
    dout = torch.randn(y.shape)
    torch.library.opcheck(torch.ops.pgolf.xsa_gate_bwd.default, tuple(t if t is None else t.detach()
                                                                      for t in (dout, y, v, g, c)))


# --- CPU, where triton is installed: the kernels' indexing and math in Triton's interpreter ---

INTERPRETED = """
import torch
from pgolf.model import xsa_gate as op, xsa_gate_triton as k
torch.manual_seed(0)
B, T, H, Hkv, D = 2, 5, 6, 2, 16  # groups of 3; 20 rows, so the last program of 32 rows is partly masked
for gate in (False, True):
    for coef in (False, True):
        y = torch.randn(B, H, T, D).transpose(1, 2)  # attention's transposed view
        v = torch.randn(B, T, 3 * Hkv, D)[:, :, Hkv:2 * Hkv]  # a slice of a fused qkv output
        v[0, 1, 1] = 0.0
        g = torch.rand(B, T, H) if gate else None
        c = torch.randn(H) if coef else None
        dout = torch.randn(B, T, H, 2 * D)[..., ::2]  # a head dimension of stride 2: copied, not misread
        torch.testing.assert_close(k.forward(y, v, g, c), op._xsa_gate(y, v, g, c), atol=1e-5, rtol=1e-5)
        for a, b in zip(k.backward(dout, y, v, g, c), op._xsa_gate_bwd(dout, y, v, g, c)):
            assert a.shape == b.shape and a.dtype == b.dtype
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
print("ok")
"""


@needs_triton_interpreter
def test_triton_kernels_in_the_interpreter():
    run_in_triton_interpreter(INTERPRETED)


def test_rowop_bench_writes_json_on_cpu(tmp_path):
    """benchmarks/rowop_bench.py end to end on CPU (torch bodies; the sweep reports that it needs CUDA)."""
    import json

    import rowop_bench

    out = tmp_path / "rowop.json"
    rc = rowop_bench.main(["--device", "cpu", "--dtype", "fp32", "--tokens", "128", "--seq-len", "64", "--warmup",
                           "1", "--iters", "2", "--variants", "xsa_op", "k_op", "--sweep", "--out", str(out)])
    r = json.loads(out.read_text())
    assert rc == 0 and [x["variant"] for x in r["results"]] == ["xsa_op", "k_op"]
    assert all(x["gb_per_s"] > 0 for x in r["results"]) and r["sweep"] == [{"error": "needs CUDA and triton"}]
