"""Training FLOPs per token (for MFU), counting depth recurrence and document-isolated causal attention.

Per token, in a phase that runs ``L_v`` virtual layers::

    F = 6 * (L_v * P_layer + P_once)  +  6 * L_v * T_eff * d

- ``6 = 2 x 3``: a multiply-add is 2 FLOPs; forward + backward (activation and weight gradients) is 3 matmuls.
- ``P_layer``: matrix weights one block applies to a token: Q, K, V, O (``d(2d + 2 kv)``), the MLP (``2 d h``;
  SwiGLU ``3 d h'``) and the attention output gate (``H w``, or ``H d`` for dense gated attention).
- ``P_once``: the output head ``V d`` (tied or not), plus the SmearGate gate (``w``) and the BigramHash projection.
  The embedding lookup, norms, softmax, XSA and every other elementwise op are not counted; nor is the optimizer.
- ``L_v``: ``num_layers`` before ``loop_enable_at``, ``num_layers + num_loops (loop_end - loop_start + 1)`` after
  (depth recurrence reruns layers with shared weights, so their FLOPs count again; PR #1204/#1855).
- Attention: query i of a causal segment attends to i + 1 keys; QK^T and AV cost ``2 * 2 * d`` FLOPs per key
  (``d = heads x head_dim = model_dim``; GQA shares K/V but not this work), x 3 for training. Over segments of
  lengths n_j that is ``12 d c`` with ``c = sum n(n+1)/2 / sum n`` keys per query, i.e. ``6 T_eff d`` with

      T_eff = sum_j n_j (n_j + 1) / sum_j n_j

  One full causal row of T tokens gives ``T_eff = T + 1``. With ``doc_isolated`` the segments are the documents
  (BOS to BOS) cut into pieces of at most ``seq_len`` tokens from their start: `t_eff_from_tokens` measures it on
  the training shards. The packer cuts a little more (pgolf at row starts, record #1855 at its 98,304-token
  buffer start), so this is the model's attention work, within a few percent of what either kernel skips to.

A run average weights each phase by its tokens: ``F_run = (n_flat F_flat + n_looped F_looped) / n``;
`flat_steps` finds the switch step from the logged (step, train_time) curve.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from pgolf.data.shards import read_shard

PEAK_BF16_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12}  # dense bf16 tensor-core peaks (SXM)


# HBM bandwidth, bytes/s (SXM parts; datasheets): an H200 is an H100's compute with 1.43x the bandwidth
HBM_BYTES_PER_S = {"H100": 3.35e12, "H200": 4.8e12, "A100": 2.039e12}


def peak_flops(device_name: str) -> float | None:
    """Dense bf16 peak of a GPU from its name (``NVIDIA H100 80GB HBM3`` -> 989e12), None when unknown."""
    return next((v for k, v in PEAK_BF16_FLOPS.items() if k in device_name), None)


def hbm_bandwidth(device_name: str) -> float | None:
    """HBM bytes/s of a GPU from its name (``NVIDIA H200`` -> 4.8e12), None when unknown."""
    return next((v for k, v in HBM_BYTES_PER_S.items() if k in device_name), None)


def matmul_params_per_layer(m: Any) -> int:
    """Matrix weights one block applies to every token (attention projections, MLP, attention output gate)."""
    d, kv = m.model_dim, m.num_kv_heads * (m.model_dim // m.num_heads)
    if m.mlp_act == "swiglu":
        from pgolf.model.mlp import mlp_hidden_dim  # the width-matched SwiGLU hidden size

        mlp = 3 * d * mlp_hidden_dim(m)
    else:
        mlp = 2 * d * m.mlp_hidden
    gate = m.num_heads * (m.attn_out_gate_width or m.sparse_attn_gate_width or (d if m.gated_attn else 0))
    return d * (2 * d + 2 * kv) + mlp + gate


def matmul_params_once(m: Any) -> int:
    """Matrix weights applied once per token outside the blocks: the output head, SmearGate, BigramHash."""
    smear = m.smear_gate_width if m.smear_gate == "bos_fixed" else 0
    bigram = m.bigram_dim * m.model_dim if m.bigram_buckets else 0
    return m.vocab_size * m.model_dim + smear + bigram


def virtual_layers(m: Any) -> tuple[int, int]:
    """(layers run per token before the loops switch on, after it)."""
    looped = m.num_layers + (m.num_loops * (m.loop_end - m.loop_start + 1) if m.num_loops > 0 else 0)
    return m.num_layers, looped


def causal_t_eff(lengths: Iterable[int] | np.ndarray) -> float:
    """``sum n(n+1) / sum n`` over causal segment lengths: twice the mean number of keys per query."""
    n = np.asarray(list(lengths) if not isinstance(lengths, np.ndarray) else lengths, dtype=np.float64)
    n = n[n > 0]
    if n.size == 0:
        raise ValueError("causal_t_eff needs at least one segment of positive length")
    return float((n * (n + 1)).sum() / n.sum())


def doc_segment_lengths(tokens: np.ndarray, bos_id: int, seq_len: int) -> np.ndarray:
    """Lengths of the attention segments of a token stream: documents start at each BOS (tokens before the first
    BOS form one), and each document is cut into pieces of at most `seq_len` tokens from its start."""
    if seq_len < 1:
        raise ValueError(f"seq_len must be >= 1, got {seq_len}")
    tokens = np.asarray(tokens)
    if tokens.size == 0:
        return np.zeros(0, dtype=np.int64)
    starts = np.flatnonzero(tokens == bos_id)
    if starts.size == 0 or starts[0] != 0:
        starts = np.concatenate(([0], starts))
    docs = np.diff(np.append(starts, tokens.size)).astype(np.int64)
    full, rest = docs // seq_len, docs % seq_len
    return np.concatenate((np.repeat(np.int64(seq_len), int(full.sum())), rest[rest > 0]))


def t_eff_from_tokens(tokens: np.ndarray, bos_id: int, seq_len: int) -> float:
    return causal_t_eff(doc_segment_lengths(tokens, bos_id, seq_len))


# tokens from the start of the train shards that T_eff is measured on: summary.json's MFU and
# benchmarks/throughput.py's must count the same FLOPs (they scanned 8 M and 20 M until 2026-12-04: 1780.7 against
# 1789.4 on the proxy)
T_EFF_SCAN_TOKENS = 20_000_000


def read_tokens(files: Sequence[str | Path], max_tokens: int | None = None) -> np.ndarray:
    """Up to `max_tokens` (default T_EFF_SCAN_TOKENS) tokens from the start of official-format shards, in file
    order (validated by `pgolf.data.shards.read_shard`)."""
    if not files:
        raise ValueError("read_tokens: no shard files given")
    out, left = [], int(T_EFF_SCAN_TOKENS if max_tokens is None else max_tokens)
    for f in files:
        if left <= 0:
            break
        tokens = read_shard(f)[:left]
        out.append(np.asarray(tokens))
        left -= tokens.size
    return np.concatenate(out)


def t_eff_from_files(files: Sequence[str | Path], bos_id: int, seq_len: int, max_tokens: int | None = None) -> float:
    """T_eff of document-isolated attention measured on (a prefix of, T_EFF_SCAN_TOKENS by default) the training
    shards."""
    return t_eff_from_tokens(read_tokens(files, max_tokens), bos_id, seq_len)


@dataclass(frozen=True)
class PhaseFlops:
    """Training FLOPs per token before (``flat``) and after (``looped``) depth recurrence switches on."""

    flat: float
    looped: float
    layers: tuple[int, int]
    t_eff: float
    switch_frac: float  # training fraction at which `looped` starts (1.0 when the model never loops)

    def as_dict(self) -> dict[str, Any]:
        return {"flat": self.flat, "looped": self.looped, "virtual_layers": list(self.layers), "t_eff": self.t_eff,
                "switch_frac": self.switch_frac}


def attention_flops_per_token(layers: int, t_eff: float, model_dim: int) -> float:
    """Training FLOPs of causal attention per token: 6 L T_eff d (QK^T and AV, forward and backward)."""
    return 6.0 * layers * t_eff * model_dim


def phase_flops(cfg: Any, t_eff: float | None = None) -> PhaseFlops:
    """FLOPs per token of each phase for a `RunConfig`. `t_eff`: the measured doc-isolated attention context
    (`t_eff_from_files`); without it, or without ``model.doc_isolated``, full causal rows (``seq_len + 1``)."""
    m, seq = cfg.model, cfg.train.seq_len
    te = float(t_eff) if (t_eff is not None and m.doc_isolated) else float(seq + 1)
    per_layer, once = matmul_params_per_layer(m), matmul_params_once(m)
    flat_l, looped_l = virtual_layers(m)

    def f(layers: int) -> float:
        return 6.0 * (layers * per_layer + once) + attention_flops_per_token(layers, te, m.model_dim)

    looping = m.num_loops > 0
    return PhaseFlops(flat=f(flat_l), looped=f(looped_l) if looping else f(flat_l), layers=(flat_l, looped_l),
                      t_eff=te, switch_frac=m.loop_enable_at if looping else 1.0)


def flat_steps(points: Sequence[tuple[float, float]], steps: int, *, switch_time: float | None = None,
               switch_step: float | None = None) -> float:
    """How many of `steps` ran before the loop switch: `switch_step` when known, otherwise the step at
    `switch_time` seconds, linearly interpolated on the (step, train_time) points (with (0, 0) prepended)."""
    if switch_step is not None:
        return float(min(max(switch_step, 0.0), steps))
    if switch_time is None:
        return float(steps)
    pts = sorted({(0.0, 0.0), *((float(s), float(t)) for s, t in points)})
    for (s0, t0), (s1, t1) in zip(pts, pts[1:]):
        if t0 <= switch_time <= t1:
            s = s0 if t1 <= t0 else s0 + (switch_time - t0) / (t1 - t0) * (s1 - s0)
            return float(min(max(s, 0.0), steps))
    return float(steps) if switch_time >= pts[-1][1] else 0.0


def run_flops_per_token(pf: PhaseFlops, steps: int, n_flat: float) -> float:
    """Token-weighted mean FLOPs per token of a run with `n_flat` of its `steps` before the switch."""
    if steps <= 0:
        return pf.flat
    a = min(max(n_flat / steps, 0.0), 1.0)
    return a * pf.flat + (1.0 - a) * pf.looped


def summary_flops(cfg: Any, curve: Sequence[dict], steps: int, train_time_s: float,
                  train_files: Sequence[str | Path] = ()) -> dict[str, Any]:
    """FLOPs per token of a pgolf run (phases, the switch step, the run mean) for summary.json."""
    from pgolf.quant.calib import train_config_with_reserve

    t_eff = None
    if cfg.model.doc_isolated and train_files:
        t_eff = t_eff_from_files(train_files, cfg.model.bos_id, cfg.train.seq_len)
    pf = phase_flops(cfg, t_eff)
    tc = train_config_with_reserve(cfg)
    if pf.switch_frac >= 1.0:
        n_flat = float(steps)
    elif tc.wallclock_s > 0:
        pts = [(p["step"], p["train_time_s"]) for p in curve if "step" in p and "train_time_s" in p]
        n_flat = flat_steps(pts + [(steps, train_time_s)], steps, switch_time=pf.switch_frac * tc.wallclock_s)
    else:
        n_flat = float(min(steps, math.ceil(pf.switch_frac * tc.iterations)))
    return {**pf.as_dict(), "flat_steps": n_flat, "run_mean": run_flops_per_token(pf, steps, n_flat)}
