"""The quantized state: named stored tensors plus a small JSON-able meta dict per model tensor.

Every model tensor becomes one `QTensor` = (per-tensor scheme name, stored parts, meta). The meta
always carries ``shape``, ``dtype`` (original) and ``bits`` (bits per stored element of the main
part); a scheme may add its own JSON-able fields. Decoding looks the scheme up in a registry, so new
schemes (int6, GPTQ, LQER, ...) only need to `register_scheme` a dequantizer::

    qs = pgolf.quant.int8.quantize_state_dict(sd, cfg, keep_fp32=...)
    sd_hat = dequantize_state_dict(qs)          # exact original dtypes and shapes
    stats = tensor_error_stats(sd, sd_hat, qs)  # rel_err = ||w - w_hat||_F / ||w||_F per tensor

Two generic schemes live here: ``float`` (a float tensor stored in a possibly narrower float dtype)
and ``passthrough`` (stored bit-exact, e.g. non-float buffers).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import Tensor

Dequantizer = Callable[["QTensor"], Tensor]
_SCHEMES: dict[str, Dequantizer] = {}


def register_scheme(name: str) -> Callable[[Dequantizer], Dequantizer]:
    """Decorator: register `fn(qt) -> Tensor` as the dequantizer of per-tensor scheme `name`."""

    def deco(fn: Dequantizer) -> Dequantizer:
        if name in _SCHEMES and _SCHEMES[name] is not fn:
            raise ValueError(f"quant scheme {name!r} is already registered")
        _SCHEMES[name] = fn
        return fn

    return deco


def known_schemes() -> tuple[str, ...]:
    return tuple(sorted(_SCHEMES))


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def dtype_from_name(name: str) -> torch.dtype:
    """Inverse of `dtype_name`; only real torch dtypes are accepted (the name may come from a file)."""
    dt = getattr(torch, name, None) if isinstance(name, str) and name.isidentifier() else None
    if not isinstance(dt, torch.dtype):
        raise ValueError(f"unknown dtype name {name!r}")
    return dt


@dataclass
class QTensor:
    """One model tensor as stored: `parts` (named CPU tensors) decoded by per-tensor `scheme`."""

    scheme: str
    parts: dict[str, Tensor]
    meta: dict[str, Any]

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.meta["shape"])

    @property
    def dtype(self) -> torch.dtype:
        return dtype_from_name(self.meta["dtype"])

    @property
    def nbytes(self) -> int:
        """Bytes of the stored parts before compression."""
        return sum(p.numel() * p.element_size() for p in self.parts.values())


@dataclass
class QuantizedState:
    """Export scheme name + one `QTensor` per model tensor, in state-dict order."""

    scheme: str
    tensors: dict[str, QTensor] = field(default_factory=dict)

    @property
    def nbytes(self) -> int:
        return sum(qt.nbytes for qt in self.tensors.values())

    def summary(self) -> dict[str, Any]:
        """Counts and bytes by per-tensor scheme (JSON-able)."""
        by: dict[str, dict[str, int]] = {}
        for qt in self.tensors.values():
            row = by.setdefault(qt.scheme, {"tensors": 0, "numel": 0, "stored_bytes": 0})
            row["tensors"] += 1
            row["numel"] += _numel(qt.shape)
            row["stored_bytes"] += qt.nbytes
        return {"scheme": self.scheme, "tensors": len(self.tensors), "stored_bytes": self.nbytes, "by_scheme": by}


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for s in shape:
        n *= int(s)
    return n


def base_meta(t: Tensor, bits: int, **extra: Any) -> dict[str, Any]:
    return {"shape": list(t.shape), "dtype": dtype_name(t.dtype), "bits": int(bits), **extra}


# Schemes registered by modules that are imported on first use (keeps `import pgolf.quant.state` light).
_LAZY_SCHEMES = {"int8_row": "pgolf.quant.int8", "int8_tensor": "pgolf.quant.int8",
                 "int_row": "pgolf.quant.rowwise", "int_row_asym": "pgolf.quant.rowwise"}


def dequantize_tensor(name: str, qt: QTensor) -> Tensor:
    if qt.scheme not in _SCHEMES and qt.scheme in _LAZY_SCHEMES:
        import importlib

        importlib.import_module(_LAZY_SCHEMES[qt.scheme])
    fn = _SCHEMES.get(qt.scheme)
    if fn is None:
        raise ValueError(f"tensor {name!r}: unknown quant scheme {qt.scheme!r} (known: {', '.join(known_schemes())})")
    out = fn(qt).to(dtype=qt.dtype).reshape(qt.shape).contiguous()
    return out


def dequantize_state_dict(qs: QuantizedState) -> dict[str, Tensor]:
    """Decode every tensor back to its original dtype and shape (CPU tensors)."""
    return {name: dequantize_tensor(name, qt) for name, qt in qs.tensors.items()}


# ---- generic schemes -------------------------------------------------------------------------------


def keep_float(t: Tensor, store_dtype: torch.dtype) -> QTensor:
    """A float tensor stored as `store_dtype` (fp16 or fp32); decoded by casting back."""
    w = t.detach().to("cpu", dtype=store_dtype).contiguous()
    return QTensor("float", {"w": w}, base_meta(t, w.element_size() * 8))


def passthrough(t: Tensor) -> QTensor:
    """Stored bit-exact in its own dtype (non-float buffers)."""
    w = t.detach().to("cpu").contiguous()
    return QTensor("passthrough", {"w": w}, base_meta(t, w.element_size() * 8))


@register_scheme("float")
def _dequant_float(qt: QTensor) -> Tensor:
    return qt.parts["w"]


@register_scheme("passthrough")
def _dequant_passthrough(qt: QTensor) -> Tensor:
    return qt.parts["w"]


# ---- inspection ------------------------------------------------------------------------------------


def tensor_error_stats(
    original: dict[str, Tensor], decoded: dict[str, Tensor], qs: QuantizedState | None = None
) -> dict[str, dict[str, Any]]:
    """Per tensor: rel_err = ||w - w_hat||_F / ||w||_F, max_abs_err, numel, and scheme/bits/stored_bytes if `qs`."""
    out: dict[str, dict[str, Any]] = {}
    for name, w in original.items():
        if name not in decoded:
            raise KeyError(f"tensor {name!r} is missing from the decoded state dict")
        w_hat = decoded[name]
        row: dict[str, Any] = {"numel": int(w.numel())}
        if w.is_floating_point():
            a, b = w.detach().double().cpu(), w_hat.detach().double().cpu()
            diff = (a - b).reshape(-1)
            norm = float(a.norm())
            row["rel_err"] = float(diff.norm()) / norm if norm > 0 else float(diff.norm())
            row["max_abs_err"] = float(diff.abs().max()) if diff.numel() else 0.0
        else:
            row["rel_err"] = 0.0 if torch.equal(w.cpu(), w_hat.cpu()) else float("inf")
            row["max_abs_err"] = 0.0 if row["rel_err"] == 0.0 else float("inf")
        if qs is not None and name in qs.tensors:
            qt = qs.tensors[name]
            row.update(scheme=qt.scheme, bits=qt.meta.get("bits"), stored_bytes=qt.nbytes)
        out[name] = row
    return out
