"""Build the optimizer pair (Muon + Adam) from the parameter policy table.

    opt = build_optimizers(model, cfg.optim, policy_rows=policy_for(cfg.model))
    for step in ...:                          # frac = elapsed fraction of the run (train/schedule.py)
        opt.set_muon_momentum(muon_momentum_at(step, cfg.optim, frac))
        opt.set_lr_mul(lr_mul)                # every group: lr = base_lr * lr_mul
        opt.set_wd_mul(wd_mul(frac, cfg.optim))  # Muon groups: weight_decay = base_wd * mul
        ...backward...
        opt.step(); opt.zero_grad(set_to_none=True)

One param group per (optimizer, lr_key, wd_key) in the order the rows are first met in
``model.named_parameters()``, so two builds of the same model have the same layout and a
`state_dict()` reloads bit-exactly. Adam is the baseline's (betas (beta1, beta2), eps, fused on CUDA);
a row with ``wd_key`` gets decoupled (AdamW-style) weight decay ``p *= 1 - lr·wd`` with the scheduled lr.

Optimizer techniques (OptimConfig "optimizer techniques"; all off by default):
    muon_ns="polar_express"       per-step NS coefficients (arXiv:2505.16932; PR #1344 → #1787)
    muon_row_normalize            MuonEq-R (arXiv:2603.28254; PR #1260/#1285)
    muon_wd, embed_wd, adam_wd    decoupled WD for Muon, the token embedding, control tensors (TOP 0.095/0.085/0.02)
    wd_taper_*                    Muon WD x wd_mul(frac): 1 until start_frac, then linear to final_mul at frac 1
                                  (2026-04-18 record / PR #1729: 0.70 -> 0.5)
    muon_momentum_warmup_frac     momentum warmup over a fraction of the run instead of a step count
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from pgolf.config import OptimConfig
from pgolf.optim.muon import Muon, ns_coeffs
from pgolf.optim.policy import DEFAULT_POLICY, PolicyRow, policy_for, resolve_policy


def muon_momentum_at(step: int, cfg: OptimConfig, frac: float | None = None) -> float:
    """Momentum warmup: linear from muon_momentum_warmup_start to muon_momentum over muon_momentum_warmup_steps
    steps (baseline; PR #102: 0.92 -> 0.99 over 1500), or, when muon_momentum_warmup_frac > 0, over that
    fraction of the run (`frac` = elapsed fraction, required then), so a preset carries over between scales."""
    wfrac = getattr(cfg, "muon_momentum_warmup_frac", 0.0)
    if wfrac > 0:
        if frac is None:
            raise ValueError("optim.muon_momentum_warmup_frac > 0 needs the elapsed fraction: "
                             "call muon_momentum_at(step, cfg, frac=...)")
        t = min(max(frac, 0.0) / wfrac, 1.0)
    elif cfg.muon_momentum_warmup_steps <= 0:
        return cfg.muon_momentum
    else:
        t = min(max(step, 0) / cfg.muon_momentum_warmup_steps, 1.0)
    return (1.0 - t) * cfg.muon_momentum_warmup_start + t * cfg.muon_momentum


def wd_mul(frac: float, cfg: OptimConfig) -> float:
    """Tapered weight decay (2026-04-18 record, PR #1729 `wd_mul`): 1 for frac <= wd_taper_start_frac, then
    linear to wd_taper_final_mul at frac = 1. Multiplies the Muon groups' weight decay (as the record)."""
    start = min(max(getattr(cfg, "wd_taper_start_frac", 1.0), 0.0), 1.0)
    final = getattr(cfg, "wd_taper_final_mul", 1.0)
    if final == 1.0 or frac <= start or start >= 1.0:
        return 1.0
    t = min((frac - start) / (1.0 - start), 1.0)
    return 1.0 + (final - 1.0) * t


def check_optim_techniques(cfg: OptimConfig) -> None:
    """Validate the "optimizer techniques" fields; errors name the field."""
    from pgolf.optim.muon import ns_coeffs

    ns_coeffs(getattr(cfg, "muon_ns", "ns5"), cfg.muon_backend_steps)
    for key in ("muon_wd", "embed_wd", "adam_wd", "wd_taper_final_mul", "muon_momentum_warmup_frac"):
        v = getattr(cfg, key, 0.0)
        if not v >= 0:
            raise ValueError(f"optim.{key}={v} must be >= 0")
    if not 0.0 <= getattr(cfg, "wd_taper_start_frac", 1.0) <= 1.0:
        raise ValueError(f"optim.wd_taper_start_frac={cfg.wd_taper_start_frac} must be in [0, 1]")
    if getattr(cfg, "muon_momentum_warmup_frac", 0.0) > 1.0:
        raise ValueError(f"optim.muon_momentum_warmup_frac={cfg.muon_momentum_warmup_frac} must be in [0, 1]")


def _cfg_value(cfg: OptimConfig, key: str, row: PolicyRow, what: str) -> float:
    if not hasattr(cfg, key):
        raise ValueError(f"policy row {row.name!r}: {what}={key!r} is not a field of OptimConfig")
    return float(getattr(cfg, key))


@dataclass
class Optimizers:
    """Muon (may be None) + one Adam, with the policy table that built them."""

    muon: Muon | None
    adam: torch.optim.Adam | None
    policy: dict[str, PolicyRow]
    group_names: dict[str, list[list[str]]] = field(default_factory=dict)  # optim -> per-group param names

    @property
    def optimizers(self) -> list[torch.optim.Optimizer]:
        return [o for o in (self.muon, self.adam) if o is not None]

    def param_groups(self) -> Iterable[dict[str, Any]]:
        for o in self.optimizers:
            yield from o.param_groups

    def step(self) -> None:
        for o in self.optimizers:
            o.step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        for o in self.optimizers:
            o.zero_grad(set_to_none=set_to_none)

    def set_lr_mul(self, mul: float) -> None:
        for g in self.param_groups():
            g["lr"] = g["base_lr"] * mul

    def set_wd_mul(self, mul: float) -> None:
        """Muon groups: weight_decay = base_wd * mul (tapered WD, see `wd_mul`)."""
        if self.muon is not None:
            for g in self.muon.param_groups:
                g["weight_decay"] = g["base_wd"] * mul

    def set_muon_momentum(self, momentum: float) -> None:
        if self.muon is not None:
            for g in self.muon.param_groups:
                g["momentum"] = momentum

    def state_dict(self) -> dict[str, Any]:
        """Live references, as torch's own `state_dict` (deepcopy or torch.save it before stepping on)."""
        return {
            "muon": None if self.muon is None else self.muon.state_dict(),
            "adam": None if self.adam is None else self.adam.state_dict(),
        }

    def load_state_dict(self, sd: dict[str, Any]) -> None:
        for key, opt in (("muon", self.muon), ("adam", self.adam)):
            if (opt is None) != (sd.get(key) is None):
                raise ValueError(f"optimizer state: {key!r} is {'absent' if sd.get(key) is None else 'present'} "
                                 f"in the checkpoint but the model has {'no' if opt is None else 'a'} {key} optimizer")
            if opt is not None:
                opt.load_state_dict(sd[key])

    def summary(self) -> list[str]:
        """One line per param group, for the run log."""
        lines = []
        for kind, opt in (("muon", self.muon), ("adam", self.adam)):
            if opt is None:
                continue
            for g, names in zip(opt.param_groups, self.group_names.get(kind, [])):
                n = sum(p.numel() for p in g["params"])
                lines.append(f"{kind} {g['lr_key']}={g['base_lr']:g} wd={g['weight_decay']:g} "
                             f"tensors={len(g['params'])} params={n}")
        return lines


def build_optimizers(
    model: nn.Module,
    optim_cfg: OptimConfig,
    *,
    policy_rows: Iterable[PolicyRow] | None = None,
    process_group="auto",
    compile_ns: bool | None = None,
    fused: bool | None = None,
) -> Optimizers:
    """Split `model`'s trainable parameters by the policy table into Muon and Adam param groups.

    policy_rows: None = ``policy_for(model.cfg)`` if the model has a ``cfg``, else `DEFAULT_POLICY`.

    compile_ns / fused: None = on when the parameters are on CUDA.
    """
    if policy_rows is None:  # the model's own config when it carries one (pgolf GPT does), else the tied baseline
        cfg = getattr(model, "cfg", None)
        policy_rows = policy_for(cfg) if cfg is not None else DEFAULT_POLICY
    check_optim_techniques(optim_cfg)
    rows = tuple(policy_rows)
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    table = resolve_policy(named, rows)
    on_cuda = bool(named) and all(p.is_cuda for _, p in named)

    groups: dict[str, dict[tuple[str, str | None], dict[str, Any]]] = {"muon": {}, "adam": {}}
    names: dict[str, dict[tuple[str, str | None], list[str]]] = {"muon": {}, "adam": {}}
    for pname, p in named:
        row = table[pname]
        key = (row.lr_key, row.wd_key)
        bucket = groups[row.optim]
        if key not in bucket:
            lr = _cfg_value(optim_cfg, row.lr_key, row, "lr_key")
            wd = 0.0 if row.wd_key is None else _cfg_value(optim_cfg, row.wd_key, row, "wd_key")
            bucket[key] = {"params": [], "lr": lr, "base_lr": lr, "weight_decay": wd, "base_wd": wd,
                           "lr_key": row.lr_key}
            names[row.optim][key] = []
        bucket[key]["params"].append(p)
        names[row.optim][key].append(pname)

    muon = None
    if groups["muon"]:
        muon = Muon(
            list(groups["muon"].values()),
            lr=optim_cfg.matrix_lr,
            momentum=muon_momentum_at(0, optim_cfg, 0.0),
            backend_steps=optim_cfg.muon_backend_steps,
            nesterov=optim_cfg.muon_nesterov,
            coeffs=ns_coeffs(getattr(optim_cfg, "muon_ns", "ns5"), optim_cfg.muon_backend_steps),
            row_normalize=bool(getattr(optim_cfg, "muon_row_normalize", False)),
            process_group=process_group,
            compile_ns=on_cuda if compile_ns is None else compile_ns,
        )
    adam = None
    if groups["adam"]:
        use_fused = on_cuda if fused is None else fused
        kwargs = dict(betas=(optim_cfg.beta1, optim_cfg.beta2), eps=optim_cfg.adam_eps, fused=True if use_fused else None)
        try:
            adam = torch.optim.Adam(list(groups["adam"].values()), decoupled_weight_decay=True, **kwargs)
        except TypeError:  # torch < 2.6 has no decoupled_weight_decay flag; AdamW is the same update
            adam = torch.optim.AdamW(list(groups["adam"].values()), **kwargs)
    return Optimizers(
        muon=muon,
        adam=adam,
        policy=table,
        group_names={k: list(v.values()) for k, v in names.items()},
    )
