"""Validation of the quantization/coding fields of `QuantConfig` and the codec spec they imply (torch-free).

    payload_codec(cfg.quant)   # "zlib" (baseline), "shuf2+brotli", "pergroup", ...
"""

from __future__ import annotations

from typing import Any

CLIP_RULES = ("percentile", "search", "sdclip", "absmax")
CONTROL_DTYPES = ("float32", "float16", "int8")
COMPRESSORS = ("single", "pergroup")


def check_quant_config(q: Any) -> None:
    """Raise ValueError naming the first bad `quant.*` technique field."""

    def bad(field: str, why: str) -> None:
        raise ValueError(f"quant.{field}={getattr(q, field)!r}: {why}")

    if not (isinstance(q.matrix_bits, int) and 2 <= q.matrix_bits <= 8):
        bad("matrix_bits", "must be an int in 2..8")
    if not (isinstance(q.embed_bits, int) and (2 <= q.embed_bits <= 8 or q.embed_bits == 16)):
        bad("embed_bits", "must be 2..8, or 16 for fp16")
    if q.clip not in CLIP_RULES:
        bad("clip", f"must be one of {', '.join(CLIP_RULES)}")
    for f in ("clip_k_attn", "clip_k_mlp", "clip_k_embed", "clip_k_other"):
        if not getattr(q, f) > 0:
            bad(f, "must be > 0")
    if q.control_dtype not in CONTROL_DTYPES:
        bad("control_dtype", f"must be one of {', '.join(CONTROL_DTYPES)}")
    if not (isinstance(q.byte_shuffle, int) and 0 <= q.byte_shuffle <= 16):
        bad("byte_shuffle", "must be an int stride in 0..16 (0 = off)")
    if q.compressor not in COMPRESSORS:
        bad("compressor", f"must be one of {', '.join(COMPRESSORS)}")
    if q.compressor == "pergroup" and q.byte_shuffle:
        bad("byte_shuffle", "is chosen per group by compressor=pergroup; leave it 0")
    if not (isinstance(q.pergroup_split_bytes, int) and q.pergroup_split_bytes >= 0):
        bad("pergroup_split_bytes", "must be an int >= 0 (0 = off)")
    if q.gptq_block < 1:
        bad("gptq_block", "must be >= 1")
    if not q.gptq_damp >= 0:
        bad("gptq_damp", "must be >= 0")
    if q.gptq_calib_batches < 1:
        bad("gptq_calib_batches", "must be >= 1")
    if not q.gptq_reserve_s >= 0:
        bad("gptq_reserve_s", "must be >= 0 seconds")
    if q.lqer_rank < 0 or q.lqer_top_k < 0 or q.lqer_group < 1:
        bad("lqer_rank", "needs lqer_rank >= 0, lqer_top_k >= 0, lqer_group >= 1")
    if not 2 <= q.lqer_factor_bits <= 8:
        bad("lqer_factor_bits", "must be in 2..8")
    if q.awq_top_k < 0 or q.awq_group < 1 or not 2 <= q.awq_bits <= 8:
        bad("awq_top_k", "needs awq_top_k >= 0, awq_group >= 1, awq_bits in 2..8")
    if q.awq_top_k and not q.gptq:
        bad("awq_top_k", "AWQ-lite runs inside GPTQ; set quant.gptq=true")
    if not 0 < q.fit_alpha_min <= 1.0 <= q.fit_alpha_max:
        bad("fit_alpha_min", "needs 0 < fit_alpha_min <= 1 <= fit_alpha_max")
    if q.fit_max_iters < 1 or q.fit_tolerance_bytes < 0:
        bad("fit_max_iters", "needs fit_max_iters >= 1 and fit_tolerance_bytes >= 0")
    if q.scheme != "mixed":
        for f in ("gptq", "lqer_rank", "awq_top_k", "fit_budget", "pack_bits", "gate_int8"):
            if getattr(q, f):
                bad(f, "needs quant.scheme=mixed")


def payload_codec(q: Any) -> str:
    """The codec spec written to the artifact for this config (see `pgolf.quant.codecs`)."""
    if q.compressor == "pergroup":
        return f"pergroup@{q.pergroup_split_bytes}" if q.pergroup_split_bytes else "pergroup"
    return f"shuf{q.byte_shuffle}+{q.codec}" if q.byte_shuffle else q.codec
