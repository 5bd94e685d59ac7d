"""Build the optimizer pair (Muon + Adam) from the parameter policy table.

    opt = build_optimizers(model, cfg.optim, policy_rows=policy_for(cfg.model))
    for step in ...:
        opt.set_muon_momentum(muon_momentum_at(step, cfg.optim))
        opt.set_lr_mul(lr_mul)                # every group: lr = base_lr * lr_mul
        ...backward...
        opt.step(); opt.zero_grad(set_to_none=True)

One param group per (optimizer, lr_key, wd_key) in the order the rows are first met in
``model.named_parameters()``, so two builds of the same model have the same layout and a
`state_dict()` reloads bit-exactly. Adam is the baseline's (betas (beta1, beta2), eps, fused on CUDA);
a row with ``wd_key`` gets decoupled (AdamW-style) weight decay, otherwise none.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from pgolf.config import OptimConfig
from pgolf.optim.muon import Muon
from pgolf.optim.policy import DEFAULT_POLICY, PolicyRow, policy_for, resolve_policy


def muon_momentum_at(step: int, cfg: OptimConfig) -> float:
    """Baseline momentum warmup: linear from muon_momentum_warmup_start to muon_momentum over warmup_steps."""
    if cfg.muon_momentum_warmup_steps <= 0:
        return cfg.muon_momentum
    frac = min(max(step, 0) / cfg.muon_momentum_warmup_steps, 1.0)
    return (1.0 - frac) * cfg.muon_momentum_warmup_start + frac * cfg.muon_momentum


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
            bucket[key] = {"params": [], "lr": lr, "base_lr": lr, "weight_decay": wd, "lr_key": row.lr_key}
            names[row.optim][key] = []
        bucket[key]["params"].append(p)
        names[row.optim][key].append(pname)

    muon = None
    if groups["muon"]:
        muon = Muon(
            list(groups["muon"].values()),
            lr=optim_cfg.matrix_lr,
            momentum=muon_momentum_at(0, optim_cfg),
            backend_steps=optim_cfg.muon_backend_steps,
            nesterov=optim_cfg.muon_nesterov,
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
