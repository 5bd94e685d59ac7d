"""Muon: momentum SGD whose matrix update is orthogonalized by a Newton–Schulz iteration.

Per parameter W (rows × cols) with gradient g, momentum μ, learning rate η, decoupled weight decay λ::

    buf <- μ·buf + g
    u   <- g + μ·buf                     (Nesterov; plain momentum uses u = buf)
    u   <- u / max(‖u_row‖₂, 1e-7)       (only with row_normalize: MuonEq-R, arXiv:2603.28254; PR #1260/#1285)
    u   <- NS(u) · sqrt(max(1, rows/cols))
    W   <- W·(1 − η·λ) − η·u             (decoupled WD; η already includes the schedule multiplier)

NS is the quintic Newton–Schulz map (Keller Jordan, "Muon", 2024; the fixed coefficients
(3.4445, −4.7750, 2.0315) as in modded-nanogpt and the parameter-golf baseline): X = G/‖G‖_F in bf16,
transposed so that rows ≤ cols, then `steps` times ``A = X Xᵀ; X = aX + (bA + cA²)X``. It drives every
singular value towards ~1 (into roughly [0.7, 1.2], not exactly 1). ``coeffs`` may instead give one (a, b, c)
per step: `POLAR_EXPRESS_COEFFS` (Amsel et al., "The Polar Express", arXiv:2505.16932; parameter-golf PR #1344
→ #1787, TOP) are minimax-optimal per-step polynomials that land in a tighter band around 1 in the same 5 steps.

Speed: parameters of the same shape are stacked and orthogonalized in one batched call. With a
process group, those matrices are dealt round-robin to ranks, each rank orthogonalizes its share, and
the bf16 updates travel in one flat all-reduce (the baseline's scheme). The gradients must already be
identical on every rank (DDP), and every rank keeps the full momentum state, so the result equals
the single-process step and rank 0's `state_dict()` is complete. The owner of a matrix is
``k mod world`` where k counts matrices in (group, shape bucket, parameter) order, identical on every rank;
`owned_indices` exposes that split (the records' "parallel Muon", PR #399, instead reduce-scatters banked
gradients and keeps momentum only for the local shard; this form trades that memory for needing no
change to DDP or to checkpoints).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import torch
import torch.distributed as dist
from torch import Tensor

Coeffs = tuple[float, float, float] | Sequence[tuple[float, float, float]]

NS5_COEFFS: tuple[float, float, float] = (3.4445, -4.7750, 2.0315)

# Polar Express (arXiv:2505.16932), the 5 per-iteration tuples used by TOP (`_PE_COEFFS`, PR #1344 → #1787).
POLAR_EXPRESS_COEFFS: tuple[tuple[float, float, float], ...] = (
    (8.156554524902461, -22.48329292557795, 15.878769915207462),
    (4.042929935166739, -2.808917465908714, 0.5000178451051316),
    (3.8916678022926607, -2.772484153217685, 0.5060648178503393),
    (3.285753657755655, -2.3681294933425376, 0.46449024233003106),
    (2.3465413258596377, -1.7097828382687081, 0.42323551169305323),
)

NS_VARIANTS = ("ns5", "polar_express")


def ns_coeffs(variant: str, steps: int) -> Coeffs:
    """Coefficients for ``optim.muon_ns``: "ns5" (fixed triple, any number of steps) or "polar_express"
    (one tuple per step; at most 5 steps, the first `steps` tuples)."""
    if variant == "ns5":
        return NS5_COEFFS
    if variant == "polar_express":
        if not 1 <= steps <= len(POLAR_EXPRESS_COEFFS):
            raise ValueError(f"optim.muon_backend_steps={steps}: optim.muon_ns='polar_express' has "
                             f"{len(POLAR_EXPRESS_COEFFS)} per-step tuples, so use 1..{len(POLAR_EXPRESS_COEFFS)} steps")
        return POLAR_EXPRESS_COEFFS[:steps]
    raise ValueError(f"optim.muon_ns={variant!r} is not one of {', '.join(NS_VARIANTS)}")


def _coeff_schedule(coeffs: Coeffs, steps: int) -> list[tuple[float, float, float]]:
    """A single (a, b, c) is used at every step; a sequence of triples gives one per step (e.g. Polar Express)."""
    if len(coeffs) == 3 and all(isinstance(c, (int, float)) for c in coeffs):
        return [tuple(float(c) for c in coeffs)] * steps  # type: ignore[list-item]
    sched = [tuple(float(c) for c in abc) for abc in coeffs]  # type: ignore[union-attr]
    if len(sched) < steps or any(len(abc) != 3 for abc in sched):
        raise ValueError(f"muon: need {steps} (a, b, c) triples for {steps} Newton-Schulz steps, got {coeffs!r}")
    return sched[:steps]  # type: ignore[return-value]


def zeropower_newton_schulz(G: Tensor, steps: int = 5, coeffs: Coeffs = NS5_COEFFS, eps: float = 1e-7) -> Tensor:
    """Approximate the orthogonal polar factor of G (..., m, n) in bf16; leading dims are a batch.

    Each matrix is normalized by its own Frobenius norm, so a batched call equals per-matrix calls.
    """
    if G.ndim < 2:
        raise ValueError(f"zeropower_newton_schulz needs a matrix or a batch of matrices, got shape {tuple(G.shape)}")
    X = G.bfloat16()
    X = X / (torch.linalg.vector_norm(X, dim=(-2, -1), keepdim=True) + eps)
    transposed = G.size(-2) > G.size(-1)
    if transposed:
        X = X.mT
    for a, b, c in _coeff_schedule(coeffs, steps):
        A = X @ X.mT
        B = b * A + c * (A @ A)
        X = a * X + B @ X
    return X.mT if transposed else X


@functools.cache
def _compiled_ns():
    # One graph per (batch, rows, cols): a rank sees up to two batch sizes per shape, so a model with
    # many shapes can pass dynamo's default limit of 8 graphs and silently drop to eager. Raise it.
    from pgolf.compile_limits import raise_recompile_limit

    raise_recompile_limit(64)
    return torch.compile(zeropower_newton_schulz, dynamic=False)


def row_normalize(u: Tensor, eps: float = 1e-7) -> Tensor:
    """MuonEq-R (arXiv:2603.28254; PR #1260/#1285, TOP): divide every row of each matrix by its L2 norm
    (clamped at `eps`) before Newton–Schulz, computed in fp32, returned in u's dtype."""
    return u / u.float().norm(dim=-1, keepdim=True).clamp_min(eps).to(u.dtype)


def muon_scale(shape: Sequence[int]) -> float:
    """sqrt(max(1, rows/cols)) for the last two dims (Muon reference implementations)."""
    return max(1.0, shape[-2] / shape[-1]) ** 0.5


class Muon(torch.optim.Optimizer):
    """Muon over parameters with ndim >= 2 (the last two dims are the matrix, leading dims a batch).

    Param-group keys the loop may change every step: ``lr``, ``momentum``, ``weight_decay``;
    per group also ``row_normalize`` (MuonEq-R) and ``coeffs`` (NS5 or Polar Express).
    process_group: "auto" = the default group when torch.distributed is initialized, else single
    process; None = single process; or an explicit ProcessGroup.
    compile_ns: run the Newton–Schulz map through torch.compile when the parameters are on CUDA.
    """

    def __init__(
        self,
        params,
        lr: float = 0.04,
        momentum: float = 0.95,
        *,
        backend_steps: int = 5,
        nesterov: bool = True,
        coeffs: Coeffs = NS5_COEFFS,
        weight_decay: float = 0.0,
        row_normalize: bool = False,
        process_group="auto",
        compile_ns: bool = False,
    ):
        if lr < 0 or not 0.0 <= momentum < 1.0 or backend_steps < 1 or weight_decay < 0:
            raise ValueError(
                f"muon: bad hyperparameters lr={lr} momentum={momentum} backend_steps={backend_steps} "
                f"weight_decay={weight_decay}"
            )
        _coeff_schedule(coeffs, backend_steps)
        defaults = dict(lr=lr, momentum=momentum, backend_steps=backend_steps, nesterov=nesterov,
                        coeffs=coeffs, weight_decay=weight_decay, row_normalize=row_normalize)
        super().__init__(params, defaults)
        for group in self.param_groups:
            for p in group["params"]:
                if p.ndim < 2:
                    raise ValueError(f"muon: parameter of shape {tuple(p.shape)} is not a matrix; send it to Adam")
        self.process_group = process_group
        self.compile_ns = compile_ns

    def _dist(self):
        pg = self.process_group
        if isinstance(pg, str):
            if pg != "auto":
                raise ValueError(f"muon: process_group={pg!r} must be 'auto', None or a ProcessGroup")
            pg = dist.group.WORLD if dist.is_available() and dist.is_initialized() else None
        if pg is None:
            return None, 1, 0
        return pg, dist.get_world_size(pg), dist.get_rank(pg)

    def _ns(self, G: Tensor, steps: int, coeffs: Coeffs) -> Tensor:
        fn = _compiled_ns() if (self.compile_ns and G.is_cuda) else zeropower_newton_schulz
        return fn(G, steps, coeffs)

    def owned_indices(self) -> list[list[int]]:
        """Per param group, the indices (into ``group["params"]``) of the matrices this rank orthogonalizes,
        assuming every parameter has a gradient (the split `step` uses)."""
        _, world, rank = self._dist()
        out, k = [], 0
        for group in self.param_groups:
            buckets: dict[tuple[int, ...], list[int]] = {}
            for i, p in enumerate(group["params"]):
                buckets.setdefault(tuple(p.shape), []).append(i)
            mine = []
            for idx in buckets.values():
                for i in idx:
                    if k % world == rank:
                        mine.append(i)
                    k += 1
            out.append(sorted(mine))
        return out

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        pg, world, rank = self._dist()

        # Work list: (param group, params with a grad). Buckets of equal shape inside each group.
        work = []
        total = 0
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            grads = [p.grad for p in params]
            bufs = []
            for p in params:
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p.grad)
                bufs.append(state["momentum_buffer"])
            mu = group["momentum"]
            torch._foreach_mul_(bufs, mu)  # every rank keeps the full momentum state
            torch._foreach_add_(bufs, grads)
            buckets: dict[tuple[int, ...], list[int]] = {}
            for i, p in enumerate(params):
                buckets.setdefault(tuple(p.shape), []).append(i)
            work.append((group, params, grads, bufs, buckets))
            total += sum(p.numel() for p in params)
        if not work:
            return loss

        device = work[0][1][0].device
        flat = torch.zeros(total, device=device, dtype=torch.bfloat16)
        offsets: list[list[int]] = []  # per group, per param: start in `flat` (bucket order)
        offset = 0
        owner_counter = 0
        for group, params, grads, bufs, buckets in work:
            group_offsets = [0] * len(params)
            for shape, idx in buckets.items():
                mine = []
                for i in idx:
                    group_offsets[i] = offset
                    offset += params[i].numel()
                    if owner_counter % world == rank:
                        mine.append(i)
                    owner_counter += 1
                if not mine:
                    continue
                mu = group["momentum"]
                g = [grads[i] for i in mine]
                b = [bufs[i] for i in mine]
                u = torch._foreach_add(g, b, alpha=mu) if group["nesterov"] else b
                stacked = torch.stack(u) if len(u) > 1 else u[0].unsqueeze(0)
                if group.get("row_normalize", False):
                    stacked = row_normalize(stacked)
                out = self._ns(stacked, group["backend_steps"], group["coeffs"])
                out = out * muon_scale(shape)
                views = [flat[group_offsets[i] : group_offsets[i] + params[i].numel()].view(shape) for i in mine]
                torch._foreach_copy_(views, list(out.unbind(0)))
            offsets.append(group_offsets)

        if pg is not None and world > 1:
            dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=pg)

        # One cast of the whole buffer per parameter dtype (fp32 weights), then one foreach add per group.
        cast = {torch.bfloat16: flat}
        for (group, params, _, _, _), group_offsets in zip(work, offsets):
            lr, wd = group["lr"], group["weight_decay"]
            if wd:
                torch._foreach_mul_(params, 1.0 - lr * wd)
            updates = []
            for p, start in zip(params, group_offsets):
                if p.dtype not in cast:
                    cast[p.dtype] = flat.to(p.dtype)
                updates.append(cast[p.dtype][start : start + p.numel()].view_as(p))
            torch._foreach_add_(params, updates, alpha=-lr)
        return loss
