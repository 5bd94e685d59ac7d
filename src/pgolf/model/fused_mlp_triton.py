"""Triton kernel of the fused (leaky) relu² MLP (imported lazily by ``fused_mlp.py``; needs triton).

One tiled GEMM ``C = A B^T`` (A: M x K, B: N x K, any strides; fp32 accumulation) whose epilogue applies the
activation, so the (M, hidden) activations make one trip through HBM instead of three (idea: record PR #1855's
``linear_leaky_relu_square_kernel``; this kernel is written from the formulas below):

    forward   C = pre = A B^T                    AUX <- post = leaky(pre, s)^2      (A = x, B = W_fc)
    backward  C = g_pre = (A B^T) * act'(AUX)    act'(p) = 2p (p > 0), 2 s^2 p      (A = g_out, B = W_proj^T, AUX = pre)

post is computed from pre rounded to the output dtype, as the unfused graph does. Programs walk the output tiles
in groups of GROUP_M row tiles, so consecutive programs share B tiles in L2. K must be a multiple of BLOCK_K
(checked by the launcher; model widths are multiples of 64).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

# tile shapes tried once per (M, N, K) on the first call (compile warm-up, before the clock)
CONFIGS = [
    triton.Config({"BLOCK_M": 128, "BLOCK_N": 256, "BLOCK_K": 64, "GROUP_M": 8}, num_stages=3, num_warps=8),
    triton.Config({"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 64, "GROUP_M": 8}, num_stages=4, num_warps=8),
    triton.Config({"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 64, "GROUP_M": 8}, num_stages=4, num_warps=4),
    triton.Config({"BLOCK_M": 64, "BLOCK_N": 128, "BLOCK_K": 64, "GROUP_M": 8}, num_stages=4, num_warps=4),
    triton.Config({"BLOCK_M": 256, "BLOCK_N": 128, "BLOCK_K": 64, "GROUP_M": 8}, num_stages=3, num_warps=8),  # #1855's
]


@triton.autotune(configs=CONFIGS, key=["M", "N", "K", "BACKWARD"])
@triton.jit
def gemm_act_kernel(a_ptr, b_ptr, c_ptr, aux_ptr, M, N, K, stride_am, stride_ak, stride_bn, stride_bk,
                    stride_cm, stride_cn, slope, BACKWARD: tl.constexpr, BLOCK_M: tl.constexpr,
                    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr):
    pid = tl.program_id(0)
    tiles_m, tiles_n = tl.cdiv(M, BLOCK_M), tl.cdiv(N, BLOCK_N)
    per_group = GROUP_M * tiles_n
    first_m = (pid // per_group) * GROUP_M
    rows_in_group = tl.minimum(tiles_m - first_m, GROUP_M)
    tile_m = first_m + (pid % per_group) % rows_in_group
    tile_n = (pid % per_group) // rows_in_group

    rm = (tile_m * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
    rn = (tile_n * BLOCK_N + tl.arange(0, BLOCK_N)).to(tl.int64)
    rk = tl.arange(0, BLOCK_K)
    in_m, in_n = rm < M, rn < N
    a_tile = a_ptr + rm[:, None] * stride_am + rk[None, :] * stride_ak
    b_tile = b_ptr + rn[None, :] * stride_bn + rk[:, None] * stride_bk  # (BLOCK_K, BLOCK_N): B^T
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for _ in range(0, tl.cdiv(K, BLOCK_K)):
        a = tl.load(a_tile, mask=in_m[:, None], other=0.0)
        b = tl.load(b_tile, mask=in_n[None, :], other=0.0)
        acc = tl.dot(a, b, acc)
        a_tile += BLOCK_K * stride_ak
        b_tile += BLOCK_K * stride_bk

    out_mask = in_m[:, None] & in_n[None, :]
    c_off = rm[:, None] * stride_cm + rn[None, :] * stride_cn
    if BACKWARD:
        pre = tl.load(aux_ptr + c_off, mask=out_mask, other=0.0).to(tl.float32)
        grad = acc * tl.where(pre > 0, 2.0 * pre, (2.0 * slope * slope) * pre)
        tl.store(c_ptr + c_off, grad.to(c_ptr.dtype.element_ty), mask=out_mask)
    else:
        pre = acc.to(c_ptr.dtype.element_ty)
        tl.store(c_ptr + c_off, pre, mask=out_mask)
        p = pre.to(tl.float32)
        act = tl.where(p > 0, p, slope * p)
        tl.store(aux_ptr + c_off, (act * act).to(aux_ptr.dtype.element_ty), mask=out_mask)


def gemm_act(a: torch.Tensor, b: torch.Tensor, slope: float, aux: torch.Tensor | None = None,
             config: triton.Config | None = None) -> tuple[torch.Tensor, torch.Tensor] | torch.Tensor:
    """Forward (aux None): (pre, post) = (a b^T, leaky(pre)^2). Backward: (a b^T) * act'(aux), aux = pre.
    `config`: launch with these tiles instead of the autotuned choice (sweeps; TRITON_INTERPRET=1 on CPU, where
    the autotuner has no device to time on)."""
    M, K = a.shape
    N, K2 = b.shape
    if K != K2 or K % 64:
        raise ValueError(f"fused_mlp kernel: a {tuple(a.shape)} and b {tuple(b.shape)} need equal K, a multiple of 64")
    c = torch.empty((M, N), device=a.device, dtype=a.dtype)
    backward = aux is not None
    if not backward:
        aux = torch.empty_like(c)
    elif aux.shape != c.shape or aux.stride() != c.stride():
        raise ValueError(f"fused_mlp kernel: aux {tuple(aux.shape)} must be a contiguous ({M}, {N}) tensor")

    def grid(meta):
        return (triton.cdiv(M, meta["BLOCK_M"]) * triton.cdiv(N, meta["BLOCK_N"]),)

    args = (a, b, c, aux, M, N, K, a.stride(0), a.stride(1), b.stride(0), b.stride(1), c.stride(0), c.stride(1),
            float(slope))
    if config is None:
        gemm_act_kernel[grid](*args, BACKWARD=backward)
    else:
        gemm_act_kernel.fn[grid(config.kwargs)](*args, BACKWARD=backward, **config.kwargs,
                                                  num_warps=config.num_warps, num_stages=config.num_stages)
    return c if backward else (c, aux)
