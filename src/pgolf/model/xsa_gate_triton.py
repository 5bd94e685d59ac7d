"""Triton kernels of ``xsa_gate.py`` (imported lazily; needs triton). The math and its backward are in that
module's docstring. One program takes ROWS (token, KV head) rows: it loads v once, normalizes it in registers and
handles the G query heads of the group in turn, so y, d out and v are each read once and d v is summed over the
group without atomics. Any strides over (B, T, heads) (the head dimension is made contiguous if it is not)."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from pgolf.model.layers import unit_last_stride

ROWS = 32  # (token, KV head) rows per program: at D = 64 a 32 x 64 fp32 tile per live tensor, 4 warps


@triton.jit
def _row_bases(rows, T, HKV, s_b, s_t, s_h):
    """Offsets of each row's (b, t, kv head) in a tensor of strides (s_b, s_t, s_h), and the row's kv head."""
    kvh = rows % HKV
    bt = rows // HKV
    return (bt // T) * s_b + (bt % T) * s_t + kvh * s_h, kvh, bt


@triton.jit
def _tile(v_ptr, n_rows, T, HKV, sv_b, sv_t, sv_h, ROWS: tl.constexpr, D: tl.constexpr, EPS: tl.constexpr):
    """This program's rows, their mask, the columns, and per row v^, |v|, the kv head and the flat token index."""
    rows = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS)
    mask = rows < n_rows
    cols = tl.arange(0, D)
    base, kvh, bt = _row_bases(rows, T, HKV, sv_b, sv_t, sv_h)
    v = tl.load(v_ptr + base[:, None] + cols[None, :], mask=mask[:, None], other=0.0).to(tl.float32)
    norm = tl.sqrt(tl.sum(v * v, axis=1))
    return rows, mask, cols, v / tl.maximum(norm, EPS)[:, None], norm, kvh, bt


@triton.jit
def xsa_gate_fwd_kernel(y_ptr, v_ptr, g_ptr, c_ptr, out_ptr, n_rows, T, HKV,
                        sy_b, sy_t, sy_h, sv_b, sv_t, sv_h, sg_b, sg_t, sg_h,
                        G: tl.constexpr, D: tl.constexpr, ROWS: tl.constexpr, HAS_GATE: tl.constexpr,
                        HAS_COEF: tl.constexpr, EPS: tl.constexpr):
    rows, mask, cols, vn, _, kvh, bt = _tile(v_ptr, n_rows, T, HKV, sv_b, sv_t, sv_h, ROWS, D, EPS)
    y_base, _, _ = _row_bases(rows, T, HKV, sy_b, sy_t, sy_h * G)
    g_base, _, _ = _row_bases(rows, T, HKV, sg_b, sg_t, sg_h * G)
    for j in tl.static_range(G):
        y = tl.load(y_ptr + (y_base + j * sy_h)[:, None] + cols[None, :], mask=mask[:, None], other=0.0)
        y = y.to(tl.float32)
        a = tl.sum(y * vn, axis=1)
        if HAS_COEF:
            a *= tl.load(c_ptr + kvh * G + j, mask=mask, other=0.0).to(tl.float32)
        z = y - a[:, None] * vn
        if HAS_GATE:
            z *= tl.load(g_ptr + g_base + j * sg_h, mask=mask, other=0.0).to(tl.float32)[:, None]
        out = out_ptr + ((bt * HKV + kvh) * G + j)[:, None] * D + cols[None, :]  # (B, T, H, D) contiguous
        tl.store(out, z.to(out_ptr.dtype.element_ty), mask=mask[:, None])


@triton.jit
def xsa_gate_bwd_kernel(do_ptr, y_ptr, v_ptr, g_ptr, c_ptr, dy_ptr, dv_ptr, dg_ptr, dc_ptr, n_rows, T, HKV,
                        sd_b, sd_t, sd_h, sy_b, sy_t, sy_h, sv_b, sv_t, sv_h, sg_b, sg_t, sg_h,
                        G: tl.constexpr, D: tl.constexpr, ROWS: tl.constexpr, HAS_GATE: tl.constexpr,
                        HAS_COEF: tl.constexpr, EPS: tl.constexpr):
    rows, mask, cols, vn, norm, kvh, bt = _tile(v_ptr, n_rows, T, HKV, sv_b, sv_t, sv_h, ROWS, D, EPS)
    y_base, _, _ = _row_bases(rows, T, HKV, sy_b, sy_t, sy_h * G)
    d_base, _, _ = _row_bases(rows, T, HKV, sd_b, sd_t, sd_h * G)
    g_base, _, _ = _row_bases(rows, T, HKV, sg_b, sg_t, sg_h * G)
    dvn = tl.zeros([ROWS, D], dtype=tl.float32)
    for j in tl.static_range(G):
        head = (bt * HKV + kvh) * G + j  # flat (b, t, h) index of the contiguous outputs
        y = tl.load(y_ptr + (y_base + j * sy_h)[:, None] + cols[None, :], mask=mask[:, None], other=0.0)
        y = y.to(tl.float32)
        do = tl.load(do_ptr + (d_base + j * sd_h)[:, None] + cols[None, :], mask=mask[:, None], other=0.0)
        do = do.to(tl.float32)
        a = tl.sum(y * vn, axis=1)
        c = 1.0
        if HAS_COEF:
            c = tl.load(c_ptr + kvh * G + j, mask=mask, other=0.0).to(tl.float32)
        s = tl.sum(do * vn, axis=1)  # d out . v^; times g below: three row sums per head, not four
        dz = do
        if HAS_GATE:
            g = tl.load(g_ptr + g_base + j * sg_h, mask=mask, other=0.0).to(tl.float32)
            tl.store(dg_ptr + head, tl.sum(do * y, axis=1) - c * a * s, mask=mask)
            dz = do * g[:, None]
            s *= g
        if HAS_COEF:
            tl.store(dc_ptr + head, -a * s, mask=mask)
        dy = dz - (c * s)[:, None] * vn
        tl.store(dy_ptr + head[:, None] * D + cols[None, :], dy.to(dy_ptr.dtype.element_ty), mask=mask[:, None])
        upd = a[:, None] * dz + s[:, None] * y
        if HAS_COEF:
            upd *= c[:, None]
        dvn -= upd
    proj = tl.sum(vn * dvn, axis=1)
    big = norm > EPS
    dv = tl.where(big[:, None], (dvn - vn * proj[:, None]) / tl.where(big, norm, 1.0)[:, None], dvn / EPS)
    tl.store(dv_ptr + rows[:, None] * D + cols[None, :], dv.to(dv_ptr.dtype.element_ty), mask=mask[:, None])


def _strides3(t: torch.Tensor | None) -> tuple[int, int, int]:
    return (0, 0, 0) if t is None else (t.stride(0), t.stride(1), t.stride(2))


def _launch_args(y, v, gate, coef, rows: int, num_warps: int):
    from pgolf.model.xsa_gate import NORM_EPS

    B, T, H, D = y.shape
    hkv = v.shape[2]
    n_rows = B * T * hkv
    meta = {"G": H // hkv, "D": D, "ROWS": rows, "HAS_GATE": gate is not None, "HAS_COEF": coef is not None,
            "EPS": NORM_EPS, "num_warps": num_warps}
    return (triton.cdiv(n_rows, rows),), n_rows, T, hkv, meta


def forward(y: torch.Tensor, v: torch.Tensor, gate: torch.Tensor | None, coef: torch.Tensor | None,
            rows: int = ROWS, num_warps: int = 4) -> torch.Tensor:
    """out (B, T, H, D); rows / num_warps: the launch shape (benchmarks/rowop_bench.py sweeps them)."""
    y, v, coef = unit_last_stride(y), unit_last_stride(v), unit_last_stride(coef)
    grid, n_rows, T, hkv, meta = _launch_args(y, v, gate, coef, rows, num_warps)
    out = torch.empty(y.shape, dtype=y.dtype, device=y.device)
    xsa_gate_fwd_kernel[grid](y, v, gate, coef, out, n_rows, T, hkv, *_strides3(y), *_strides3(v),
                              *_strides3(gate), **meta)
    return out


def backward(dout, y, v, gate, coef, rows: int = ROWS, num_warps: int = 4):
    """(d y, d v, d g, -a s per row); rows / num_warps as in forward."""
    dout, y, v, coef = (unit_last_stride(t) for t in (dout, y, v, coef))
    grid, n_rows, T, hkv, meta = _launch_args(y, v, gate, coef, rows, num_warps)
    dy = torch.empty(y.shape, dtype=y.dtype, device=y.device)
    dv = torch.empty(v.shape, dtype=v.dtype, device=v.device)
    dg = torch.empty(y.shape[:3] if gate is not None else (0,), dtype=torch.float32, device=y.device)
    dc = torch.empty(y.shape[:3] if coef is not None else (0,), dtype=torch.float32, device=y.device)
    xsa_gate_bwd_kernel[grid](dout, y, v, gate, coef, dy, dv, dg, dc, n_rows, T, hkv, *_strides3(dout),
                              *_strides3(y), *_strides3(v), *_strides3(gate), **meta)
    return dy, dv, dg, dc
