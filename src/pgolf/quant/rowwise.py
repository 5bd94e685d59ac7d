"""Row-wise integer quantization at 2..8 bits, symmetric or asymmetric, with the seeds' clip rules.

Per row r of W (rows = output features; tensors of other ranks are viewed as (shape[0], -1)):

* symmetric, R = 2^(b-1) - 1:  s_r = clip_r / R,  q = clamp(round(w / s_r), -R, R),  w_hat = q·s_r
* asymmetric, levels 0..2^b-1 over [lo_r, hi_r]:  s_r = (hi_r - lo_r) / (2^b - 1),
  z_r = round(-lo_r / s_r);  stored q = clamp(round(w / s_r) + z_r, 0, 2^b - 1) - 2^(b-1),
  zero = z_r - 2^(b-1) (int16),  w_hat = (q - zero)·s_r

Clip rules (techniques.md §4.E):

* ``percentile``  clip = P_p(|w|) (signed P_{1-p}/P_p when asymmetric); p = quant.clip_percentile (baseline)
* ``search``      GPTQ-lite (2026-03-22 record): per row try p in {0.999, 0.9995, 0.9999, 0.99999, 1.0}
                  and keep the lowest reconstruction MSE
* ``sdclip``      SDClip (PR #1394): clip = k·std(row), i.e. s = k·std/R; asymmetric: mean ± k·std
* ``absmax``      clip = max|w| (the int8 "quant gate" of PR #1736/#2123)

A step multiplier ``alpha`` (the budget fitter's knob) widens every row's step: s <- alpha·s. Scales
are stored as fp16 and q is computed with the rounded scale, so |w - w_hat| <= s/2 for values inside
the clip range. Extras decoded by the same schemes: AWQ-lite columns (``awq_*`` parts, PR #1908) and
an LQER low-rank correction (``lqer_*`` parts, PR #1797). Dense bit packing is `pack_qtensor`.

    qt = quantize_rowwise(w, RowSpec(bits=6, clip="sdclip", k=12.85))
    w_hat = dequantize_tensor("w", qt)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from pgolf.quant.int8 import abs_quantile
from pgolf.quant.lqer import lqer_correction
from pgolf.quant.pack import pack_bits, unpack_bits
from pgolf.quant.state import QTensor, base_meta, register_scheme

CLIP_RULES = ("percentile", "search", "sdclip", "absmax")
SEARCH_PERCENTILES = (0.999, 0.9995, 0.9999, 0.99999, 1.0)
MIN_SCALE = 2.0 ** -24  # smallest positive fp16 (subnormal)
FP16_MAX = 65504.0


@dataclass(frozen=True)
class RowSpec:
    """How one tensor is quantized: bits, symmetry, clip rule and its parameter."""

    bits: int = 6
    sym: bool = True
    clip: str = "sdclip"
    k: float = 12.85  # SDClip multiplier of the row std
    percentile: float = 99.99984  # percent, for clip="percentile"

    def __post_init__(self) -> None:
        if not isinstance(self.bits, int) or not 2 <= self.bits <= 8:
            raise ValueError(f"row quantization bits must be an int in 2..8, got {self.bits!r}")
        if self.clip not in CLIP_RULES:
            raise ValueError(f"clip rule {self.clip!r} is not one of {', '.join(CLIP_RULES)}")
        if self.clip == "sdclip" and not self.k > 0:
            raise ValueError(f"SDClip needs k > 0, got {self.k}")
        if self.clip == "percentile" and not 0.0 < self.percentile <= 100.0:
            raise ValueError(f"clip percentile must be in (0, 100], got {self.percentile}")

    @property
    def scheme(self) -> str:
        return "int_row" if self.sym else "int_row_asym"


@dataclass
class Grid:
    """Per-row integer grid: w_hat = (q - zero)·scale with q in [qmin, qmax] (scale, zero: (rows,) fp32)."""

    scale: Tensor
    zero: Tensor | None
    qmin: int
    qmax: int

    def quantize(self, w: Tensor) -> Tensor:
        """Integer codes for `w` (rows, ...) or one column (rows,); returned as float holding integers."""
        s = self.scale if w.ndim == 1 else self.scale[:, None]
        q = torch.round(w / s)
        if self.zero is not None:
            q = q + (self.zero if w.ndim == 1 else self.zero[:, None])
        return q.clamp_(self.qmin, self.qmax)

    def dequantize(self, q: Tensor) -> Tensor:
        s = self.scale if q.ndim == 1 else self.scale[:, None]
        if self.zero is not None:
            q = q - (self.zero if q.ndim == 1 else self.zero[:, None])
        return q * s


def as_rows(w: Tensor) -> Tensor:
    """A tensor as a float32 (rows, cols) matrix: 2-D as is, N-D as (shape[0], -1), 0/1-D as one row."""
    w = w.detach().float()
    return w.reshape(w.shape[0], -1) if w.ndim >= 2 else w.reshape(1, -1)


def _lerp_sorted(srt: Tensor, q: float) -> Tensor:
    """Quantile q of each row of an ascending-sorted matrix (torch.quantile's linear interpolation)."""
    n = srt.shape[1]
    pos = torch.tensor(q, dtype=srt.dtype) * (n - 1)
    lo = int(torch.floor(pos))
    hi = min(lo + 1, n - 1)
    return torch.lerp(srt[:, lo], srt[:, hi], float(pos - lo))


def _fp16_scale(s: Tensor, where: str) -> Tensor:
    s = torch.where(torch.isfinite(s) & (s > 0), s, torch.ones_like(s))
    if float(s.max()) > FP16_MAX:
        raise ValueError(f"{where}: a row scale {float(s.max()):.4g} exceeds the fp16 range")
    return s.clamp_min(MIN_SCALE).to(torch.float16).float()


def _sym_grid(clip: Tensor, bits: int, alpha: float, where: str) -> Grid:
    r = 2 ** (bits - 1) - 1
    return Grid(_fp16_scale(clip * alpha / r, where), None, -r, r)


def _asym_grid(lo: Tensor, hi: Tensor, bits: int, alpha: float, where: str) -> Grid:
    levels = 2 ** bits - 1
    mid, half = (lo + hi) / 2, (hi - lo).clamp_min(0) / 2 * alpha
    s = _fp16_scale(2 * half / levels, where)
    z = torch.round(-(mid - half) / s).clamp(-30000, 30000)
    off = 2 ** (bits - 1)
    return Grid(s, z - off, -off, off - 1)


def _row_mse(w: Tensor, g: Grid) -> Tensor:
    return (w - g.dequantize(g.quantize(w))).square().mean(dim=1)


def row_grid(w: Tensor, spec: RowSpec, alpha: float = 1.0, *, where: str = "tensor") -> Grid:
    """The per-row grid of `w` (rows, cols) under `spec`, step widened by `alpha`."""
    if not alpha > 0:
        raise ValueError(f"{where}: step multiplier alpha must be > 0, got {alpha}")
    w = w.float()
    if spec.sym:
        if spec.clip == "percentile":
            return _sym_grid(abs_quantile(w, spec.percentile / 100.0, dim=1), spec.bits, alpha, where)
        if spec.clip == "absmax":
            return _sym_grid(w.abs().amax(dim=1), spec.bits, alpha, where)
        if spec.clip == "sdclip":
            std = w.std(dim=1) if w.shape[1] > 1 else w.abs().reshape(-1)
            return _sym_grid(spec.k * std, spec.bits, alpha, where)
        srt = torch.sort(w.abs(), dim=1).values
        cands = [_sym_grid(_lerp_sorted(srt, p), spec.bits, 1.0, where) for p in SEARCH_PERCENTILES]
        best = torch.stack([_row_mse(w, g) for g in cands]).argmin(dim=0)
        clip = torch.stack([g.scale for g in cands]).gather(0, best[None]).squeeze(0) * (2 ** (spec.bits - 1) - 1)
        return _sym_grid(clip, spec.bits, alpha, where)
    if spec.clip == "percentile":
        srt = torch.sort(w, dim=1).values
        p = spec.percentile / 100.0
        return _asym_grid(_lerp_sorted(srt, 1.0 - p), _lerp_sorted(srt, p), spec.bits, alpha, where)
    if spec.clip == "absmax":
        return _asym_grid(w.amin(dim=1), w.amax(dim=1), spec.bits, alpha, where)
    if spec.clip == "sdclip":
        mean = w.mean(dim=1)
        std = w.std(dim=1) if w.shape[1] > 1 else torch.zeros_like(mean)
        return _asym_grid(mean - spec.k * std, mean + spec.k * std, spec.bits, alpha, where)
    srt = torch.sort(w, dim=1).values
    cands = [_asym_grid(_lerp_sorted(srt, 1.0 - p), _lerp_sorted(srt, p), spec.bits, 1.0, where)
             for p in SEARCH_PERCENTILES]
    best = torch.stack([_row_mse(w, g) for g in cands]).argmin(dim=0)
    lo = torch.stack([_lerp_sorted(srt, 1.0 - p) for p in SEARCH_PERCENTILES]).gather(0, best[None]).squeeze(0)
    hi = torch.stack([_lerp_sorted(srt, p) for p in SEARCH_PERCENTILES]).gather(0, best[None]).squeeze(0)
    return _asym_grid(lo, hi, spec.bits, alpha, where)


def spec_meta(spec: RowSpec, alpha: float) -> dict[str, Any]:
    out: dict[str, Any] = {"sym": spec.sym, "clip": spec.clip, "alpha": round(float(alpha), 6)}
    if spec.clip == "sdclip":
        out["k"] = spec.k
    elif spec.clip == "percentile":
        out["percentile"] = spec.percentile
    return out


def make_row_qtensor(w: Tensor, q: Tensor, grid: Grid, spec: RowSpec, alpha: float, *, method: str = "rtn",
                     extra_parts: dict[str, Tensor] | None = None, extra_meta: dict[str, Any] | None = None) -> QTensor:
    """Assemble the stored form: int8 codes `q` (rows, cols), fp16 scale, int16 zero when asymmetric."""
    parts = {"q": q.to("cpu", torch.int8).contiguous(), "scale": grid.scale.to("cpu", torch.float16).contiguous()}
    if grid.zero is not None:
        parts["zero"] = grid.zero.to("cpu", torch.int16).contiguous()
    parts.update(extra_parts or {})
    meta = base_meta(w, spec.bits, method=method, qshape=list(q.shape), **spec_meta(spec, alpha), **(extra_meta or {}))
    return QTensor(spec.scheme, parts, meta)


def quantize_rowwise(w: Tensor, spec: RowSpec, alpha: float = 1.0, *, where: str = "tensor") -> QTensor:
    """Round-to-nearest row-wise quantization of any float tensor."""
    w2 = as_rows(w)
    grid = row_grid(w2, spec, alpha, where=where)
    return make_row_qtensor(w, grid.quantize(w2), grid, spec, alpha)


def qmin_of(qt: QTensor) -> int:
    b = int(qt.meta["bits"])
    return -(2 ** (b - 1) - 1) if qt.scheme == "int_row" else -(2 ** (b - 1))


def q_matrix(qt: QTensor) -> Tensor:
    """The (rows, cols) int8 codes of a row-quantized tensor, unpacking if needed."""
    q = qt.parts["q"]
    if not qt.meta.get("packed"):
        return q
    rows, cols = qt.meta["qshape"]
    u = unpack_bits(q, int(qt.meta["bits"]), rows * cols)
    return (u.to(torch.int16) + qmin_of(qt)).to(torch.int8).reshape(rows, cols)


def pack_qtensor(qt: QTensor) -> QTensor:
    """The same tensor with its codes densely bit-packed (bits < 8 only; others returned unchanged)."""
    if qt.scheme not in ("int_row", "int_row_asym") or qt.meta.get("packed") or int(qt.meta["bits"]) >= 8:
        return qt
    u = (qt.parts["q"].to(torch.int16) - qmin_of(qt)).to(torch.uint8)
    parts = dict(qt.parts)
    parts["q"] = pack_bits(u, int(qt.meta["bits"]))
    return QTensor(qt.scheme, parts, {**qt.meta, "packed": True})


def dequantize_rows(qt: QTensor) -> Tensor:
    """(rows, cols) float32 reconstruction, including AWQ-lite columns and the LQER correction."""
    q = q_matrix(qt).float()
    s = qt.parts["scale"].float()[:, None]
    w = (q - qt.parts["zero"].float()[:, None]) * s if "zero" in qt.parts else q * s
    if "awq_cols" in qt.parts:
        g = int(qt.meta["awq_group"])
        hi = qt.parts["awq_q"].float() * qt.parts["awq_scale"].float()[:, None]
        for i, start in enumerate(qt.parts["awq_cols"].tolist()):
            w[:, start:start + g] = hi[:, i * g:(i + 1) * g]
    if "lqer_qa" in qt.parts:
        w = w + lqer_correction(qt.parts, qt.meta["lqer"])
    return w


@register_scheme("int_row")
def _dequant_int_row(qt: QTensor) -> Tensor:
    return dequantize_rows(qt)


@register_scheme("int_row_asym")
def _dequant_int_row_asym(qt: QTensor) -> Tensor:
    return dequantize_rows(qt)
