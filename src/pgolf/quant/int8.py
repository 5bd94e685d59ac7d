"""Baseline int8 export (the scheme of the official ``train_gpt.py``, ``quantize_state_dict_int8``).

Per float tensor with more than ``keep_float_max_numel`` elements:

* 2-D → per row:  c_r = P_p(|W_r|) (p = ``clip_percentile``, linear interpolation),
  s_r = fp16(max(c_r / 127, 1/127)),  q = clamp(round(clip(W, ±c_r) / s_r), −127, 127),  Ŵ = q·s_r.
* other shapes → one fp32 scale: c = P_p(|W|), s = c/127 (1 if c = 0).

Smaller float tensors are kept as floats: fp32 when ``keep_fp32(name)`` (control tensors), else
fp16 (fp32 if a value would overflow fp16). Non-float tensors pass through bit-exact. Decoding
restores the original dtype and shape.
Unlike the baseline, q is computed with the fp16-rounded scale that decoding uses, so
|w − ŵ| ≤ s/2 holds exactly for unclipped values.

    qs = quantize_state_dict(model.state_dict(), cfg.quant, keep_fp32=is_control)
    sd = dequantize_state_dict(qs)
"""

from __future__ import annotations

from typing import Callable, Iterable

import torch
from torch import Tensor

from pgolf.config import QuantConfig
from pgolf.quant.state import (
    QTensor,
    QuantizedState,
    base_meta,
    dequantize_state_dict,
    keep_float,
    passthrough,
    register_scheme,
    tensor_error_stats,
)

__all__ = [
    "CONTROL_TENSOR_PATTERNS",
    "abs_quantile",
    "QuantizedState",
    "dequantize_state_dict",
    "name_matcher",
    "quantize_int8_rowwise",
    "quantize_int8_tensor",
    "quantize_state_dict",
    "tensor_error_stats",
]

# Name fragments of the baseline's control tensors (kept as fp32 there).
CONTROL_TENSOR_PATTERNS = (
    "attn_scale", "attn_scales", "mlp_scale", "mlp_scales", "resid_mix", "resid_mixes",
    "q_gain", "skip_weight", "skip_weights",
)
QMAX = 127
MIN_ROW_SCALE = 1.0 / 127.0  # baseline floor on the per-row scale
FP16_MAX = 65504.0  # small float tensors beyond this are kept as fp32 rather than overflow


def name_matcher(patterns: Iterable[str]) -> Callable[[str], bool]:
    """Predicate true when any pattern is a substring of the name (an exact name matches itself)."""
    pats = tuple(patterns)
    return lambda name: any(p in name for p in pats)


def abs_quantile(t: Tensor, q: float, dim: int | None = None) -> Tensor:
    """Quantile `q` in [0, 1] of |t| (over `dim`, or all elements), linear interpolation like
    `torch.quantile`, but via sort so that it has no input-size limit."""
    a = t.abs().reshape(-1) if dim is None else t.abs()
    d = -1 if dim is None else dim
    n = a.shape[d]
    if n == 0:
        raise ValueError("abs_quantile of an empty dimension")
    srt, _ = torch.sort(a, dim=d)
    # rank and weight in the tensor's dtype, then lerp: the same arithmetic as torch.quantile
    pos = torch.tensor(q, dtype=a.dtype) * (n - 1)
    lo = int(torch.floor(pos))
    hi = min(lo + 1, n - 1)
    v_lo, v_hi = srt.select(d, lo), srt.select(d, hi)
    return torch.lerp(v_lo, v_hi, float(pos - lo))


def quantize_int8_rowwise(w: Tensor, clip_percentile: float) -> QTensor:
    """2-D tensor → int8 `q` (rows, cols) + fp16 per-row `scale` (rows,)."""
    if w.ndim != 2:
        raise ValueError(f"per-row int8 needs a 2-D tensor, got shape {tuple(w.shape)}")
    w32 = w.detach().float()
    clip = abs_quantile(w32, clip_percentile / 100.0, dim=1)
    scale = (clip / QMAX).clamp_min(MIN_ROW_SCALE).to(torch.float16)
    if not bool(torch.isfinite(scale).all()):
        raise ValueError(f"per-row int8: a row clip exceeds the fp16 scale range (max clip {float(clip.max()):.4g})")
    s = scale.float()[:, None]
    clipped = torch.maximum(torch.minimum(w32, clip[:, None]), -clip[:, None])
    q = torch.clamp(torch.round(clipped / s), -QMAX, QMAX).to(torch.int8)
    parts = {"q": q.cpu().contiguous(), "scale": scale.cpu().contiguous()}
    return QTensor("int8_row", parts, base_meta(w, 8, clip_percentile=clip_percentile))


def quantize_int8_tensor(w: Tensor, clip_percentile: float) -> QTensor:
    """Any-shape tensor → int8 `q` + one fp32 `scale` (0-d)."""
    w32 = w.detach().float()
    clip = float(abs_quantile(w32, clip_percentile / 100.0)) if w32.numel() else 0.0
    scale = torch.tensor(clip / QMAX if clip > 0 else 1.0, dtype=torch.float32)
    q = torch.clamp(torch.round(torch.clamp(w32, -clip, clip) / scale), -QMAX, QMAX).to(torch.int8)
    parts = {"q": q.cpu().contiguous(), "scale": scale}
    return QTensor("int8_tensor", parts, base_meta(w, 8, clip_percentile=clip_percentile))


@register_scheme("int8_row")
def _dequant_int8_row(qt: QTensor) -> Tensor:
    return qt.parts["q"].float() * qt.parts["scale"].float()[:, None]


@register_scheme("int8_tensor")
def _dequant_int8_tensor(qt: QTensor) -> Tensor:
    return qt.parts["q"].float() * qt.parts["scale"].float()


def quantize_state_dict(
    state_dict: dict[str, Tensor],
    cfg: QuantConfig,
    *,
    keep_fp32: Callable[[str], bool] | Iterable[str],
) -> QuantizedState:
    """Quantize a state dict with the baseline int8 policy. `keep_fp32` is a predicate on names, or
    a collection of name fragments (see `name_matcher`), selecting small float tensors kept as fp32."""
    if cfg.scheme != "int8_rowwise":
        raise ValueError(f"quant.scheme={cfg.scheme!r} is not handled by pgolf.quant.int8")
    if not 0.0 < cfg.clip_percentile <= 100.0:
        raise ValueError(f"quant.clip_percentile must be in (0, 100], got {cfg.clip_percentile}")
    is_fp32 = keep_fp32 if callable(keep_fp32) else name_matcher(keep_fp32)
    qs = QuantizedState(scheme=cfg.scheme)
    for name, t in state_dict.items():
        if not isinstance(t, Tensor):
            raise TypeError(f"state dict entry {name!r} is a {type(t).__name__}, not a tensor")
        if not t.is_floating_point():
            qs.tensors[name] = passthrough(t)
            continue
        if not bool(torch.isfinite(t).all()):
            raise ValueError(f"tensor {name!r} has non-finite values; refusing to export it")
        if t.numel() <= cfg.keep_float_max_numel:
            fits_fp16 = t.numel() == 0 or float(t.detach().abs().max()) <= FP16_MAX
            qs.tensors[name] = keep_float(t, torch.float16 if fits_fp16 and not is_fp32(name) else torch.float32)
        elif t.ndim == 2:
            qs.tensors[name] = quantize_int8_rowwise(t, cfg.clip_percentile)
        else:
            qs.tensors[name] = quantize_int8_tensor(t, cfg.clip_percentile)
    return qs
