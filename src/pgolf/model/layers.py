"""Building blocks shared by every model part: RMSNorm and the fp32-weight linear (RoPE: ``attn_rope.py``)."""

from __future__ import annotations

import importlib.util

import torch
import torch.nn.functional as F
from torch import Tensor, nn

HAS_TRITON = importlib.util.find_spec("triton") is not None


def rms_norm(x: Tensor) -> Tensor:
    return F.rms_norm(x, (x.size(-1),))


class CastedLinear(nn.Linear):
    """Linear layer whose fp32 weight is cast to the activation dtype (bf16 under autocast) at matmul time.
    `zero_init` marks output projections that start at zero (identity-at-init residual branches)."""

    def __init__(self, in_features: int, out_features: int, *, zero_init: bool = False):
        super().__init__(in_features, out_features, bias=False)
        self.zero_init = zero_init

    def effective_weight(self) -> Tensor:
        """The weight the forward multiplies by (fp32): ``weight`` here, fake-quantized in QAT's subclass. Kernels
        that take the weight directly (fused MLP) use this."""
        return self.weight

    def scaled_weight(self, out_scale: Tensor | None = None) -> Tensor:
        """`effective_weight`, its rows times `out_scale` (out_features,) when given: x (s W)^T = s * (x W^T), so a
        per-channel scale of the output folds into the weight (``model.fold_branch_scales``)."""
        w = self.effective_weight()
        return w if out_scale is None else out_scale[:, None] * w

    def forward(self, x: Tensor, out_scale: Tensor | None = None) -> Tensor:
        return F.linear(x, self.scaled_weight(out_scale).to(x.dtype))


def unit_last_stride(t: Tensor | None) -> Tensor | None:
    """t itself when its last dimension is contiguous (what a Triton kernel indexing it with stride 1 needs), else
    a contiguous copy; None stays None."""
    return t if t is None or t.stride(-1) == 1 else t.contiguous()


def wide(x: Tensor) -> Tensor:
    """x in fp32, or in its own dtype when wider (the compute precision of the row ops' torch bodies)."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def row_kernel_ok(x: Tensor) -> bool:
    """Whether the row-op Triton kernels (xsa_gate, norm_rope) take x: triton installed, CUDA, a float dtype, and a
    head dimension that is a power of two in [8, 256] (one tl.arange per row)."""
    d = x.shape[-1]
    return HAS_TRITON and x.is_cuda and x.dtype in (torch.bfloat16, torch.float16, torch.float32) and \
        8 <= d <= 256 and d & (d - 1) == 0
