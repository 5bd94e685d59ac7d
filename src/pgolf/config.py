"""Run configuration: one frozen dataclass per concern, composed into `RunConfig`.

Presets (``pgolf.presets``) are plain functions returning a `RunConfig`; the command line
only applies dotted overrides on top::

    pgolf train --preset baseline --set train.wallclock_s=90 --set model.num_layers=11

Every field has a default equal to the official naive baseline (``train_gpt.py`` of
openai/parameter-golf), so a trick is always "off" unless a preset turns it on.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from typing import Any

TOKENIZERS = ("sp1024", "sp4096", "sp8192", "byte260")
CORPORA = ("demo", "proxy", "fineweb")


@dataclass(frozen=True, kw_only=True)
class DataConfig:
    """Where the shards and tokenizer come from (``pgolf data build`` writes them)."""

    corpus: str = "demo"  # demo | proxy | fineweb
    tokenizer: str = "sp1024"  # sp1024 | sp4096 | sp8192 | byte260
    root: str = "data"  # datasets live in <root>/<corpus>_<tokenizer>/
    path: str = ""  # explicit dataset folder; overrides root/corpus/tokenizer when set

    def __post_init__(self) -> None:
        _check_choice("data.corpus", self.corpus, CORPORA)
        _check_choice("data.tokenizer", self.tokenizer, TOKENIZERS)

    @property
    def dataset_dir(self) -> str:
        return self.path or f"{self.root}/{self.corpus}_{self.tokenizer}"

    @property
    def vocab_size(self) -> int:
        return 260 if self.tokenizer == "byte260" else int(self.tokenizer[2:])


@dataclass(frozen=True, kw_only=True)
class ModelConfig:
    """GPT shape; defaults are the naive baseline (9L, d=512, 8 heads / 4 KV, relu² MLP 2×)."""

    vocab_size: int = 1024
    num_layers: int = 9
    model_dim: int = 512
    num_heads: int = 8
    num_kv_heads: int = 4
    mlp_mult: float = 2.0
    tie_embeddings: bool = True
    tied_embed_init_std: float = 0.005
    logit_softcap: float = 30.0
    rope_base: float = 10000.0
    qk_gain_init: float = 1.5
    # --- attention techniques (each off by default; fields added here, validated in __post_init__) ---
    # --- MLP, residual stream, token mixing, head and init techniques (each off by default) ---

    def __post_init__(self) -> None:
        if self.model_dim % self.num_heads:
            raise ValueError(f"model.model_dim={self.model_dim} is not divisible by model.num_heads={self.num_heads}")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"model.num_heads={self.num_heads} is not divisible by model.num_kv_heads={self.num_kv_heads}")
        if (self.model_dim // self.num_heads) % 2:
            raise ValueError("model.model_dim / model.num_heads (head_dim) must be even for RoPE")
        if self.logit_softcap <= 0:
            raise ValueError(f"model.logit_softcap must be positive, got {self.logit_softcap}")
        if self.num_layers < 1 or self.vocab_size < 2:
            raise ValueError("model.num_layers must be >= 1 and model.vocab_size >= 2")

    @property
    def head_dim(self) -> int:
        return self.model_dim // self.num_heads

    @property
    def mlp_hidden(self) -> int:
        return int(round(self.mlp_mult * self.model_dim))


@dataclass(frozen=True, kw_only=True)
class OptimConfig:
    """Muon for block matrices, Adam for embeddings and control tensors (baseline values)."""

    matrix_lr: float = 0.04
    scalar_lr: float = 0.04
    tied_embed_lr: float = 0.05
    embed_lr: float = 0.6  # untied input embedding
    head_lr: float = 0.008  # untied lm_head
    muon_momentum: float = 0.95
    muon_momentum_warmup_start: float = 0.85
    muon_momentum_warmup_steps: int = 500
    muon_backend_steps: int = 5
    muon_nesterov: bool = True
    beta1: float = 0.9
    beta2: float = 0.95
    adam_eps: float = 1e-8
    grad_clip_norm: float = 0.0  # 0 = off
    # --- optimizer techniques (each off by default) ---


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """Batch, clock and schedule. Global batch never depends on the number of GPUs."""

    seed: int = 1337
    wallclock_s: float = 600.0  # training cap, compile warm-up and eval pauses excluded; 0 = none
    iterations: int = 20000
    batch_tokens: int = 524_288  # global tokens per optimizer step
    micro_batch_tokens: int = 65_536  # tokens per forward/backward on one rank
    seq_len: int = 1024
    warmup_steps: int = 20  # compile-priming steps, then weights and optimizer state are restored
    # LR warmdown. warmdown_frac > 0: linear to min_lr over the last fraction of the wallclock.
    # Otherwise the baseline's rule: the last `warmdown_iters` steps, estimated from step time.
    warmdown_iters: int = 1200
    warmdown_frac: float = 0.0
    min_lr: float = 0.0
    val_every: int = 0  # steps between validation passes (0 = only at the end)
    val_max_tokens: int = 0  # cap on tokens in periodic validation (0 = whole split)
    log_every: int = 200
    checkpoint_every: int = 0  # steps between checkpoints (0 = only the final one)
    compile: bool = True
    device: str = "auto"  # auto | cpu | cuda
    # --- training techniques: averaging, QAT, loaders, kernels (each off by default) ---

    def __post_init__(self) -> None:
        if self.batch_tokens % self.seq_len or self.micro_batch_tokens % self.seq_len:
            raise ValueError(
                f"train.batch_tokens={self.batch_tokens} and train.micro_batch_tokens={self.micro_batch_tokens} "
                f"must be multiples of train.seq_len={self.seq_len}"
            )
        if not 0.0 <= self.warmdown_frac <= 1.0:
            raise ValueError(f"train.warmdown_frac must be in [0, 1], got {self.warmdown_frac}")
        _check_choice("train.device", self.device, ("auto", "cpu", "cuda"))

    def grad_accum(self, world_size: int) -> int:
        """Micro-steps per optimizer step so that the global batch is `batch_tokens` on any world size."""
        per_rank = self.batch_tokens // world_size
        if self.batch_tokens % world_size or per_rank % self.micro_batch_tokens:
            raise ValueError(
                f"train.batch_tokens={self.batch_tokens} is not divisible into {world_size} ranks x "
                f"train.micro_batch_tokens={self.micro_batch_tokens}"
            )
        return per_rank // self.micro_batch_tokens


@dataclass(frozen=True, kw_only=True)
class QuantConfig:
    """Export: per-row int8 with a percentile clip and zlib, as the baseline."""

    scheme: str = "int8_rowwise"
    clip_percentile: float = 99.99984
    keep_float_max_numel: int = 65_536  # tensors this small are stored as floats
    codec: str = "zlib"
    # --- quantization and coding techniques (each off by default) ---

    def __post_init__(self) -> None:
        _check_choice("quant.scheme", self.scheme, ("int8_rowwise",))
        _check_choice("quant.codec", self.codec, ("zlib", "lzma", "zstd", "brotli"))


@dataclass(frozen=True, kw_only=True)
class EvalConfig:
    """Scoring of the artifact reloaded from disk."""

    mode: str = "flat"  # flat: non-overlapping windows of seq_len over the whole val split
    seq_len: int = 0  # 0 = train.seq_len
    batch_tokens: int = 524_288  # global tokens per eval forward

    def __post_init__(self) -> None:
        _check_choice("eval.mode", self.mode, ("flat",))


@dataclass(frozen=True, kw_only=True)
class RunConfig:
    name: str = "baseline"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    quant: QuantConfig = field(default_factory=QuantConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    budget_bytes: int = 16_000_000  # decimal, code + compressed model
    runs_dir: str = "runs"

    def __post_init__(self) -> None:
        if self.model.vocab_size != self.data.vocab_size:
            raise ValueError(
                f"model.vocab_size={self.model.vocab_size} does not match data.tokenizer={self.data.tokenizer} "
                f"({self.data.vocab_size} ids)"
            )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name}={value!r} is not one of {', '.join(choices)}")


def _coerce(name: str, raw: str, typ: Any) -> Any:
    if isinstance(typ, str):  # postponed annotations
        typ = {"int": int, "float": float, "bool": bool, "str": str}.get(typ, typ)
    origin = typing.get_origin(typ)
    if origin in (typing.Union, types.UnionType):
        typ = next(t for t in typing.get_args(typ) if t is not type(None))
    try:
        if typ is bool:
            low = raw.strip().lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off"):
                return False
            raise ValueError(raw)
        if typ is int:
            return int(float(raw)) if ("e" in raw.lower() and "." not in raw) else int(raw.replace("_", ""))
        if typ is float:
            return float(raw)
        return raw
    except ValueError:
        raise ValueError(f"override {name}={raw!r}: expected a value of type {getattr(typ, '__name__', typ)}") from None


def apply_overrides(cfg: RunConfig, overrides: list[str] | dict[str, Any]) -> RunConfig:
    """Return `cfg` with dotted overrides applied: ``["train.wallclock_s=90", "model.num_layers=11"]``.

    Unknown sections or fields raise a ValueError that names them. Setting
    ``data.tokenizer`` also sets ``model.vocab_size`` unless that is overridden explicitly.
    """
    items = overrides.items() if isinstance(overrides, dict) else [_split(o) for o in overrides]
    sections: dict[str, dict[str, Any]] = {}
    top: dict[str, Any] = {}
    for key, raw in items:
        parts = key.split(".")
        if len(parts) == 1:
            fields = {f.name: f for f in dataclasses.fields(RunConfig)}
            if key not in fields or dataclasses.is_dataclass(getattr(cfg, key, None)):
                raise ValueError(f"unknown config field {key!r}")
            top[key] = _coerce(key, raw, fields[key].type) if isinstance(raw, str) else raw
            continue
        if len(parts) != 2:
            raise ValueError(f"override {key!r} must look like section.field")
        sec, name = parts
        sub = getattr(cfg, sec, None)
        if not dataclasses.is_dataclass(sub):
            raise ValueError(f"unknown config section {sec!r} in override {key!r}")
        fields = {f.name: f for f in dataclasses.fields(sub)}
        if name not in fields:
            raise ValueError(f"unknown config field {key!r}; {sec} has: {', '.join(sorted(fields))}")
        sections.setdefault(sec, {})[name] = _coerce(key, raw, fields[name].type) if isinstance(raw, str) else raw
    if "tokenizer" in sections.get("data", {}) and "vocab_size" not in sections.get("model", {}):
        tok = sections["data"]["tokenizer"]
        _check_choice("data.tokenizer", tok, TOKENIZERS)
        sections.setdefault("model", {})["vocab_size"] = 260 if tok == "byte260" else int(tok[2:])
    replaced = {sec: dataclasses.replace(getattr(cfg, sec), **vals) for sec, vals in sections.items()}
    return dataclasses.replace(cfg, **replaced, **top)


def _split(item: str) -> tuple[str, str]:
    if "=" not in item:
        raise ValueError(f"override {item!r} must look like section.field=value")
    key, value = item.split("=", 1)
    return key.strip(), value.strip()


def from_dict(d: dict[str, Any]) -> RunConfig:
    """Inverse of `RunConfig.to_dict` (used to reload `runs/<id>/config.json`)."""
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(RunConfig):
        if f.name not in d:
            continue
        value = d[f.name]
        sub_cls = {"data": DataConfig, "model": ModelConfig, "optim": OptimConfig, "train": TrainConfig,
                   "quant": QuantConfig, "eval": EvalConfig}.get(f.name)
        kwargs[f.name] = sub_cls(**value) if sub_cls else value
    return RunConfig(**kwargs)
