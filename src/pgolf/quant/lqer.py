"""LQER: low-rank reconstruction of the quantization error (PR #1797; Zhang et al. 2024, "LQER").

After quantization, E = W - W_hat. A rank-r truncated SVD gives E ≈ A·B with A = U_r·S_r (rows x r)
and B = V_r^T (r x cols). The factors are stored in few bits ("asymmetric" packing of PR #1797):

* A: int2 values {-2, -1, 0, 1}, one fp16 scale per rank component (searched around max|A_:i|/1.5).
  PR #1797 uses one scale for the whole of A; since the components of U·S decay with S, that
  rounds every component after the first to zero, so here each column gets its own (r fp16 values).
  Each component's sign is chosen so that its largest |value| is negative (the wide side of the int2
  grid); flipping a column of A together with the row of B leaves A·B unchanged.
* B: int4 values {-8..7} per group of g consecutive elements of flattened B, s = max|group|/7.5.

``asym=False`` stores both factors per row at ``factor_bits`` (the symmetric fallback). With a
calibration Hessian (``hessian=H``, data whitening as in SVD-LLM, Wang et al. 2024) the SVD is taken
of E·L with H + damp·I = L·L^T, then B <- B·L^-1: the truncation is then optimal for the layer-output
error ||X (E - A B)^T||, not for ||E||_F.

    parts, meta = lqer_fit(E, rank=4, group=64)
    W_hat_corrected = W_hat + lqer_correction(parts, meta)
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

A_LEVELS = (-2, 1)  # int2
B_LEVELS = (-8, 7)  # int4


def _q(x: Tensor, s: Tensor, lo: int, hi: int) -> Tensor:
    return torch.clamp(torch.round(x / s), lo, hi)


def _fp16(s: Tensor) -> Tensor:
    return torch.where(s > 0, s, torch.ones_like(s)).clamp(2.0 ** -24, 65504.0).to(torch.float16).float()


def _pack_a(a: Tensor) -> tuple[Tensor, Tensor]:
    """int2 codes and one fp16 scale per column of A, each chosen from a few candidates by MSE."""
    qs, ss = [], []
    for j in range(a.shape[1]):
        col = a[:, j]
        m = float(col.abs().max()) if col.numel() else 0.0
        best = None
        for div in (1.0, 1.5, 2.0, 2.5, 3.0):
            s = _fp16(torch.tensor(m / div))
            q = _q(col, s, *A_LEVELS)
            err = float((q * s - col).square().sum())
            if best is None or err < best[0]:
                best = (err, q, s)
        qs.append(best[1])
        ss.append(best[2])
    return torch.stack(qs, dim=1), torch.stack(ss)


def _pack_b_groups(b: Tensor, group: int) -> tuple[Tensor, Tensor]:
    flat = b.reshape(-1)
    n = flat.numel()
    ng = (n + group - 1) // group
    pad = torch.zeros(ng * group, dtype=flat.dtype, device=flat.device)
    pad[:n] = flat
    g = pad.view(ng, group)
    s = _fp16(g.abs().amax(dim=1) / 7.5)
    q = _q(g, s[:, None], *B_LEVELS).reshape(-1)[:n].reshape(b.shape)
    return q, s


def _pack_rows(x: Tensor, bits: int) -> tuple[Tensor, Tensor]:
    r = 2 ** (bits - 1) - 1
    s = _fp16(x.abs().amax(dim=1) / r)
    return _q(x, s[:, None], -r, r), s


def lqer_fit(err: Tensor, rank: int, *, asym: bool = True, group: int = 64, factor_bits: int = 4,
             hessian: Tensor | None = None, damp: float = 0.01) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Quantized rank-`rank` factors of the error matrix `err` (rows, cols): parts + meta for `lqer_correction`."""
    if rank < 1:
        raise ValueError(f"LQER rank must be >= 1, got {rank}")
    if group < 1 or not 2 <= factor_bits <= 8:
        raise ValueError(f"LQER needs group >= 1 and 2 <= factor_bits <= 8, got group={group} bits={factor_bits}")
    e = err.float()
    chol = None
    if hessian is not None:
        h = hessian.float().to(e.device)
        h = h + damp * float(h.diagonal().mean().clamp_min(1e-12)) * torch.eye(h.shape[0], device=e.device)
        chol, info = torch.linalg.cholesky_ex(h)
        if int(info) != 0:
            chol = None
        else:
            e = e @ chol
    r = min(rank, *e.shape)
    u, sv, vh = torch.linalg.svd(e, full_matrices=False)
    a = u[:, :r] * sv[:r]
    b = vh[:r]
    if chol is not None:  # b <- b L^-1
        b = torch.linalg.solve_triangular(chol.T, b.T, upper=True).T
    # sign convention: the largest |value| of each component of A is negative
    idx = a.abs().argmax(dim=0)
    sign = -torch.sign(a.gather(0, idx[None]).squeeze(0))
    sign = torch.where(sign == 0, torch.ones_like(sign), sign)
    a, b = a * sign[None, :], b * sign[:, None]
    if asym:
        qa, sa = _pack_a(a)
        qb, sb = _pack_b_groups(b, group)
        parts = {"lqer_qa": qa.to("cpu", torch.int8), "lqer_sa": sa.to("cpu", torch.float16),
                 "lqer_qb": qb.to("cpu", torch.int8), "lqer_sb": sb.to("cpu", torch.float16)}
        return parts, {"rank": r, "asym": True, "group": group}
    qa, sa = _pack_rows(a.T.contiguous(), factor_bits)  # per rank component
    qb, sb = _pack_rows(b, factor_bits)
    parts = {"lqer_qa": qa.T.contiguous().to("cpu", torch.int8), "lqer_sa": sa.to("cpu", torch.float16),
             "lqer_qb": qb.to("cpu", torch.int8), "lqer_sb": sb.to("cpu", torch.float16)}
    return parts, {"rank": r, "asym": False, "bits": factor_bits}


def lqer_correction(parts: dict[str, Tensor], meta: dict[str, Any]) -> Tensor:
    """(rows, cols) float32 correction A_hat·B_hat from the stored factors."""
    qa, qb = parts["lqer_qa"].float(), parts["lqer_qb"].float()
    a = qa * parts["lqer_sa"].float()[None, :]  # one scale per rank component
    if meta.get("asym", True):
        g = int(meta["group"])
        flat = qb.reshape(-1)
        s = parts["lqer_sb"].float().repeat_interleave(g)[: flat.numel()]
        b = (flat * s).reshape(qb.shape)
    else:
        b = qb * parts["lqer_sb"].float()[:, None]
    return a @ b
