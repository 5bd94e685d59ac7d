"""Full-Hessian GPTQ (Frantar et al. 2022, "GPTQ"; record lineage 2026-03-25 and PR #1855 / TOP).

For W (rows x cols, columns = input features) and H = X^T X / n from calibration inputs X:

1. dead columns (H_jj = 0): H_jj <- 1, W[:, j] <- 0
2. damping: H <- H + damp·mean(diag H)·I                                   (damp = 0.01)
3. act-order: permute columns by diag(H), largest first
4. U = upper Cholesky factor of H^-1 (H^-1 via cholesky_inverse(cholesky(H)))
5. blocks of 128 columns: quantize column j on the *fixed* per-row grid (scale chosen up front by the
   clip rule), err_j = (w_j - w_hat_j) / U_jj, update the block's later columns by -err_j·U[j, j+1:],
   then the columns after the block by -Err_block · U[block, after]

Columns flagged ``protect`` (AWQ-lite, PR #1908) use a second, finer grid `hi`.

    q, q_hi = gptq_quantize(W, H, grid, hi=hi_grid, protect=mask)
"""

from __future__ import annotations

import torch
from torch import Tensor

from pgolf.quant.rowwise import Grid


def _upper_inverse_cholesky(h: Tensor, damp: float, where: str) -> Tensor:
    """Upper Cholesky factor of (H + damp·mean(diag)·I)^-1, raising the damping if H is not positive definite."""
    diag_mean = float(h.diagonal().mean())
    eye = torch.eye(h.shape[0], dtype=h.dtype, device=h.device)
    d = damp
    for _ in range(6):
        hd = h + (d * diag_mean if diag_mean > 0 else d) * eye
        chol, info = torch.linalg.cholesky_ex(hd)
        if int(info) == 0:
            hinv = torch.cholesky_inverse(chol)
            u, info = torch.linalg.cholesky_ex(hinv, upper=True)
            if int(info) == 0:
                return u
        d *= 10.0
    raise ValueError(f"GPTQ {where}: the Hessian is not positive definite even with damping {d / 10:g}")


@torch.no_grad()
def gptq_quantize(w: Tensor, h: Tensor, grid: Grid, *, block: int = 128, damp: float = 0.01,
                  act_order: bool = True, hi: Grid | None = None, protect: Tensor | None = None,
                  where: str = "tensor") -> Tensor:
    """Integer codes (rows, cols) of `w` on `grid` (and on `hi` where `protect` is true), float-valued,
    on w's device. Error feedback uses `h` (cols x cols)."""
    if w.ndim != 2 or h.shape != (w.shape[1], w.shape[1]):
        raise ValueError(f"GPTQ {where}: weight {tuple(w.shape)} and Hessian {tuple(h.shape)} do not match")
    if block < 1:
        raise ValueError(f"GPTQ block size must be >= 1, got {block}")
    dev = w.device
    W = w.detach().float().clone()
    H = h.detach().float().to(dev).clone()
    cols = W.shape[1]
    prot = torch.zeros(cols, dtype=torch.bool, device=dev) if protect is None else protect.to(dev).bool()
    if prot.any() and hi is None:
        raise ValueError(f"GPTQ {where}: protected columns need a `hi` grid")
    dead = H.diagonal() == 0
    H[dead, dead] = 1.0
    W[:, dead] = 0.0
    perm = torch.argsort(H.diagonal(), descending=True, stable=True) if act_order else torch.arange(cols, device=dev)
    W, H, prot = W[:, perm], H[perm][:, perm], prot[perm]
    U = _upper_inverse_cholesky(H, damp, where)
    Q = torch.zeros_like(W)
    prot_list = prot.tolist()
    for i1 in range(0, cols, block):
        i2 = min(i1 + block, cols)
        W1 = W[:, i1:i2].clone()
        E1 = torch.zeros_like(W1)
        U1 = U[i1:i2, i1:i2]
        for j in range(i2 - i1):
            col = W1[:, j]
            g = hi if prot_list[i1 + j] else grid
            q = g.quantize(col)
            Q[:, i1 + j] = q
            e = (col - g.dequantize(q)) / U1[j, j]
            if j + 1 < i2 - i1:
                W1[:, j + 1:] -= e[:, None] * U1[j, j + 1:][None, :]
            E1[:, j] = e
        if i2 < cols:
            W[:, i2:] -= E1 @ U[i1:i2, i2:]
    inv = torch.empty_like(perm)
    inv[perm] = torch.arange(cols, device=dev)
    return Q[:, inv]


def layer_output_error(x: Tensor, w: Tensor, w_hat: Tensor) -> float:
    """||X W^T - X W_hat^T||_F / ||X W^T||_F: what GPTQ minimizes (used by tests and the LQER gain check)."""
    ref = x.float() @ w.float().T
    return float((ref - x.float() @ w_hat.float().T).norm() / ref.norm().clamp_min(1e-30))


def hessian_error(h: Tensor, w: Tensor, w_hat: Tensor) -> float:
    """tr(D H D^T) with D = W - W_hat: the layer-output squared error per calibration row, from H alone."""
    d = (w.float() - w_hat.float()).to(h.device)
    return float(((d @ h.float()) * d).sum())
