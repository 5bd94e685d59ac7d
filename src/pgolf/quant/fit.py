"""Budget fitter: choose the clip step (and, if needed, prune ±1 codes) so the artifact lands just under a limit.

The knob is a step multiplier alpha on every fitted row tensor (for SDClip, k <- alpha·k; PR #1394:
bytes fall monotonically as k grows, about n/8 bytes per doubling of the step for n weights). The
search works on x = log2(alpha) in [log2 fit_alpha_min, log2 fit_alpha_max]: a first guess from that
slope, then interpolation inside the bracket [fail, ok] (bisection-safeguarded) until the best fitting
artifact is within ``fit_tolerance_bytes`` of the limit or ``fit_max_iters`` trials are spent. If even
alpha_max is over, codes equal to ±1 (relative to the zero level) are zeroed cheapest first, cost =
row scale² (selective pruning, PR #609), the count chosen by the same bracket search.

Every size is measured by writing the real artifact (same codec spec and meta) to a temporary file,
so the returned state's artifact is <= the limit, byte for byte.

    res = fit_to_budget(mixed_quantizer, 16_000_000 - code_bytes, codec="pergroup", meta=meta)
    res.qs, res.alpha, res.bytes
"""

from __future__ import annotations

import math
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from pgolf.quant.rowwise import qmin_of
from pgolf.quant.state import QTensor, QuantizedState


class BudgetError(ValueError):
    """No setting within the fitter's range brings the artifact under the limit."""


@dataclass
class FitResult:
    qs: QuantizedState
    alpha: float
    pruned: int
    bytes: int
    limit: int
    trials: list[dict[str, Any]] = field(default_factory=list)
    artifact: bytes | None = None  # the chosen trial's artifact file as written (None with a custom `measure`)


def artifact_bytes(qs: QuantizedState, codec: str, meta: dict[str, Any]) -> bytes:
    """The artifact file that `write_artifact(qs, codec, meta)` produces."""
    from pgolf.export.artifact import write_artifact

    with tempfile.TemporaryDirectory(prefix="pgolf-fit-") as d:
        path = Path(d) / "fit.pgz"
        write_artifact(path, qs, codec=codec, meta=meta)
        return path.read_bytes()


def artifact_size(qs: QuantizedState, codec: str, meta: dict[str, Any]) -> int:
    """Bytes of the artifact file that `write_artifact(qs, codec, meta)` produces."""
    return len(artifact_bytes(qs, codec, meta))


def prune_order(qs: QuantizedState, names: list[str]) -> torch.Tensor:
    """(2, N) int64: tensor index into `names` and flat code index of every ±1 code, globally cheapest
    first (cost = row scale², ties in tensor then index order)."""
    costs, owners, idxs = [], [], []
    for ti, name in enumerate(names):
        qt = qs.tensors[name]
        if qt.meta.get("packed"):
            raise ValueError(f"prune_order: tensor {name!r} is packed; prune before packing")
        q = qt.parts["q"].to(torch.int16)
        z = qt.parts["zero"].to(torch.int16)[:, None] if "zero" in qt.parts else 0
        hit = (q - z).abs() == 1
        if "zero" in qt.parts:  # the zero level must itself be a storable code
            lo = qmin_of(qt)
            hit &= (z >= lo) & (z <= lo + 2 ** int(qt.meta["bits"]) - 1)
        if "awq_cols" in qt.parts:
            g = int(qt.meta["awq_group"])
            for st in qt.parts["awq_cols"].tolist():
                hit[:, st:st + g] = False
        flat = hit.reshape(-1).nonzero().squeeze(1)
        if flat.numel() == 0:
            continue
        costs.append(qt.parts["scale"].float().square()[:, None].expand_as(hit).reshape(-1)[flat])
        owners.append(torch.full_like(flat, ti))
        idxs.append(flat)
    if not costs:
        return torch.zeros(2, 0, dtype=torch.int64)
    order = torch.argsort(torch.cat(costs), stable=True)
    return torch.stack([torch.cat(owners)[order], torch.cat(idxs)[order]])


def apply_prune(qs: QuantizedState, order: torch.Tensor, names: list[str], n: int) -> QuantizedState:
    """A copy of `qs` with the first `n` codes of `order` set to their row's zero level."""
    if n <= 0 or order.shape[1] == 0:
        return qs
    owner, idx = order[0, :n], order[1, :n]
    out = QuantizedState(scheme=qs.scheme, tensors=dict(qs.tensors))
    for ti in owner.unique().tolist():
        name = names[ti]
        qt = qs.tensors[name]
        q = qt.parts["q"].clone()
        flat = q.view(-1)
        sel = idx[owner == ti]
        if "zero" in qt.parts:
            flat[sel] = qt.parts["zero"].to(torch.int8)[sel // q.shape[1]]
        else:
            flat[sel] = 0
        out.tensors[name] = QTensor(qt.scheme, {**qt.parts, "q": q}, {**qt.meta, "pruned": int(sel.numel())})
    return out


def _bracket(evaluate: Callable[[float], int], x_fail: float, s_fail: int, x_ok: float, s_ok: int, limit: int,
             tol: int, iters: int, integer: bool) -> tuple[float, int]:
    """Smallest x found with size <= limit, from a bracket x_fail < x_ok (size decreasing in x)."""
    target = limit - tol / 2
    for _ in range(iters):
        if limit - s_ok <= tol:
            break
        span = x_ok - x_fail
        x = x_fail + span * (s_fail - target) / max(s_fail - s_ok, 1)
        x = min(max(x, x_fail + 0.1 * span), x_ok - 0.1 * span)
        if integer:
            x = float(round(x))
            if x <= x_fail or x >= x_ok:
                break
        elif span < 1e-4:
            break
        s = evaluate(x)
        if s <= limit:
            x_ok, s_ok = x, s
        else:
            x_fail, s_fail = x, s
    return x_ok, s_ok


def fit_to_budget(mq: Any, limit: int, *, codec: str, meta: dict[str, Any], log: Callable[[str], None] | None = None,
                  measure: Callable[[QuantizedState], int] | None = None) -> FitResult:
    """Fit a `MixedQuantizer` (`build(alpha)`, `finalize(qs)`, `fit_numel`, `q`, `plans`) under `limit` bytes."""
    q = mq.q
    say = log or (lambda msg: None)
    written: dict[str, bytes] = {}  # the last trial's file: the chosen one is kept, not compressed again

    def write_and_measure(qs: QuantizedState) -> int:
        written["last"] = artifact_bytes(qs, codec, meta)
        return len(written["last"])

    size_of = measure or write_and_measure
    trials: list[dict[str, Any]] = []
    best: dict[str, Any] = {}
    clock = [time.perf_counter()]

    def record(qs: QuantizedState, size: int, alpha: float, pruned: int) -> int:
        now = time.perf_counter()
        seconds, clock[0] = now - clock[0], now
        blob = written.pop("last", None)
        trials.append({"alpha": alpha, "pruned": pruned, "bytes": size, "fits": size <= limit, "seconds": seconds})
        say(f"quant:fit alpha:{alpha:.4f} pruned:{pruned} bytes:{size} limit:{limit} fits:{size <= limit} "
            f"time:{seconds:.1f}s")
        if size <= limit and (not best or (pruned, alpha) < (best["pruned"], best["alpha"])):
            best.update(qs=qs, size=size, alpha=alpha, pruned=pruned, artifact=blob)
        return size

    def ev_alpha(x: float) -> int:
        alpha = 2.0 ** x
        qs = mq.finalize(mq.build(alpha))
        return record(qs, size_of(qs), alpha, 0)

    x_min, x_max = math.log2(q.fit_alpha_min), math.log2(q.fit_alpha_max)
    slope = max(mq.fit_numel / 8.0, 1.0)  # bytes per unit of log2(alpha)
    tol, iters = int(q.fit_tolerance_bytes), int(q.fit_max_iters)
    target = limit - tol / 2
    s1 = ev_alpha(0.0)
    if s1 <= limit:
        if limit - s1 > tol and x_min < 0:
            xg = max(x_min, -(target - s1) / slope)
            sg = ev_alpha(xg)
            if sg > limit:
                _bracket(ev_alpha, xg, sg, 0.0, s1, limit, tol, iters - 2, False)
            elif xg > x_min and limit - sg > tol:
                sm = ev_alpha(x_min)
                if sm > limit:
                    _bracket(ev_alpha, x_min, sm, xg, sg, limit, tol, iters - 3, False)
    else:
        x_fail, s_fail, spent = 0.0, s1, 2
        xg = min(x_max, (s1 - target) / slope)
        sg = ev_alpha(xg) if xg > 0 else s1
        if sg > limit and 0 < xg < x_max and sg < s1:  # the guess fell short: step on along the secant of the two
            x_fail, s_fail, spent = xg, sg, 3          # measured sizes before trying x_max (each trial compresses
            xg = min(x_max, xg + (sg - target) * xg / (s1 - sg))  # the whole artifact: 47 s at #1855's size, H100)
            sg = ev_alpha(xg)
        if sg <= limit:
            _bracket(ev_alpha, x_fail, s_fail, xg, sg, limit, tol, iters - spent, False)
        elif xg < x_max:
            sm = ev_alpha(x_max)
            if sm <= limit:
                _bracket(ev_alpha, xg, sg, x_max, sm, limit, tol, iters - spent - 1, False)
    if not best:
        _prune_fit(mq, limit, 2.0 ** x_max, size_of, record, tol, iters)
    if not best:
        raise BudgetError(f"cannot fit the artifact under {limit:,} bytes: smallest tried "
                          f"{min(t['bytes'] for t in trials):,} bytes (alpha up to {q.fit_alpha_max}, all ±1 pruned); "
                          "lower quant.matrix_bits/embed_bits or raise quant.fit_alpha_max")
    say(f"quant:fit chose alpha:{best['alpha']:.4f} pruned:{best['pruned']} bytes:{best['size']} "
        f"headroom:{limit - best['size']} trials:{len(trials)}")
    return FitResult(qs=best["qs"], alpha=best["alpha"], pruned=best["pruned"], bytes=best["size"], limit=limit,
                     trials=trials, artifact=best["artifact"])


def _prune_fit(mq: Any, limit: int, alpha: float, size_of, record, tol: int, iters: int) -> None:
    raw = mq.build(alpha)
    names = [n for n, p in mq.plans.items() if p.kind == "rows" and p.fit]
    order = prune_order(raw, names)
    total = int(order.shape[1])

    def ev_n(x: float) -> int:
        n = int(x)
        qs = mq.finalize(apply_prune(raw, order, names, n))
        return record(qs, size_of(qs), alpha, n)

    if total == 0:
        return
    s_all = ev_n(float(total))
    if s_all > limit:
        return
    _bracket(ev_n, 0.0, limit + 1, float(total), s_all, limit, tol, 2 * iters, True)
