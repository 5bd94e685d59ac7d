"""AWQ-lite (PR #1908, used by PR #2123): keep the most activation-salient input-column groups on int8.

Saliency of the input-column group j (``group`` consecutive columns) of matrix W:
``sal_j = sum_{c in j} act_rms[c] · mean_r |W[r, c]|`` with ``act_rms = sqrt(diag H)`` from the
calibration Hessian (H = X^T X / n). Over all candidate matrices together, the ``top_k`` groups are
quantized inside GPTQ on a finer symmetric grid of ``bits`` bits (int8: ±127) with the same clip as
the row's main grid (s_hi = clip_row / (2^(bits-1) - 1)). Only whole groups are candidates.

    chosen = select_groups({"blocks.0.mlp.fc.weight": W}, {"blocks.0.mlp.fc.weight": H}, group=64, top_k=1)
    # -> {"blocks.0.mlp.fc.weight": [128]}   (column starts)
"""

from __future__ import annotations

import torch
from torch import Tensor


def group_saliency(w: Tensor, h: Tensor, group: int) -> Tensor:
    """Saliency of each whole group of `group` input columns of w (rows, cols)."""
    cols = w.shape[1]
    n = cols // group
    if n == 0:
        return torch.zeros(0)
    act_rms = h.float().diagonal().clamp_min(0).sqrt().cpu()
    per_col = act_rms * w.detach().float().abs().mean(dim=0).cpu()
    return per_col[: n * group].view(n, group).sum(dim=1)


def select_groups(weights: dict[str, Tensor], hessians: dict[str, Tensor], *, group: int,
                  top_k: int) -> dict[str, list[int]]:
    """Column starts of the globally top-k salient groups, per tensor name (names sorted for determinism)."""
    if group < 1:
        raise ValueError(f"AWQ-lite group size must be >= 1, got {group}")
    cands: list[tuple[float, str, int]] = []
    for name in sorted(weights):
        if name not in hessians:
            continue
        sal = group_saliency(weights[name], hessians[name], group)
        cands.extend((float(v), name, i * group) for i, v in enumerate(sal.tolist()))
    cands.sort(key=lambda t: (-t[0], t[1], t[2]))
    out: dict[str, list[int]] = {}
    for _, name, start in cands[: max(top_k, 0)]:
        out.setdefault(name, []).append(start)
    return {k: sorted(v) for k, v in out.items()}


def protect_mask(cols: int, starts: list[int], group: int) -> Tensor:
    mask = torch.zeros(cols, dtype=torch.bool)
    for s in starts:
        mask[s:s + group] = True
    return mask
