"""Fused softcapped cross-entropy for training (PR #1787; in record PR #1855 as ``FUSED_CE_ENABLED=1``).

    z = C tanh(l / C)   (computed in fp32 from bf16 or fp32 logits l)
    loss_i = logsumexp_j z_ij - z_i,y_i,   dloss_i/dl_ij = (softmax(z_i)_j - [j = y_i]) (1 - tanh^2(l_ij / C))

    from pgolf.model.fused_ce import softcapped_cross_entropy
    loss = softcapped_cross_entropy(raw_logits.flatten(0, 1), targets.flatten(), cap=30.0)

On CUDA with triton importable (and C <= MAX_CAP) this runs the Triton kernels of ``fused_ce_triton.py``
through the custom op ``pgolf::softcapped_ce`` (``torch.library.custom_op`` + ``register_fake`` +
``register_autograd``, so it traces inside ``torch.compile(fullgraph=True)``): the forward keeps only
(loss, lse) per row and the backward writes the gradient in the logits' dtype, so the (N, V) fp32 softcapped
logits and probabilities are never materialised. Everywhere else ``impl="auto"`` takes the pure-torch
reference path ``F.cross_entropy(C tanh(l.float() / C), y)``. ``impl="fused"`` forces the custom op; off CUDA
its body is the same math in torch, which lets CPU tests exercise the op's autograd and compile wiring.

Targets must be vocabulary ids: there is no ``ignore_index`` (an out-of-range target gives a NaN loss in the
kernel). Only the training loss uses this; evaluation keeps the eager head (see ``GPT.forward``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from pgolf.model.layers import HAS_TRITON

MAX_CAP = 40.0  # the kernels shift z by C; exp(-2C) must stay a normal fp32 number (C < 43.6)
KERNEL = {"block": 1024, "num_warps": 4}  # columns per loop iteration and warps per row program (benchmark sweeps)
REDUCTIONS = ("mean", "sum", "none")
IMPLS = ("auto", "fused", "reference")


def softcapped_cross_entropy(logits: Tensor, targets: Tensor, cap: float, reduction: str = "mean",
                             impl: str = "auto") -> Tensor:
    """Cross-entropy of ``cap * tanh(logits / cap)`` in fp32. logits (N, V) pre-softcap, targets (N,) ids.

    impl: auto (the Triton op when `uses_triton` says so, else the reference) | fused (the custom op on any
    device) | reference (eager torch). Returns a scalar for mean/sum, (N,) fp32 for none.
    """
    if reduction not in REDUCTIONS:
        raise ValueError(f"softcapped_cross_entropy: reduction={reduction!r} is not one of {', '.join(REDUCTIONS)}")
    if impl not in IMPLS:
        raise ValueError(f"softcapped_cross_entropy: impl={impl!r} is not one of {', '.join(IMPLS)}")
    if logits.ndim != 2 or targets.shape != logits.shape[:1]:
        raise ValueError(f"softcapped_cross_entropy: expected logits (N, V) and targets (N,), got "
                         f"{tuple(logits.shape)} and {tuple(targets.shape)}")
    if not cap > 0:
        raise ValueError(f"softcapped_cross_entropy: cap must be positive, got {cap}")
    if impl == "reference" or (impl == "auto" and not uses_triton(logits, cap)):
        z = cap * torch.tanh(logits.float() / cap)
        return F.cross_entropy(z, targets.long(), reduction=reduction)
    losses, _ = torch.ops.pgolf.softcapped_ce(logits, targets, float(cap))
    return losses if reduction == "none" else losses.sum() if reduction == "sum" else losses.mean()


def uses_triton(logits: Tensor, cap: float) -> bool:
    """Whether the custom op runs the Triton kernels for these logits (else its body is torch math)."""
    return HAS_TRITON and logits.is_cuda and logits.dtype in (torch.float32, torch.bfloat16, torch.float16) \
        and cap <= MAX_CAP


# --- the custom ops: forward (loss, lse) and backward (grad of the logits) ---

@torch.library.custom_op("pgolf::softcapped_ce", mutates_args=())
def _softcapped_ce(logits: Tensor, targets: Tensor, cap: float) -> tuple[Tensor, Tensor]:
    if not uses_triton(logits, cap):
        z = cap * torch.tanh(logits.float() / cap)
        lse = torch.logsumexp(z, dim=1)
        return lse - z.gather(1, targets.long()[:, None]).squeeze(1), lse
    from pgolf.model import fused_ce_triton  # triton is imported only here

    losses = torch.empty(logits.shape[0], device=logits.device, dtype=torch.float32)
    lse = torch.empty_like(losses)
    fused_ce_triton.launch_forward(logits, targets.contiguous(), losses, lse, cap, **_kernel())
    return losses, lse


@_softcapped_ce.register_fake
def _(logits: Tensor, targets: Tensor, cap: float) -> tuple[Tensor, Tensor]:
    n = logits.shape[0]
    return logits.new_empty(n, dtype=torch.float32), logits.new_empty(n, dtype=torch.float32)


@torch.library.custom_op("pgolf::softcapped_ce_backward", mutates_args=())
def _softcapped_ce_backward(logits: Tensor, targets: Tensor, lse: Tensor, gp: Tensor, gy: Tensor,
                            cap: float) -> Tensor:
    """grad = (gp * softmax(z) - gy * onehot(targets)) * (1 - tanh^2), in logits.dtype; gp, gy: (N,) per row."""
    gp, gy = gp.float().contiguous(), gy.float().contiguous()
    if not uses_triton(logits, cap):
        t = torch.tanh(logits.float() / cap)
        gz = gp[:, None] * torch.exp(cap * t - lse[:, None])
        gz.scatter_add_(1, targets.long()[:, None], -gy[:, None])
        return (gz * (1.0 - t * t)).to(logits.dtype)
    from pgolf.model import fused_ce_triton

    grad = torch.empty(logits.shape, device=logits.device, dtype=logits.dtype)
    fused_ce_triton.launch_backward(logits, targets.contiguous(), lse.contiguous(), gp, gy, grad, cap, **_kernel())
    return grad


@_softcapped_ce_backward.register_fake
def _(logits: Tensor, targets: Tensor, lse: Tensor, gp: Tensor, gy: Tensor, cap: float) -> Tensor:
    return logits.new_empty(logits.shape)


def _setup_context(ctx, inputs, output) -> None:
    logits, targets, cap = inputs
    ctx.save_for_backward(logits, targets, output[1])
    ctx.cap = cap


def _backward(ctx, grad_losses: Tensor, grad_lse: Tensor | None):
    logits, targets, lse = ctx.saved_tensors
    if grad_losses is None:
        grad_losses = torch.zeros_like(lse)
    gp = grad_losses if grad_lse is None else grad_losses + grad_lse  # d lse / d z = softmax(z) as well
    return torch.ops.pgolf.softcapped_ce_backward(logits, targets, lse, gp, grad_losses, ctx.cap), None, None


_softcapped_ce.register_autograd(_backward, setup_context=_setup_context)


def _kernel() -> dict[str, int]:
    block, warps = int(KERNEL["block"]), int(KERNEL["num_warps"])
    if block < 16 or block & (block - 1) or warps not in (1, 2, 4, 8, 16):
        raise ValueError(f"fused_ce.KERNEL={KERNEL}: block must be a power of two >= 16, num_warps in 1..16")
    return {"block": block, "num_warps": warps}
