"""Triton kernel of the fused (leaky) relu² MLP (imported lazily by ``fused_mlp.py``; needs triton).

One tiled GEMM ``C = A B^T`` (A: M x K, B: N x K, any strides; fp32 accumulation) whose epilogue applies the
activation, so the (M, hidden) activations make one trip through HBM instead of three (idea: record PR #1855's
``linear_leaky_relu_square_kernel``; this kernel is written from the formulas below):

    forward   C = pre = A B^T                    AUX <- post = leaky(pre, s)^2      (A = x, B = W_fc)
    backward  C = g_pre = (A B^T) * act'(AUX)    act'(p) = 2p (p > 0), 2 s^2 p      (A = g_out, B = W_proj^T, AUX = pre)

With SIGN_BITS (``model.fused_mlp_sign_bits``) the forward writes post and one bit per element, pre > 0, packed
eight to a byte (BITS: M x N/8 uint8; bit j of byte g is column 8 g + j), instead of pre; the backward reads post
and those bits, ``act'(pre) = 2 sqrt(post)`` (pre > 0) or ``-2 |s| sqrt(post)``, so pre never goes to HBM.
post is computed from pre rounded to the output dtype, as the unfused graph does. Output tiles are walked in groups
of GROUP_M row tiles, so consecutive tiles share B tiles in L2. K must be a multiple of 64 (checked by the launcher;
model widths are multiples of 64). Two kernels compute the same thing:

    gemm_act_tma_kernel  Hopper and later: persistent (one program per SM walks the tiles), operands read through
                         TMA tensor descriptors, the epilogue written in two column halves; needs unit-stride rows
                         of A and of B or B^T, 16-byte aligned. Why: in one H100 profile at #1855's shapes the
                         record's TMA kernel took 0.49 ms per call, the pointer kernel 0.60 (issue 5)
    gemm_act_kernel      any other case: pointer loads with masks, any strides
"""

from __future__ import annotations

import functools
import os

import torch
import triton
import triton.language as tl

try:  # host-side TMA descriptors (triton >= 3.3)
    from triton.tools.tensor_descriptor import TensorDescriptor
except ImportError:  # pragma: no cover - older triton: the pointer kernel only
    TensorDescriptor = None

# tile shapes tried once per (M, N, K) on the first call (compile warm-up, before the clock)
CONFIGS = [
    triton.Config({"BLOCK_M": 128, "BLOCK_N": 256, "BLOCK_K": 64, "GROUP_M": 8}, num_stages=3, num_warps=8),
    triton.Config({"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 64, "GROUP_M": 8}, num_stages=4, num_warps=8),
    triton.Config({"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 64, "GROUP_M": 8}, num_stages=4, num_warps=4),
    triton.Config({"BLOCK_M": 64, "BLOCK_N": 128, "BLOCK_K": 64, "GROUP_M": 8}, num_stages=4, num_warps=4),
    triton.Config({"BLOCK_M": 256, "BLOCK_N": 128, "BLOCK_K": 64, "GROUP_M": 8}, num_stages=3, num_warps=8),  # #1855's
]


@triton.jit
def _post(pre, slope):
    """leaky(pre, s)^2 in fp32 from pre as stored (rounded to the output dtype)."""
    p = pre.to(tl.float32)
    act = tl.where(p > 0, p, slope * p)
    return act * act


@triton.jit
def _times_act_grad(acc, saved, bits_ptr, bits_off, bits_mask, slope, SIGN_BITS: tl.constexpr,
                    BLOCK_M: tl.constexpr, COLS: tl.constexpr):
    """acc * act'(pre) from pre (saved = pre) or, with SIGN_BITS, from post (saved) and pre's packed signs (the
    bytes at bits_ptr + bits_off); slope is |s| there."""
    v = saved.to(tl.float32)
    if SIGN_BITS:
        bits = tl.load(bits_ptr + bits_off, mask=bits_mask, other=0).to(tl.int32)
        expanded = (bits[:, :, None] >> tl.arange(0, 8)[None, None, :]) & 1
        positive = tl.reshape(expanded, (BLOCK_M, COLS)) != 0
        r = tl.sqrt(v)
        factor = tl.where(positive, 2.0 * r, (-2.0 * slope) * r)
    else:
        factor = tl.where(v > 0, 2.0 * v, (2.0 * slope * slope) * v)
    return acc * factor


@triton.jit
def _pack_signs(pre, BLOCK_M: tl.constexpr, COLS: tl.constexpr):
    """(BLOCK_M, COLS) -> (BLOCK_M, COLS / 8) uint8: bit j of byte g is pre[:, 8 g + j] > 0."""
    positive = tl.reshape((pre.to(tl.float32) > 0).to(tl.int32), (BLOCK_M, COLS // 8, 8))
    return tl.sum(positive * (1 << tl.arange(0, 8))[None, None, :], axis=2).to(tl.uint8)


@triton.jit
def _bit_offsets(rows, first_col, M, N, COLS: tl.constexpr):
    """Offsets and mask of the sign bytes of `rows` x columns [first_col, first_col + COLS) in an (M, N/8) tensor."""
    groups = first_col // 8 + tl.arange(0, COLS // 8)
    offsets = rows[:, None].to(tl.int64) * (N // 8) + groups[None, :]
    return offsets, (rows < M)[:, None] & (groups < N // 8)[None, :]


@triton.autotune(configs=CONFIGS, key=["M", "N", "K", "BACKWARD", "SIGN_BITS"])
@triton.jit
def gemm_act_kernel(a_ptr, b_ptr, c_ptr, aux_ptr, bits_ptr, M, N, K, stride_am, stride_ak, stride_bn, stride_bk,
                    stride_cm, stride_cn, slope, BACKWARD: tl.constexpr, SIGN_BITS: tl.constexpr,
                    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr):
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
    bits_off, bits_mask = _bit_offsets(rm, tile_n * BLOCK_N, M, N, BLOCK_N)
    if BACKWARD:
        saved = tl.load(aux_ptr + c_off, mask=out_mask, other=0.0)
        grad = _times_act_grad(acc, saved, bits_ptr, bits_off, bits_mask, slope, SIGN_BITS, BLOCK_M, BLOCK_N)
        tl.store(c_ptr + c_off, grad.to(c_ptr.dtype.element_ty), mask=out_mask)
    else:
        pre = acc.to(c_ptr.dtype.element_ty)
        post = _post(pre, slope).to(c_ptr.dtype.element_ty)
        if SIGN_BITS:
            tl.store(c_ptr + c_off, post, mask=out_mask)
            tl.store(bits_ptr + bits_off, _pack_signs(pre, BLOCK_M, BLOCK_N), mask=bits_mask)
        else:
            tl.store(c_ptr + c_off, pre, mask=out_mask)
            tl.store(aux_ptr + c_off, post, mask=out_mask)


def _set_tma_blocks(nargs: dict) -> None:
    """Autotune pre-hook: the descriptors' block shapes follow the config being tried."""
    bm, bn, bk = nargs["BLOCK_M"], nargs["BLOCK_N"], nargs["BLOCK_K"]
    nargs["a_desc"].block_shape = [bm, bk]
    nargs["b_desc"].block_shape = [bk, bn] if nargs["B_KN"] else [bn, bk]
    nargs["c_desc"].block_shape = [bm, bn // 2]
    nargs["aux_desc"].block_shape = [bm, bn // 2]


def _tma_config(block_m: int, block_n: int, group_m: int, stages: int, warps: int = 8) -> triton.Config:
    return triton.Config({"BLOCK_M": block_m, "BLOCK_N": block_n, "BLOCK_K": 64, "GROUP_M": group_m},
                         num_stages=stages, num_warps=warps, pre_hook=_set_tma_blocks)


TMA_CONFIGS = [
    _tma_config(256, 128, 8, 4), _tma_config(256, 128, 8, 3), _tma_config(128, 256, 8, 3),
    _tma_config(128, 128, 8, 4, warps=4),
    # row-major tile order (GROUP_M = 1), the record #1855 kernel's: 4 stages forward, 3 backward (4 overflow
    # shared memory with the backward's pre tiles; the autotuner drops a config that does not fit)
    _tma_config(256, 128, 1, 4), _tma_config(256, 128, 1, 3),
]


@triton.jit
def _epilogue_half(acc, c_desc, aux_desc, bits_ptr, off_m, off_n, M, N, slope, BACKWARD: tl.constexpr,
                   SIGN_BITS: tl.constexpr, BLOCK_M: tl.constexpr, COLS: tl.constexpr):
    """Store one (BLOCK_M, COLS = BLOCK_N / 2) half of the output tile with the activation (the module formulas)."""
    bits_off, bits_mask = _bit_offsets(off_m + tl.arange(0, BLOCK_M), off_n, M, N, COLS)
    if BACKWARD:
        grad = _times_act_grad(acc, aux_desc.load([off_m, off_n]), bits_ptr, bits_off, bits_mask, slope, SIGN_BITS,
                               BLOCK_M, COLS)
        c_desc.store([off_m, off_n], grad.to(c_desc.dtype))
    else:
        pre = acc.to(c_desc.dtype)
        post = _post(pre, slope).to(c_desc.dtype)
        if SIGN_BITS:
            c_desc.store([off_m, off_n], post)
            tl.store(bits_ptr + bits_off, _pack_signs(pre, BLOCK_M, COLS), mask=bits_mask)
        else:
            c_desc.store([off_m, off_n], pre)
            aux_desc.store([off_m, off_n], post)


@triton.autotune(configs=TMA_CONFIGS, key=["M", "N", "K", "BACKWARD", "B_KN", "SIGN_BITS"])
@triton.jit
def gemm_act_tma_kernel(a_desc, b_desc, c_desc, aux_desc, bits_ptr, M, N, K, slope, NUM_SMS: tl.constexpr,
                        BACKWARD: tl.constexpr, B_KN: tl.constexpr, SIGN_BITS: tl.constexpr, BLOCK_M: tl.constexpr,
                        BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr):
    """B_KN: b_desc is over B^T (K x N, unit-stride rows), else over B (N x K)."""
    tiles_m, tiles_n = tl.cdiv(M, BLOCK_M), tl.cdiv(N, BLOCK_N)
    per_group = GROUP_M * tiles_n
    half: tl.constexpr = BLOCK_N // 2
    for tile in tl.range(tl.program_id(0), tiles_m * tiles_n, NUM_SMS, flatten=True):
        first_m = (tile // per_group) * GROUP_M
        rows_in_group = tl.minimum(tiles_m - first_m, GROUP_M)
        off_m = (first_m + (tile % per_group) % rows_in_group) * BLOCK_M
        off_n = ((tile % per_group) // rows_in_group) * BLOCK_N
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for k in range(tl.cdiv(K, BLOCK_K)):
            a = a_desc.load([off_m, k * BLOCK_K])
            if B_KN:
                acc = tl.dot(a, b_desc.load([k * BLOCK_K, off_n]), acc)
            else:
                acc = tl.dot(a, b_desc.load([off_n, k * BLOCK_K]).T, acc)
        left, right = tl.split(tl.permute(tl.reshape(acc, (BLOCK_M, 2, BLOCK_N // 2)), (0, 2, 1)))
        _epilogue_half(left, c_desc, aux_desc, bits_ptr, off_m, off_n, M, N, slope, BACKWARD, SIGN_BITS, BLOCK_M,
                       half)
        _epilogue_half(right, c_desc, aux_desc, bits_ptr, off_m, off_n + half, M, N, slope, BACKWARD, SIGN_BITS,
                       BLOCK_M, half)


def _unit_rows(t: torch.Tensor) -> bool:
    """A 2-D tensor TMA can read: unit stride along rows, 16-byte aligned base and row pitch."""
    return t.stride(1) == 1 and (t.stride(0) * t.element_size()) % 16 == 0 and t.data_ptr() % 16 == 0


def tma_layout(a: torch.Tensor, b: torch.Tensor) -> bool | None:
    """None when the TMA kernel cannot run on these operands (no descriptors, TMA-unfriendly strides); else B_KN,
    whether b is read as B^T (b a transposed view of a row-major K x N matrix, e.g. W_proj.t() without a copy)."""
    if TensorDescriptor is None or not _unit_rows(a):
        return None
    if _unit_rows(b):
        return False
    return True if _unit_rows(b.t()) else None


def _use_tma(a: torch.Tensor) -> bool:
    """The TMA kernel by default on Hopper and later; PGOLF_FUSED_MLP_TMA=0 forces the pointer kernel (A/B runs)."""
    return (a.is_cuda and torch.cuda.get_device_capability(a.device)[0] >= 9
            and os.environ.get("PGOLF_FUSED_MLP_TMA", "1") != "0")


def gemm_act(a: torch.Tensor, b: torch.Tensor, slope: float, aux: torch.Tensor | None = None,
             config: triton.Config | None = None, tma: bool | None = None, sign_bits: bool = False,
             bits: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor] | torch.Tensor:
    """Forward (aux None): (pre, post) = (a b^T, leaky(pre)^2), or with `sign_bits` (bits of pre > 0, post): what
    the backward keeps, then post.
    Backward: (a b^T) * act'(pre), from aux = pre, or from aux = post and `bits` (the forward's).
    `tma`: None picks the TMA kernel where it can run (Hopper, `tma_layout`), else the pointer kernel; True or False
    forces one. `config`: launch with these tiles (one of TMA_CONFIGS or CONFIGS) instead of the autotuned choice
    (sweeps; TRITON_INTERPRET=1 on CPU, where the autotuner has no device to time on)."""
    M, K = a.shape
    N, K2 = b.shape
    if K != K2 or K % 64:
        raise ValueError(f"fused_mlp kernel: a {tuple(a.shape)} and b {tuple(b.shape)} need equal K, a multiple of 64")
    c = torch.empty((M, N), device=a.device, dtype=a.dtype)
    backward = aux is not None
    sign_bits = sign_bits or bits is not None
    if sign_bits and N % 64:
        raise ValueError(f"fused_mlp kernel: sign bits need N a multiple of 64, got {N}")
    if not backward:
        aux = c if sign_bits else torch.empty_like(c)  # with sign bits c holds post and aux is not written
        bits = torch.empty((M, N // 8), device=a.device, dtype=torch.uint8) if sign_bits else None
    elif aux.shape != c.shape or aux.stride() != c.stride():
        raise ValueError(f"fused_mlp kernel: aux {tuple(aux.shape)} must be a contiguous ({M}, {N}) tensor")
    elif bits is not None and (bits.shape != (M, N // 8) or bits.dtype != torch.uint8 or not bits.is_contiguous()):
        raise ValueError(f"fused_mlp kernel: bits {tuple(bits.shape)} {bits.dtype} must be contiguous ({M}, {N // 8})"
                         f" uint8")
    # the backward with sign bits uses |s| (act'(pre) = -2 |s| sqrt(post) for pre < 0)
    kernel_slope = abs(float(slope)) if (backward and sign_bits) else float(slope)
    bits_arg = bits if sign_bits else c  # never read or written without sign bits
    b_kn = tma_layout(a, b)
    if tma and b_kn is None:
        raise ValueError(f"fused_mlp kernel: strides a {a.stride()}, b {b.stride()} cannot be read through TMA")
    launch = (c, aux, bits_arg, kernel_slope, backward, sign_bits, config)
    if b_kn is not None and (tma or (tma is None and _use_tma(a))):
        _launch_tma(a, b, b_kn, *launch)
    else:
        _launch_pointer(a, b, *launch)
    if backward:
        return c
    return (bits, c) if sign_bits else (c, aux)


@functools.cache
def _sm_count(device: torch.device) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count


def _launch_tma(a, b, b_kn: bool, c, aux, bits, slope: float, backward: bool, sign_bits: bool,
                config: triton.Config | None) -> None:
    (M, K), N = a.shape, b.shape[0]
    sms = _sm_count(a.device) if a.is_cuda else 4  # 4 programs in the interpreter
    descs = [TensorDescriptor.from_tensor(t, [64, 64]) for t in (a, b.t() if b_kn else b, c, aux)]  # see pre_hook

    def grid(meta):
        return (min(sms, triton.cdiv(M, meta["BLOCK_M"]) * triton.cdiv(N, meta["BLOCK_N"])),)

    args = (*descs, bits, M, N, K, slope)
    flags = {"NUM_SMS": sms, "BACKWARD": backward, "B_KN": b_kn, "SIGN_BITS": sign_bits}
    if config is None:
        gemm_act_tma_kernel[grid](*args, **flags)
        return
    config.pre_hook({"a_desc": descs[0], "b_desc": descs[1], "c_desc": descs[2], "aux_desc": descs[3], **flags,
                     **config.kwargs})
    gemm_act_tma_kernel.fn[grid(config.kwargs)](*args, **flags, **config.kwargs, num_warps=config.num_warps,
                                                num_stages=config.num_stages)


def _launch_pointer(a, b, c, aux, bits, slope: float, backward: bool, sign_bits: bool,
                    config: triton.Config | None) -> None:
    (M, K), N = a.shape, b.shape[0]

    def grid(meta):
        return (triton.cdiv(M, meta["BLOCK_M"]) * triton.cdiv(N, meta["BLOCK_N"]),)

    args = (a, b, c, aux, bits, M, N, K, a.stride(0), a.stride(1), b.stride(0), b.stride(1), c.stride(0),
            c.stride(1), slope)
    if config is None:
        gemm_act_kernel[grid](*args, BACKWARD=backward, SIGN_BITS=sign_bits)
    else:
        gemm_act_kernel.fn[grid(config.kwargs)](*args, BACKWARD=backward, SIGN_BITS=sign_bits, **config.kwargs,
                                                  num_warps=config.num_warps, num_stages=config.num_stages)
