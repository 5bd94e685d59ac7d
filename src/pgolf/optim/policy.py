"""Parameter policy: one table that says, per parameter, which optimizer, LR, weight decay and export scheme it gets.

The optimizer split (``pgolf.optim.builder``) and the quantizer both read it, so the two can never
disagree about what a "control tensor" is. Each parameter must match exactly one row::

    rows = policy_for(model_cfg)                      # baseline table (tied or untied embedding)
    table = resolve_policy(model.named_parameters(), rows)
    table["blocks.0.attn.c_q.weight"].optim           # -> "muon"

A later technique adds or replaces rows with ``with_rows(rows, PolicyRow(...))``; a row whose name
already exists replaces that row in place, new names are appended.

Baseline split (openai/parameter-golf ``train_gpt.py``, ``main`` optimizer split and
``CONTROL_TENSOR_NAME_PATTERNS``): the token embedding and an untied head go to Adam, control
tensors and anything 0/1-D go to Adam at ``scalar_lr`` (kept fp32 in the export), and every other
2-D matrix inside ``blocks.`` goes to Muon.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from torch import Tensor

OPTIMS = ("muon", "adam")
LR_KEYS = ("matrix_lr", "scalar_lr", "tied_embed_lr", "embed_lr", "head_lr")
QUANT_SCHEMES = ("int8", "float16", "float32", "keep")

# Names that mark a control tensor whatever its shape (baseline CONTROL_TENSOR_NAME_PATTERNS).
# "skip_gate" (U-Net skip gates), "lane_" (parallel-residual lambdas) and "attn_gate" (AttnOutGate / SparseAttnGate /
# gated attention weights, scalar AdamW as in the records' CONTROL_TENSOR_NAME_PATTERNS) are 2-D control tensors.
CONTROL_PATTERNS: tuple[str, ...] = ("attn_scale", "mlp_scale", "resid_mix", "q_gain", "skip_weight",
                                     "skip_gate", "lane_", "attn_gate")

Predicate = Callable[[str, Tensor], bool]


@dataclass(frozen=True)
class PolicyRow:
    """One row of the policy table.

    pattern: a regex matched with ``re.fullmatch`` against the full parameter name, or a predicate
             ``f(name, tensor) -> bool``.
    optim:   "muon" or "adam".
    lr_key:  name of the `OptimConfig` field that holds this row's base LR.
    wd_key:  name of the `OptimConfig` field with the decoupled weight decay (None = no decay).
    quant:   export scheme: "int8" (quantized; the quantizer may still keep tensors under
             ``quant.keep_float_max_numel`` as float16), "float16", "float32", or "keep" (stored as is).
    """

    name: str
    pattern: str | Predicate
    optim: str
    lr_key: str
    wd_key: str | None = None
    quant: str = "int8"

    def __post_init__(self) -> None:
        if self.optim not in OPTIMS:
            raise ValueError(f"policy row {self.name!r}: optim={self.optim!r} is not one of {', '.join(OPTIMS)}")
        if self.lr_key not in LR_KEYS:
            raise ValueError(f"policy row {self.name!r}: lr_key={self.lr_key!r} is not one of {', '.join(LR_KEYS)}")
        if self.quant not in QUANT_SCHEMES:
            raise ValueError(
                f"policy row {self.name!r}: quant={self.quant!r} is not one of {', '.join(QUANT_SCHEMES)}"
            )
        if isinstance(self.pattern, str):
            try:
                re.compile(self.pattern)
            except re.error as e:
                raise ValueError(f"policy row {self.name!r}: bad regex {self.pattern!r}: {e}") from None
        elif not callable(self.pattern):
            raise ValueError(f"policy row {self.name!r}: pattern must be a regex string or a callable")

    def matches(self, name: str, tensor: Tensor) -> bool:
        if isinstance(self.pattern, str):
            return re.fullmatch(self.pattern, name) is not None
        return bool(self.pattern(name, tensor))


def is_control(name: str, tensor: Tensor, patterns: tuple[str, ...] = CONTROL_PATTERNS) -> bool:
    """Control tensor: anything 0/1-D, or a name containing one of `patterns`."""
    return tensor.ndim < 2 or any(p in name for p in patterns)


@dataclass(frozen=True)
class ControlTensor:
    """Predicate: a control tensor (see `is_control`). A dataclass, so rows compare equal and pickle."""

    patterns: tuple[str, ...] = CONTROL_PATTERNS

    def __call__(self, name: str, tensor: Tensor) -> bool:
        return is_control(name, tensor, self.patterns)


@dataclass(frozen=True)
class BlockMatrix:
    """Predicate: a 2-D tensor under ``prefix`` that is not a control tensor."""

    patterns: tuple[str, ...] = CONTROL_PATTERNS
    prefix: str = "blocks."

    def __call__(self, name: str, tensor: Tensor) -> bool:
        return name.startswith(self.prefix) and tensor.ndim == 2 and not is_control(name, tensor, self.patterns)


def baseline_policy(tie_embeddings: bool = True, control_patterns: tuple[str, ...] = CONTROL_PATTERNS) -> tuple[PolicyRow, ...]:
    """The naive baseline's split as a table (see module docstring)."""
    # Weight decay keys (all 0 by default = the baseline): embed_wd / adam_wd for the AdamW halves and muon_wd
    # for Muon (TOP / PR #1855: 0.085 / 0.02 / 0.095). An untied lm_head keeps none (the records tie).
    rows = [
        PolicyRow("tok_emb", r"tok_emb\.weight", "adam", "tied_embed_lr" if tie_embeddings else "embed_lr",
                  wd_key="embed_wd"),
        PolicyRow("control", ControlTensor(tuple(control_patterns)), "adam", "scalar_lr", wd_key="adam_wd",
                  quant="float32"),
        PolicyRow("block_matrix", BlockMatrix(tuple(control_patterns)), "muon", "matrix_lr", wd_key="muon_wd"),
    ]
    if not tie_embeddings:
        rows.insert(1, PolicyRow("lm_head", r"lm_head\.weight", "adam", "head_lr"))
    return tuple(rows)


DEFAULT_POLICY: tuple[PolicyRow, ...] = baseline_policy(tie_embeddings=True)


def policy_for(model_cfg: Any) -> tuple[PolicyRow, ...]:
    """Policy rows for a `ModelConfig`: the baseline table (``tie_embeddings`` picks the embedding LR), plus
    technique rows. BigramHash (2026-03-20 record split): the table goes to Adam at the token-embedding LR,
    its projection to Muon; its scale is 0-D, so the control row takes it."""
    tied = bool(getattr(model_cfg, "tie_embeddings", True))
    rows = baseline_policy(tie_embeddings=tied)
    if getattr(model_cfg, "bigram_buckets", 0):
        rows = with_rows(rows,
                         PolicyRow("bigram_table", r"bigram\.table", "adam", "tied_embed_lr" if tied else "embed_lr",
                                   wd_key="embed_wd"),
                         PolicyRow("bigram_proj", r"bigram\.proj\.weight", "muon", "matrix_lr", wd_key="muon_wd"))
    return rows


def with_rows(rows: Iterable[PolicyRow], *new_rows: PolicyRow) -> tuple[PolicyRow, ...]:
    """Rows with `new_rows` merged in: same name replaces (keeping position), otherwise appended."""
    out = list(rows)
    index = {r.name: i for i, r in enumerate(out)}
    for r in new_rows:
        if r.name in index:
            out[index[r.name]] = r
        else:
            index[r.name] = len(out)
            out.append(r)
    return tuple(out)


def replace_row(rows: Iterable[PolicyRow], name: str, **changes: Any) -> tuple[PolicyRow, ...]:
    """Rows with the row called `name` changed field by field, e.g. ``replace_row(rows, "tok_emb", quant="float16")``."""
    rows = tuple(rows)
    if name not in {r.name for r in rows}:
        raise ValueError(f"no policy row named {name!r}; rows are: {', '.join(r.name for r in rows)}")
    return tuple(dataclasses.replace(r, **changes) if r.name == name else r for r in rows)


def resolve_policy(named_params: Iterable[tuple[str, Tensor]], rows: Iterable[PolicyRow]) -> dict[str, PolicyRow]:
    """Map every parameter name to its single matching row (in `named_params` order).

    Raises ValueError naming every parameter that matches no row or more than one row.
    """
    rows = tuple(rows)
    names = [r.name for r in rows]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f"policy has duplicate row names: {', '.join(dupes)}")
    table: dict[str, PolicyRow] = {}
    unmatched: list[str] = []
    multiple: list[str] = []
    for pname, tensor in named_params:
        hits = [r for r in rows if r.matches(pname, tensor)]
        if len(hits) == 1:
            table[pname] = hits[0]
        elif not hits:
            unmatched.append(f"{pname} {tuple(tensor.shape)}")
        else:
            multiple.append(f"{pname} -> {', '.join(r.name for r in hits)}")
    if unmatched or multiple:
        parts = []
        if unmatched:
            parts.append("unmatched: " + "; ".join(unmatched))
        if multiple:
            parts.append("matched by several rows: " + "; ".join(multiple))
        raise ValueError(f"parameter policy ({', '.join(names)}) does not cover the model exactly once: " + " | ".join(parts))
    return table
