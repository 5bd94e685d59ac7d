"""Record #1855's own ``train_gpt.py`` as a throughput peer on one GPU: literal patches of a temporary copy, its
cu_seqlens bucket for our shards, its environment, its log format, and the equal-model check against pgolf.

    text = patch_source(Path(".peers/pr1855_train_gpt.py").read_text())     # PatchError if an anchor is missing
    env = record_env(data, data / "tokenizer.model", 60, bucket=256, warmup_steps=5, log_every=5)
    parsed = parse_record_log(stdout_text)                                  # Trace + peak memory + hyperparameters

Used by benchmarks/throughput.py; the script is read from the path given, never copied into this project.
On one GPU its own ``grad_accum_steps = 8 // world_size`` already gives 8 micro-steps of 98,304 tokens.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from pgolf.report.flops import read_tokens
from pgolf.report.throughput import Trace

STEP = re.compile(r"^(\d+)/\d+ train_loss: \S+ train_time: [\d.]+m tok/s: (\d+)\s*$", re.M)
LOOP = re.compile(r"^layer_loop:enabled step:(\d+) frac:([\d.]+)", re.M)
STOP = re.compile(r"^stopping_early: wallclock_cap train_time: (\d+)ms step: (\d+)/", re.M)
PEAK = re.compile(r"^peak memory allocated: (\d+) MiB reserved: (\d+) MiB", re.M)
PARAMS = re.compile(r"^model_params:(\d+)", re.M)


def parse_record_hparams(text: str) -> dict[str, str]:
    """The ``  key: value`` block the record prints after ``Hyperparameters:``."""
    out: dict[str, str] = {}
    lines = iter(text.splitlines())
    for line in lines:
        if line.strip() == "Hyperparameters:":
            for row in lines:
                m = re.match(r"^  (\w+): (.*)$", row)
                if not m:
                    break
                out[m.group(1)] = m.group(2)
            break
    return out


def parse_record_log(text: str, batch_tokens: int | None = None) -> dict[str, Any]:
    """Step points, loop switch, totals, peak memory and hyperparameters from the record's stdout. Its step lines
    carry the cumulative tok/s since the timer started, so a point is ``(step, step x batch / tok_s)``. A crash
    after the last step line (its end-of-training eval without a CaseOps byte sidecar) leaves them usable."""
    hp = parse_record_hparams(text)
    batch = int(batch_tokens or hp.get("train_batch_tokens", 786_432))
    points = [(int(s), int(s) * batch / int(r)) for s, r in STEP.findall(text) if int(r) > 0]
    stop, loop, peak, params = (p.search(text) for p in (STOP, LOOP, PEAK, PARAMS))
    if stop:
        steps, seconds = int(stop.group(2)), int(stop.group(1)) / 1000.0
    else:
        steps, seconds = points[-1] if points else (0, 0.0)
    trace = Trace(points=points, steps=steps, train_time_s=seconds, batch_tokens=batch,
                  switch_step=float(loop.group(1)) if loop else None)
    return {"trace": trace, "stopped_by_cap": bool(stop), "hparams": hp,
            "peak_mem_mib": int(peak.group(1)) if peak else None,
            "peak_reserved_mib": int(peak.group(2)) if peak else None,
            "model_params": int(params.group(1)) if params else None,
            "traceback": "Traceback (most recent call last)" in text}


@dataclass(frozen=True)
class Patch:
    name: str
    anchor: str
    replacement: str
    why: str


PATCHES = (
    Patch("cu_bucket_from_env",
          "    def __init__(self, h, device, cu_bucket_size=64):\n",
          '    def __init__(self, h, device, cu_bucket_size=int(os.environ.get("CU_BUCKET_SIZE", "64"))):\n',
          "cu_seqlens padded to one bucket that fits every micro-batch of the data: one compiled shape, no "
          "recompilation inside the timed run"),
    Patch("warm_one_bucket",
          "        warmup_cu_buckets = tuple(cu_bucket_size * i for i in range(1, 5))\n",
          "        warmup_cu_buckets = (cu_bucket_size,)\n",
          "compile only the bucket the data uses (4 buckets x 2 loop states took > 8 min on one GPU)"),
    Patch("grad_accum_from_env",
          "    grad_accum_steps = 8 // world_size\n",
          '    grad_accum_steps = int(os.environ.get("GRAD_ACCUM_STEPS", 8 // world_size))\n',
          "micro-steps per step from the environment (unset: unchanged, 8 on one GPU)"),
    Patch("skip_validation",
          "def eval_val(h, device, val_data, model, forward_logits_fn=None):\n",
          "def eval_val(h, device, val_data, model, forward_logits_fn=None):\n"
          '    if os.environ.get("THROUGHPUT_ONLY", "0") == "1":  # pgolf throughput benchmark: no scoring\n'
          '        return float("nan"), float("nan")\n',
          "no validation passes (the last-step and post-EMA evals need a CaseOps byte sidecar); the training "
          "clock, the stop line and the peak-memory line are unchanged, and PREQUANT_ONLY=1 then ends the run"),
)


class PatchError(RuntimeError):
    """An anchor of `PATCHES` is missing or ambiguous: the script is not the one these patches were made for."""


def patch_source(text: str, patches: Sequence[Patch] = PATCHES) -> str:
    for p in patches:
        n = text.count(p.anchor)
        if n != 1:
            raise PatchError(f"record patch {p.name!r}: anchor {p.anchor.strip()!r} found {n} times, want exactly 1")
        text = text.replace(p.anchor, p.replacement)
    return text


def record_cu_lengths(tokens: np.ndarray, micro_tokens: int, seq_len: int, *, bos_id: int = 1, world_size: int = 1,
                      rank: int = 0) -> np.ndarray:
    """Unpadded ``len(cu_seqlens)`` of each micro-batch the record's DocumentPackingLoader makes from one shard:
    spans of ``micro_tokens + 1`` from the first BOS, segments start at each BOS (and at the span start), every
    document is cut into pieces of at most `seq_len`, plus the closing offset."""
    bos = np.flatnonzero(np.asarray(tokens) == bos_id)
    if bos.size == 0:
        return np.zeros(0, dtype=np.int64)
    span, out, cursor = micro_tokens + 1, [], int(bos[0])
    while cursor + span * world_size <= len(tokens):
        start = cursor + rank * span
        lo, hi = np.searchsorted(bos, [start, start + micro_tokens], side="left")
        starts = bos[lo:hi] - start
        if starts.size == 0 or starts[0] != 0:
            starts = np.concatenate(([0], starts))
        docs = np.diff(np.append(starts, micro_tokens))
        out.append(int(((docs + seq_len - 1) // seq_len).sum()) + 1)
        cursor += span * world_size
    return np.asarray(out, dtype=np.int64)


def record_bucket_size(files: Sequence[Path], micro_tokens: int, seq_len: int, *, max_tokens: int = 400_000_000,
                       multiple: int = 64) -> dict[str, Any]:
    """The smallest multiple of 64 that holds every micro-batch's cu_seqlens (first `max_tokens` of the shards)."""
    lengths, seen = [], 0
    for f in files:
        if seen >= max_tokens:
            break
        tok = read_tokens([f], max_tokens=max_tokens - seen)
        seen += len(tok)
        lengths.append(record_cu_lengths(tok, micro_tokens, seq_len))
    allc = np.concatenate(lengths) if lengths else np.zeros(0, dtype=np.int64)
    top = int(allc.max()) if allc.size else 1
    return {"bucket": -(-top // multiple) * multiple, "max_len": top,
            "mean_len": float(allc.mean()) if allc.size else 0.0, "micro_batches": int(allc.size),
            "tokens_scanned": seen}


def record_env(data: Path, tokenizer: Path, seconds: float, *, bucket: int, warmup_steps: int, log_every: int,
               vocab_size: int = 8192) -> dict[str, str]:
    """The record's README settings (its fineweb run) with the one-GPU throughput changes: plain sp8192 shards (no
    CaseOps), no TTT, no scoring, no GPTQ reserve, fewer priming steps, frequent step lines."""
    return {
        "DATA_PATH": str(data.resolve()), "TOKENIZER_PATH": str(tokenizer.resolve()), "VOCAB_SIZE": str(vocab_size),
        "CASEOPS_ENABLED": "0", "ITERATIONS": "20000", "MAX_WALLCLOCK_SECONDS": f"{seconds:g}",
        "EMBED_BITS": "7", "MATRIX_LR": "0.026", "MIN_LR": "0.1", "MLP_CLIP_SIGMAS": "11.5",
        "ATTN_CLIP_SIGMAS": "13.0", "EMBED_CLIP_SIGMAS": "14.0", "GRAD_CLIP_NORM": "0.3",
        "WARMUP_STEPS": str(warmup_steps), "MUON_BACKEND_STEPS": "5", "WARMDOWN_FRAC": "0.85", "BETA2": "0.99",
        "SPARSE_ATTN_GATE_SCALE": "0.5", "GPTQ_RESERVE_SECONDS": "0", "GPTQ_CALIBRATION_BATCHES": "16",
        "VAL_LOSS_EVERY": "0", "GATED_ATTN_QUANT_GATE": "1", "SPARSE_ATTN_GATE_ENABLED": "1", "GATE_WINDOW": "12",
        "SMEAR_GATE_ENABLED": "1", "LQER_ENABLED": "1", "LQER_ASYM_ENABLED": "1", "LQER_RANK": "4",
        "LQER_FACTOR_BITS": "4", "LQER_ASYM_GROUP": "64", "LQER_TOP_K": "3", "FUSED_CE_ENABLED": "1",
        "COMPRESSOR": "pergroup", "SEED": "42", "RUN_ID": "record",
        "TTT_ENABLED": "0", "PREQUANT_ONLY": "1", "THROUGHPUT_ONLY": "1", "TRAIN_LOG_EVERY": str(log_every),
        "CU_BUCKET_SIZE": str(bucket),
    }


def _xsa_count(cfg: Any) -> int:
    from pgolf.model.patterns import parse_layers

    return sum(parse_layers(cfg.model.xsa_layers, cfg.model.num_layers))


# Record hyperparameter -> the same quantity of a pgolf RunConfig (the equal-model check).
EQUAL_MODEL: tuple[tuple[str, Callable[[Any], float]], ...] = (
    ("vocab_size", lambda c: c.model.vocab_size), ("num_layers", lambda c: c.model.num_layers),
    ("model_dim", lambda c: c.model.model_dim), ("num_heads", lambda c: c.model.num_heads),
    ("num_kv_heads", lambda c: c.model.num_kv_heads), ("mlp_mult", lambda c: c.model.mlp_mult),
    ("logit_softcap", lambda c: c.model.logit_softcap), ("rope_dims", lambda c: c.model.rope_dims),
    ("qk_gain_init", lambda c: c.model.qk_gain_init), ("ln_scale", lambda c: c.model.ln_scale),
    ("skip_gates_enabled", lambda c: c.model.skip_gates), ("num_loops", lambda c: c.model.num_loops),
    ("loop_start", lambda c: c.model.loop_start), ("loop_end", lambda c: c.model.loop_end),
    ("enable_looping_at", lambda c: c.model.loop_enable_at),
    ("parallel_start_layer", lambda c: c.model.parallel_start_layer), ("xsa_last_n", _xsa_count),
    ("sparse_attn_gate_enabled", lambda c: c.model.sparse_attn_gate_width > 0),
    ("gate_window", lambda c: c.model.sparse_attn_gate_width or c.model.smear_gate_width),
    ("sparse_attn_gate_scale", lambda c: c.model.sparse_attn_gate_scale),
    ("smear_gate_enabled", lambda c: c.model.smear_gate == "bos_fixed"),
    ("train_batch_tokens", lambda c: c.train.batch_tokens), ("train_seq_len", lambda c: c.train.seq_len),
    ("grad_accum_steps", lambda c: c.train.grad_accum(1)), ("ema_decay", lambda c: c.train.ema_decay),
    ("fused_ce_enabled", lambda c: getattr(c.model, "fused_ce", False)),
)


def equal_model_check(hparams: dict[str, str], cfg: Any) -> list[dict[str, Any]]:
    """Record hyperparameters whose value differs from the pgolf config (empty list: same model and batch)."""
    bad = []
    for key, get in EQUAL_MODEL:
        ours = float(get(cfg))
        raw = hparams.get(key)
        rec = {"True": 1.0, "False": 0.0}.get(raw.strip()) if raw is not None else None
        try:
            rec = float(raw) if (rec is None and raw is not None) else rec
        except ValueError:
            rec = None
        if rec is None or abs(rec - ours) > 1e-9 * max(1.0, abs(ours)):
            bad.append({"field": key, "record": rec if rec is not None else raw, "pgolf": ours})
    return bad
