"""Tied LM head + softcapped cross-entropy as one training op whose forward already computes the gradients
(``model.fused_head_ce``; the fused CE of PR #1787 / record PR #1855, with the head's backward moved into the
forward as in Liger-Kernel's fused linear cross-entropy, arXiv:2410.10989).

    logits = h W^T                                       (N, V), in h's dtype (bf16 under autocast)
    loss   = mean_i [ logsumexp_j z_ij - z_i,y_i ],  z = C tanh(logits / C)
    G      = dloss/dlogits = (softmax(z) - onehot(y)) (1 - tanh^2(logits / C)) / N    (written over the logits)
    dh     = G W,   dW = G^T h                           (saved; the backward only scales them by dL/dloss)

    from pgolf.model.fused_head_ce import head_softcapped_ce
    loss = head_softcapped_ce(h.flatten(0, 1), W, targets.flatten(), cap=30.0)

Why: with ``model.fused_ce`` the (N, V) logits cross HBM four times between the head's GEMM and its backward
GEMMs (the CE forward reads them, the CE backward reads them again and writes the gradient). Here one kernel
(``fused_ce_triton.softcapped_ce_loss_grad_kernel``) holds each row in registers and overwrites it with the
gradient: one read and one write, and no (N, V) tensor is kept for the backward. The upstream
gradient is a scalar (the loss is a mean), so scaling the small dh (N, d) and dW (V, d) afterwards is exact.
On CUDA with triton the kernel runs; elsewhere the op's body is the same math in torch (CPU tests).

Measured (pr1855 micro-step, 98,304 tokens, H200; benchmarks/results/model_step_fused_head_ce_twosweep_h200.json)
with an earlier kernel that swept each row twice: 92.77 ms against fused_ce's 92.77, peak memory 27.7 against
29.3 GiB (no (N, V) tensor waits for the backward). That kernel took 1.51 ms per micro-batch, bound by two
sigmoids and two exps per logit; the one-sweep kernel now used has one of each and reads the row once (also checked in
Triton's interpreter, tests/test_fused_head_ce.py). It does not win either: 93.03 against 92.63 ms, peak 27.7 against
29.3 GiB (model_step_fused_head_ce_onesweep_h200.json). Off by default: a choice for runs short of memory.
Same limits as fused_ce: targets must be vocabulary ids (an out-of-range id gives a NaN loss) and C <= MAX_CAP;
and V <= 16,384 (a row per program in registers; checked by ModelConfig).
"""

from __future__ import annotations

import torch
from torch import Tensor

from pgolf.model.fused_ce import uses_triton


def head_softcapped_ce(h: Tensor, weight: Tensor, targets: Tensor, cap: float) -> Tensor:
    """Mean softcapped CE of the logits h weight^T: h (N, d), weight (V, d) in h's dtype, targets (N,) ids."""
    if h.ndim != 2 or weight.ndim != 2 or h.shape[1] != weight.shape[1] or targets.shape != h.shape[:1]:
        raise ValueError(f"head_softcapped_ce: expected h (N, d), weight (V, d) and targets (N,), got "
                         f"{tuple(h.shape)}, {tuple(weight.shape)} and {tuple(targets.shape)}")
    if h.dtype != weight.dtype:
        raise ValueError(f"head_softcapped_ce: h is {h.dtype} but weight is {weight.dtype}; cast the weight first")
    if not cap > 0:
        raise ValueError(f"head_softcapped_ce: cap must be positive, got {cap}")
    loss, _, _ = torch.ops.pgolf.head_softcapped_ce(h, weight, targets, float(cap))
    return loss


@torch.library.custom_op("pgolf::head_softcapped_ce", mutates_args=())
def _head_ce(h: Tensor, weight: Tensor, targets: Tensor, cap: float) -> tuple[Tensor, Tensor, Tensor]:
    """(mean loss fp32 scalar, dloss/dh, dloss/dweight) for an upstream gradient of 1."""
    logits = h @ weight.t()
    n = logits.shape[0]
    if uses_triton(logits, cap):
        from pgolf.model import fused_ce_triton  # triton is imported only here

        losses = torch.empty(n, device=logits.device, dtype=torch.float32)
        fused_ce_triton.launch_loss_grad(logits, targets.contiguous(), losses, cap, 1.0 / n)
        grad = logits  # overwritten in place by the kernel
    else:  # fused_ce's two ops, whose bodies are the same math in torch off CUDA
        losses, lse = torch.ops.pgolf.softcapped_ce(logits, targets, cap)
        per_row = torch.full_like(losses, 1.0 / n)
        grad = torch.ops.pgolf.softcapped_ce_backward(logits, targets, lse, per_row, per_row, cap)
    return losses.mean(), grad @ weight, grad.t() @ h


@_head_ce.register_fake
def _(h: Tensor, weight: Tensor, targets: Tensor, cap: float) -> tuple[Tensor, Tensor, Tensor]:
    return h.new_empty((), dtype=torch.float32), torch.empty_like(h), torch.empty_like(weight)


def _setup_context(ctx, inputs, output) -> None:
    _, dh, dw = output
    ctx.mark_non_differentiable(dh, dw)
    ctx.save_for_backward(dh, dw)


def _backward(ctx, grad_loss: Tensor, _gdh, _gdw):
    dh, dw = ctx.saved_tensors
    g = grad_loss.float()  # in fp32: 1 / accum (e.g. 1/6) rounded to bf16 would be off by up to 0.4%
    return (dh.float() * g).to(dh.dtype), (dw.float() * g).to(dw.dtype), None, None


_head_ce.register_autograd(_backward, setup_context=_setup_context)
