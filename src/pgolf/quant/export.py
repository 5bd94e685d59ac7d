"""The export entry point: model -> `QuantizedState`, baseline int8 or the mixed per-class scheme.

    qs = export_model(model, cfg.quant, calib=training_batches(cfg, data, device),
                      byte_limit=cfg.budget_bytes - code_bytes, meta=artifact_meta)
    write_artifact(path, qs, codec=payload_codec(cfg.quant), meta=artifact_meta)

``quant.scheme=int8_rowwise`` is exactly the baseline (`pgolf.quant.int8.quantize_state_dict`).
``quant.scheme=mixed`` follows `pgolf.quant.plan` per tensor: row-wise codes with the configured clip
rule (RTN), or full GPTQ where a calibration Hessian exists (``quant.gptq``), with AWQ-lite columns
(``quant.awq_top_k``) inside GPTQ; then LQER factors on the top-k tensors by ||W - W_hat||_F
(``quant.lqer_rank``), each kept only if it lowers the error (H-weighted when H is known); then
optional ±1 pruning (budget fitter) and dense bit packing (``quant.pack_bits``). With
``quant.fit_budget`` the step multiplier alpha is searched so that the artifact, measured with the
given codec and meta, lands just under `byte_limit` (`pgolf.quant.fit`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor, nn

from pgolf.export.artifact import write_artifact
from pgolf.fileio import atomic_write_bytes
from pgolf.quant import awq
from pgolf.quant.calib import CalibStats, collect_hessians
from pgolf.quant.gptq import gptq_quantize, hessian_error
from pgolf.quant.lqer import lqer_fit
from pgolf.quant.options import payload_codec
from pgolf.quant.plan import TensorPlan, plan_tensors
from pgolf.quant.rowwise import (
    Grid,
    RowSpec,
    as_rows,
    dequantize_rows,
    make_row_qtensor,
    pack_qtensor,
    row_grid,
)
from pgolf.quant.state import QTensor, QuantizedState, keep_float, passthrough

SCHEME = "mixed"


def needs_calibration(q: Any) -> bool:
    return q.scheme == SCHEME and bool(q.gptq or q.awq_top_k or (q.lqer_rank and q.lqer_whiten))


class MixedQuantizer:
    """Holds the float weights, plans, Hessians and AWQ choices; `build(alpha)` quantizes everything."""

    def __init__(self, state: dict[str, Tensor], plans: dict[str, TensorPlan], q: Any, stats: CalibStats | None):
        self.state, self.plans, self.q, self.stats = state, plans, q, stats
        self.hessians = stats.hessians if stats is not None else {}
        self.awq_groups: dict[str, list[int]] = {}
        if q.awq_top_k and q.gptq:
            mats = {n: as_rows(t) for n, t in state.items() if self._gptq_ok(n)}
            self.awq_groups = awq.select_groups(mats, self.hessians, group=q.awq_group, top_k=q.awq_top_k)

    def _gptq_ok(self, name: str) -> bool:
        p = self.plans[name]
        return (self.q.gptq and p.kind == "rows" and p.cls in ("embed", "attn", "mlp", "other")
                and self.state[name].ndim == 2 and name in self.hessians)

    @property
    def fit_numel(self) -> int:
        return sum(self.state[n].numel() for n, p in self.plans.items() if p.kind == "rows" and p.fit)

    def _rows(self, name: str, t: Tensor, spec: RowSpec, alpha: float) -> QTensor:
        w2 = as_rows(t)
        grid = row_grid(w2, spec, alpha, where=name)
        if not self._gptq_ok(name):
            return make_row_qtensor(t, grid.quantize(w2), grid, spec, alpha)
        h = self.hessians[name].to(w2.device)
        starts = self.awq_groups.get(name, [])
        hi, mask = None, None
        if starts:
            g = self.q.awq_group
            mask = awq.protect_mask(w2.shape[1], starts, g).to(w2.device)
            r_hi = 2 ** (self.q.awq_bits - 1) - 1
            span = torch.maximum((grid.qmin - (grid.zero if grid.zero is not None else 0)) * grid.scale,
                                 (grid.qmax - (grid.zero if grid.zero is not None else 0)) * grid.scale).abs()
            hi = Grid((span / r_hi).clamp_min(2.0 ** -24).to(torch.float16).float(), None, -r_hi, r_hi)
        codes = gptq_quantize(w2, h, grid, block=self.q.gptq_block, damp=self.q.gptq_damp,
                              act_order=self.q.gptq_act_order, hi=hi, protect=mask, where=name)
        extra_parts, extra_meta = {}, {}
        if starts:
            extra_parts = {"awq_cols": torch.tensor(starts, dtype=torch.int32),
                           "awq_q": codes[:, mask].to("cpu", torch.int8).contiguous(),
                           "awq_scale": hi.scale.to("cpu", torch.float16)}
            extra_meta = {"awq_group": self.q.awq_group}
            codes = codes.clone()
            codes[:, mask] = grid.zero[:, None].expand(-1, int(mask.sum())) if grid.zero is not None else 0
        return make_row_qtensor(t, codes, grid, spec, alpha, method="gptq", extra_parts=extra_parts,
                                extra_meta=extra_meta)

    def build(self, alpha: float = 1.0) -> QuantizedState:
        """Quantize every tensor (codes unpacked; see `finalize`)."""
        qs = QuantizedState(scheme=SCHEME)
        for name, t in self.state.items():
            p = self.plans[name]
            if p.kind == "passthrough":
                qs.tensors[name] = passthrough(t)
            elif p.kind == "keep":
                qs.tensors[name] = keep_float(t, t.dtype)
            elif p.kind in ("float16", "float32"):
                qs.tensors[name] = keep_float(t, torch.float16 if p.kind == "float16" else torch.float32)
            else:
                qs.tensors[name] = self._rows(name, t, p.spec, alpha if p.fit else 1.0)
        if self.q.lqer_rank and self.q.lqer_top_k:
            self._lqer(qs)
        return qs

    def _lqer(self, qs: QuantizedState) -> None:
        err_of = lambda n: as_rows(self.state[n]).cpu() - dequantize_rows(qs.tensors[n])  # noqa: E731
        cands = []
        for name in qs.tensors:
            p = self.plans[name]
            if p.kind == "rows" and p.cls in ("embed", "attn", "mlp", "other") and self.state[name].ndim == 2:
                cands.append((float(err_of(name).norm()), name))
        cands.sort(key=lambda c: (-c[0], c[1]))
        for _, name in cands[: self.q.lqer_top_k]:
            err = err_of(name)
            h = self.hessians.get(name)
            parts, meta = lqer_fit(err, self.q.lqer_rank, asym=self.q.lqer_asym, group=self.q.lqer_group,
                                   factor_bits=self.q.lqer_factor_bits,
                                   hessian=h.cpu() if (self.q.lqer_whiten and h is not None) else None)
            qt = qs.tensors[name]
            cand = QTensor(qt.scheme, {**qt.parts, **parts}, {**qt.meta, "lqer": meta})
            w = as_rows(self.state[name]).cpu()
            if h is not None:
                before, after = (hessian_error(h.cpu(), w, dequantize_rows(x)) for x in (qt, cand))
            else:
                before, after = (float((w - dequantize_rows(x)).norm()) for x in (qt, cand))
            if after < before:
                qs.tensors[name] = cand

    def finalize(self, qs: QuantizedState) -> QuantizedState:
        """Bit-pack the codes when ``quant.pack_bits`` (a new state; the input is not modified)."""
        if not self.q.pack_bits:
            return qs
        out = QuantizedState(scheme=qs.scheme)
        for name, qt in qs.tensors.items():
            out.tensors[name] = pack_qtensor(qt)
        return out


def _resolve_stats(model: nn.Module, q: Any, calib: Any) -> CalibStats | None:
    if isinstance(calib, CalibStats):
        return calib
    if not needs_calibration(q):
        return None
    return collect_hessians(model, calib, max_batches=q.gptq_calib_batches)


def export_model(model: nn.Module, q: Any, *, calib: Any = None, byte_limit: int | None = None,
                 meta: dict[str, Any] | None = None, log: Callable[[str], None] | None = None,
                 policy_rows: Any = None, out_path: str | Path | None = None) -> QuantizedState:
    """Quantize `model` per `q` (a `QuantConfig`). `calib`: a `CalibStats`, or an iterable / callable of
    training token batches (used only when GPTQ, AWQ-lite or LQER whitening is on).
    `byte_limit` and `meta` are required with ``q.fit_budget`` (model bytes allowed, artifact meta).
    `out_path`: also write the artifact there (needs `meta`); with the fitter, its chosen trial's file, so the
    payload is not compressed once more (a trial took 47 s at #1855's size on an H100)."""
    if out_path is not None and meta is None:
        raise ValueError("export_model(out_path=...) needs meta= for the artifact's manifest")
    qs, blob = _export(model, q, calib=calib, byte_limit=byte_limit, meta=meta, log=log, policy_rows=policy_rows)
    if out_path is not None:
        if blob is not None:
            atomic_write_bytes(out_path, blob)
        else:
            write_artifact(out_path, qs, codec=payload_codec(q), meta=meta)
    return qs


def _export(model: nn.Module, q: Any, *, calib: Any, byte_limit: int | None, meta: dict[str, Any] | None,
            log: Callable[[str], None] | None, policy_rows: Any) -> tuple[QuantizedState, bytes | None]:
    """(quantized state, the fitter's artifact file or None)."""
    state = {k: v.detach() for k, v in model.state_dict().items()}
    if q.scheme == "int8_rowwise":
        from pgolf.model.gpt import control_param
        from pgolf.quant.int8 import quantize_state_dict

        return quantize_state_dict(model.state_dict(), q, keep_fp32=lambda n: control_param(n, state[n])), None
    if q.scheme != SCHEME:
        raise ValueError(f"quant.scheme={q.scheme!r} is not handled by pgolf.quant.export")
    say = log or (lambda msg: None)
    stats = _resolve_stats(model, q, calib)
    if stats is not None and not isinstance(calib, CalibStats):
        say(f"quant:calibration hessians:{len(stats.hessians)} batches:{stats.batches} time:{stats.seconds:.1f}s"
            + (f" (reserve {q.gptq_reserve_s:.1f}s)" if q.gptq_reserve_s else ""))
    mq = MixedQuantizer(state, plan_tensors(model, q, policy_rows), q, stats)
    if mq.awq_groups:
        say(f"quant:awq_lite groups:{mq.awq_groups}")
    if not q.fit_budget:
        return mq.finalize(mq.build(1.0)), None
    if byte_limit is None or meta is None:
        raise ValueError("quant.fit_budget=true needs export_model(..., byte_limit=, meta=)")
    from pgolf.quant.fit import fit_to_budget

    res = fit_to_budget(mq, int(byte_limit), codec=payload_codec(q), meta=meta, log=say)
    return res.qs, res.artifact
