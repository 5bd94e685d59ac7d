"""Triton kernels of ``q_norm_rope.norm_rope`` (imported lazily; needs triton); the math is that module's
docstring. One program takes ROWS (token, head) rows of hd elements: the rotation's partner half is a second load
of the same row (cached), cos/sin are read from the (T, k/2) table of the row's position, and the output (or d x)
is written once, contiguous (B, T, H, hd). Any strides over (B, T, H)
for x and d out (hd is made contiguous if it is not)."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from pgolf.model.layers import unit_last_stride

ROWS = 32  # (token, head) rows per program: a 32 x 64 fp32 tile per live tensor at hd = 64, 4 warps


@triton.jit
def _rows(pid, n_rows, T, H, s_b, s_t, s_h, ROWS: tl.constexpr):
    rows = pid.to(tl.int64) * ROWS + tl.arange(0, ROWS)
    h = rows % H
    bt = rows // H
    return rows, rows < n_rows, (bt // T) * s_b + (bt % T) * s_t + h * s_h, bt % T, h


@triton.jit
def _rotation(cos_ptr, sin_ptr, t, sc_t, ss_t, mask, D: tl.constexpr, K: tl.constexpr):
    """Per column: the partner column, cos, and sin signed for the forward rotation (identity past K)."""
    cols = tl.arange(0, D)
    half = K // 2
    first = cols < half
    rot = cols < K
    partner = tl.where(first, cols + half, tl.where(rot, cols - half, cols))
    f = tl.where(first, cols, cols - half)
    m2 = mask[:, None] & rot[None, :]
    c = tl.load(cos_ptr + t[:, None] * sc_t + f[None, :], mask=m2, other=1.0).to(tl.float32)
    s = tl.load(sin_ptr + t[:, None] * ss_t + f[None, :], mask=m2, other=0.0).to(tl.float32)
    return cols, partner, c, tl.where(first[None, :], s, -s)


@triton.jit
def norm_rope_fwd_kernel(x_ptr, cos_ptr, sin_ptr, g_ptr, out_ptr, n_rows, T, H, sx_b, sx_t, sx_h, sc_t, ss_t, eps,
                         D: tl.constexpr, K: tl.constexpr, ROWS: tl.constexpr, HAS_GAIN: tl.constexpr):
    rows, mask, base, t, h = _rows(tl.program_id(0), n_rows, T, H, sx_b, sx_t, sx_h, ROWS)
    cols, partner, c, s = _rotation(cos_ptr, sin_ptr, t, sc_t, ss_t, mask, D, K)
    x = tl.load(x_ptr + base[:, None] + cols[None, :], mask=mask[:, None], other=0.0).to(tl.float32)
    xp = tl.load(x_ptr + base[:, None] + partner[None, :], mask=mask[:, None], other=0.0).to(tl.float32)
    r = tl.rsqrt(tl.sum(x * x, axis=1) / D + eps)
    if HAS_GAIN:
        r *= tl.load(g_ptr + h, mask=mask, other=0.0).to(tl.float32)
    out = (x * c + xp * s) * r[:, None]
    tl.store(out_ptr + rows[:, None] * D + cols[None, :], out.to(out_ptr.dtype.element_ty), mask=mask[:, None])


@triton.jit
def norm_rope_bwd_kernel(do_ptr, x_ptr, cos_ptr, sin_ptr, g_ptr, dx_ptr, ds_ptr, n_rows, T, H, sd_b, sd_t, sd_h,
                         sx_b, sx_t, sx_h, sc_t, ss_t, eps, D: tl.constexpr, K: tl.constexpr, ROWS: tl.constexpr,
                         HAS_GAIN: tl.constexpr):
    rows, mask, base, t, h = _rows(tl.program_id(0), n_rows, T, H, sx_b, sx_t, sx_h, ROWS)
    _, _, d_base, _, _ = _rows(tl.program_id(0), n_rows, T, H, sd_b, sd_t, sd_h, ROWS)
    cols, partner, c, s = _rotation(cos_ptr, sin_ptr, t, sc_t, ss_t, mask, D, K)
    x = tl.load(x_ptr + base[:, None] + cols[None, :], mask=mask[:, None], other=0.0).to(tl.float32)
    do = tl.load(do_ptr + d_base[:, None] + cols[None, :], mask=mask[:, None], other=0.0).to(tl.float32)
    dop = tl.load(do_ptr + d_base[:, None] + partner[None, :], mask=mask[:, None], other=0.0).to(tl.float32)
    r = tl.rsqrt(tl.sum(x * x, axis=1) / D + eps)
    xn = x * r[:, None]
    u = do * c - dop * s  # R^T(d out): the rotation by -angle
    dot = tl.sum(xn * u, axis=1)
    scale = r
    if HAS_GAIN:
        tl.store(ds_ptr + rows, dot, mask=mask)
        scale *= tl.load(g_ptr + h, mask=mask, other=0.0).to(tl.float32)
    dx = scale[:, None] * (u - xn * (dot / D)[:, None])
    tl.store(dx_ptr + rows[:, None] * D + cols[None, :], dx.to(dx_ptr.dtype.element_ty), mask=mask[:, None])


def _check_rope_dims(k: int, head_dim: int) -> None:
    if k % 2 or not 0 < k <= head_dim:
        raise ValueError(f"q_norm_rope_triton: rope_dims={k} must be even and within head_dim={head_dim}")


def _meta(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, gain, k: int, rows: int, num_warps: int):
    B, T, H, D = x.shape
    n_rows = B * T * H
    eps = torch.finfo(torch.promote_types(x.dtype, torch.float32)).eps  # F.rms_norm's default, as _normed
    meta = {"D": D, "K": k, "ROWS": rows, "HAS_GAIN": gain is not None, "num_warps": num_warps}
    return (triton.cdiv(n_rows, rows),), (n_rows, T, H), (cos.stride(1), sin.stride(1), eps), meta


def forward(x, cos, sin, gain, k: int, rows: int = ROWS, num_warps: int = 4) -> torch.Tensor:
    """out (B, T, H, hd); rows / num_warps: the launch shape (benchmarks/rowop_bench.py sweeps them)."""
    _check_rope_dims(k, x.shape[-1])
    x, cos, sin, gain = (unit_last_stride(t) for t in (x, cos, sin, gain))
    grid, dims, tail, meta = _meta(x, cos, sin, gain, k, rows, num_warps)
    out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    norm_rope_fwd_kernel[grid](x, cos, sin, gain, out, *dims, x.stride(0), x.stride(1), x.stride(2), *tail, **meta)
    return out


def backward(dout, x, cos, sin, gain, k: int, rows: int = ROWS,
             num_warps: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """(d x, q^ . R^T(d out) per row); rows / num_warps as in forward."""
    _check_rope_dims(k, x.shape[-1])
    dout, x, cos, sin, gain = (unit_last_stride(t) for t in (dout, x, cos, sin, gain))
    grid, dims, tail, meta = _meta(x, cos, sin, gain, k, rows, num_warps)
    dx = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    ds = torch.empty(x.shape[:3] if gain is not None else (0,), dtype=torch.float32, device=x.device)
    norm_rope_bwd_kernel[grid](dout, x, cos, sin, gain, dx, ds, *dims, dout.stride(0), dout.stride(1),
                               dout.stride(2), x.stride(0), x.stride(1), x.stride(2), *tail, **meta)
    return dx, ds
