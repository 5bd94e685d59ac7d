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
    # Checked in _check_attention_techniques; formulas and PRs in model/attention.py, attn_rope.py, attn_backends.py.
    rope_dims: int = 0  # partial RoPE: rotate only the first k dims of each head; 0 = all (PR #315/#287; TOP 16)
    rope_scaling: str = "none"  # none | ntk | yarn: stretch RoPE when T > rope_train_seq_len (eval at longer context)
    rope_train_seq_len: int = 1024  # the training length L that rope_scaling stretches from (set it to train.seq_len)
    xsa_layers: str = "none"  # exclusive self-attention layer pattern: none | all | last:4 ... (arXiv:2603.09078)
    xsa_gated: bool = False  # XSA removal times tanh(xsa_alpha_h), alpha = 0: starts OFF (PR #2018/#2123)
    attn_out_gate_width: int = 0  # AttnOutGate y_h * 2 sigmoid(W x[:w]), W = 0; 0 off (#1880: 12, #1969: 32)
    sparse_attn_gate_width: int = 0  # SparseAttnGate y_h * sigmoid(s W x[:w]), W = 0 -> x0.5 at init; 0 off (TOP 12)
    sparse_attn_gate_scale: float = 1.0  # s of SparseAttnGate (TOP 0.5)
    gated_attn: bool = False  # dense gated attention y_h * sigmoid(W x), Qwen G1 (arXiv:2505.06708; PR #1736)
    gated_attn_init_std: float = 0.005  # std of the dense gate's W
    gated_attn_quant_gate: bool = False  # export: attn_gate_w as int8 per row (#2123); read by the quantizer
    doc_isolated: bool = False  # no attention across a BOS (bos_id) boundary, train and eval (VarLen, PR #1530)
    attn_backend: str = "sdpa"  # sdpa | flex | varlen (torch's FlashAttention varlen) | fa3 | fa4 (optional packages)
    sdpa_priority: str = "default"  # default (torch: flash first) | cudnn: cuDNN attention first (faster on H100)
    fused_qkv: bool = False  # q, k, v from one GEMM over [W_q; W_k; W_v] (same weights and math; attention.py)
    # --- MLP, residual stream, token mixing, head and init techniques (each off by default) ---
    # Checked in _check_stack_techniques; formulas and PRs in the model modules (mlp, block, gpt, embed, recurrence).
    mlp_act: str = "relu2"  # relu2 | leaky_relu2 (PR #493; TOP, #1880, #1969) | swiglu (PR #2, width-matched)
    mlp_leaky_slope: float = 0.5  # leaky_relu2 slope: 0.5 (TOP, #1880, #1969), 0.3 (#2123)
    skip_gates: bool = False  # U-Net skip gates x <- lerp(w*skip, x, sigmoid(g)), g = 0 (PR #1089; TOP)
    ln_scale: bool = False  # norm output of physical layer i times 1/sqrt(i+1) (PR #287/#315; TOP)
    parallel_start_layer: int = -1  # two residual lanes from this physical layer on; -1 off (TOP 8, #1880 7)
    parallel_final_lane: str = "mean"  # mean | attn | mlp: lanes that make the final hidden state (TOP mean)
    num_loops: int = 0  # depth recurrence: extra passes over loop_start..loop_end; 0 off (TOP, #1880, #1969: 2)
    loop_start: int = -1  # first looped physical layer (TOP 3); -1 with num_loops 0
    loop_end: int = -1  # last looped physical layer, inclusive (TOP 5)
    loop_enable_at: float = 0.0  # training fraction from which the loops run (TOP, #1880: 0.35)
    smear_gate: str = "none"  # none | v1 (#102: per-dim gate after the norm) | bos_fixed (#1880/#1855: TOP)
    smear_gate_width: int = 12  # bos_fixed gate input width (12 TOP/#1880, 32 in #1969)
    bos_id: int = 1  # BOS id of every pgolf tokenizer (sp*, byte260): marks document starts
    bigram_buckets: int = 0  # BigramHash rows; 0 off (2048..10240 in the March records)
    bigram_dim: int = 128  # BigramHash row width, projected to model_dim
    init: str = "default"  # default (PyTorch) | orthogonal (#102 lineage; TOP)
    embed_init: str = "normal"  # normal | overtone (2026-03-19 Overtone record)
    fused_ce: bool = False  # training loss: softcap + CE in one Triton kernel, eval unchanged (PR #1787; TOP #1855)
    fused_mlp: bool = False  # (leaky) relu² in the epilogue of the MLP's GEMMs, one Triton kernel each way (TOP #1855)
    # the fused MLP keeps post and a bit per hidden unit (pre > 0) for its backward, not pre: act'(pre) from
    # sqrt(post); pre's (tokens x hidden) write, read and memory go, gradients within bf16 rounding (model/fused_mlp.py)
    fused_mlp_sign_bits: bool = False
    # training loss as one op: head GEMM, softcapped CE and the gradient in one pass over the logits, the head's
    # backward GEMMs in the forward (model/fused_head_ce.py); supersedes fused_ce, eval unchanged
    fused_head_ce: bool = False
    # attn_scale / mlp_scale multiply the rows of the branch's output projection instead of its output (same math):
    # the scale's gradient becomes a row sum over the weight, not a reduction over every token (model/block.py)
    fold_branch_scales: bool = False
    # q's rms_norm, RoPE and q_gain as one autograd function whose backward takes q_gain's gradient from the norm's
    # per-row dot instead of a pass over every token of q and dq (same math; model/q_norm_rope.py)
    fused_q_norm: bool = False
    # q's and k's norm + RoPE (+ q_gain) as custom ops, on CUDA one Triton pass each way with the output written
    # once, contiguous (same math; model/q_norm_rope.py, q_norm_rope_triton.py); supersedes fused_q_norm. Measured
    # no faster on pr1855 (H200: micro-step +0.9%, whole run with CUDA graphs equal; README, "Measured")
    norm_rope_kernel: bool = False
    # XSA and the attention output gate as one op whose backward is one pass over d out, y and v (on CUDA a Triton
    # kernel), instead of the several kernels autograd's composition compiles to (same math; model/xsa_gate.py)
    fused_xsa_gate: bool = False

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
        self._check_stack_techniques()
        self._check_attention_techniques()

    def _check_attention_techniques(self) -> None:
        """Attention fields (the "attention techniques" section)."""
        from pgolf.model.patterns import parse_layers

        hd = self.head_dim
        if self.rope_dims and not (2 <= self.rope_dims <= hd and self.rope_dims % 2 == 0):
            raise ValueError(f"model.rope_dims={self.rope_dims} must be 0 (all) or an even number in [2, head_dim={hd}]")
        _check_choice("model.rope_scaling", self.rope_scaling, ("none", "ntk", "yarn"))
        if self.rope_train_seq_len < 1:
            raise ValueError(f"model.rope_train_seq_len must be >= 1, got {self.rope_train_seq_len}")
        if self.rope_scaling == "ntk" and (self.rope_dims or hd) <= 2:
            raise ValueError("model.rope_scaling='ntk' needs more than 2 rotated dims (base * s^(k/(k-2))); "
                             f"model.rope_dims={self.rope_dims}")
        xsa = parse_layers(self.xsa_layers, self.num_layers, field="model.xsa_layers")
        if self.xsa_gated and not any(xsa):
            raise ValueError(f"model.xsa_gated=True needs XSA layers, but model.xsa_layers={self.xsa_layers!r}")
        if self.fused_xsa_gate and not any(xsa):
            raise ValueError(f"model.fused_xsa_gate=True needs XSA layers, but model.xsa_layers={self.xsa_layers!r}")
        for name in ("attn_out_gate_width", "sparse_attn_gate_width"):
            w = getattr(self, name)
            if not 0 <= w <= self.model_dim:
                raise ValueError(f"model.{name}={w} must be 0 (off) or in [1, model_dim={self.model_dim}]")
        gates = [n for n, on in (("attn_out_gate_width", self.attn_out_gate_width > 0),
                                 ("sparse_attn_gate_width", self.sparse_attn_gate_width > 0),
                                 ("gated_attn", self.gated_attn)) if on]
        if len(gates) > 1:
            raise ValueError(f"model.{' and model.'.join(gates)} are mutually exclusive attention output gates: "
                             "turn on at most one")
        if not self.sparse_attn_gate_scale > 0:
            raise ValueError(f"model.sparse_attn_gate_scale must be positive, got {self.sparse_attn_gate_scale}")
        if not self.gated_attn_init_std >= 0:
            raise ValueError(f"model.gated_attn_init_std must be >= 0, got {self.gated_attn_init_std}")
        if self.gated_attn_quant_gate and not gates:
            raise ValueError("model.gated_attn_quant_gate=True quantizes attn_gate_w, which only exists with "
                             "model.gated_attn, model.sparse_attn_gate_width or model.attn_out_gate_width")
        _check_choice("model.attn_backend", self.attn_backend, ("sdpa", "flex", "varlen", "fa3", "fa4"))
        _check_choice("model.sdpa_priority", self.sdpa_priority, ("default", "cudnn"))

    def _check_stack_techniques(self) -> None:
        """MLP, residual-stream, token-mixing and init fields (the section above)."""
        L = self.num_layers
        if self.mlp_mult <= 0 or self.mlp_hidden < 1:
            raise ValueError(f"model.mlp_mult must be positive, got {self.mlp_mult}")
        _check_choice("model.mlp_act", self.mlp_act, ("relu2", "leaky_relu2", "swiglu"))
        if self.fused_head_ce and self.vocab_size > 16384:
            raise ValueError(f"model.fused_head_ce holds a row of logits per program in registers: model.vocab_size="
                             f"{self.vocab_size} > 16384; use model.fused_ce")
        if self.fused_mlp and self.mlp_act == "swiglu":
            raise ValueError("model.fused_mlp=True fuses relu2 / leaky_relu2; model.mlp_act='swiglu' has no fused kernel")
        if self.fused_mlp_sign_bits and not (self.fused_mlp and self.mlp_hidden % 64 == 0):
            raise ValueError(f"model.fused_mlp_sign_bits needs model.fused_mlp=True and a hidden width that is a "
                             f"multiple of 64 (got fused_mlp={self.fused_mlp}, hidden {self.mlp_hidden})")
        if not 0.0 <= self.mlp_leaky_slope < 1.0:
            raise ValueError(f"model.mlp_leaky_slope must be in [0, 1), got {self.mlp_leaky_slope}")
        if self.num_loops < 0:
            raise ValueError(f"model.num_loops must be >= 0, got {self.num_loops}")
        if self.num_loops == 0 and (self.loop_start, self.loop_end) != (-1, -1):
            raise ValueError(f"model.loop_start={self.loop_start}/model.loop_end={self.loop_end} are set but "
                             "model.num_loops=0: set num_loops > 0 or leave both at -1")
        if self.num_loops > 0 and not 0 <= self.loop_start <= self.loop_end < L:
            raise ValueError(f"model.loop_start={self.loop_start}, model.loop_end={self.loop_end} must satisfy "
                             f"0 <= loop_start <= loop_end < num_layers={L} when model.num_loops > 0")
        if not 0.0 <= self.loop_enable_at <= 1.0:
            raise ValueError(f"model.loop_enable_at must be in [0, 1], got {self.loop_enable_at}")
        psl = self.parallel_start_layer
        if psl != -1 and not L // 2 <= psl < L:
            raise ValueError(f"model.parallel_start_layer={psl} must be -1 or a decoder layer in [{L // 2}, {L - 1}]")
        if psl != -1 and self.num_loops > 0 and psl <= self.loop_end:
            raise ValueError(f"model.parallel_start_layer={psl} must come after the looped layers "
                             f"(model.loop_end={self.loop_end})")
        _check_choice("model.parallel_final_lane", self.parallel_final_lane, ("mean", "attn", "mlp"))
        _check_choice("model.smear_gate", self.smear_gate, ("none", "v1", "bos_fixed"))
        if self.smear_gate == "v1" and getattr(self, "doc_isolated", False):
            raise ValueError("model.smear_gate='v1' blends the previous document's last token into a BOS; "
                             "with model.doc_isolated use model.smear_gate='bos_fixed'")
        if not 1 <= self.smear_gate_width <= self.model_dim:
            raise ValueError(f"model.smear_gate_width must be in [1, model_dim={self.model_dim}], "
                             f"got {self.smear_gate_width}")
        if not 0 <= self.bos_id < self.vocab_size:
            raise ValueError(f"model.bos_id={self.bos_id} is not a token id (vocab_size={self.vocab_size})")
        if self.bigram_buckets == 1 or self.bigram_buckets < 0 or self.bigram_dim < 1:
            raise ValueError(f"model.bigram_buckets must be 0 (off) or >= 2 and model.bigram_dim >= 1, got "
                             f"{self.bigram_buckets} and {self.bigram_dim}")
        _check_choice("model.init", self.init, ("default", "orthogonal"))
        _check_choice("model.embed_init", self.embed_init, ("normal", "overtone"))

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
    # Checked by pgolf.optim.builder.check_optim_techniques; formulas and PRs in optim/muon.py and optim/builder.py.
    muon_ns: str = "ns5"  # ns5 | polar_express (per-step coefficients, arXiv:2505.16932; TOP)
    muon_row_normalize: bool = False  # MuonEq-R: rows of the update / their L2 norm before NS (arXiv:2603.28254)
    muon_wd: float = 0.0  # decoupled Muon WD: p *= 1 - lr*wd, lr scheduled (TOP 0.095)
    embed_wd: float = 0.0  # AdamW WD on the token embedding (TOP 0.085)
    adam_wd: float = 0.0  # AdamW WD on control tensors / scalars (TOP 0.02)
    wd_taper_start_frac: float = 0.7  # tapered Muon WD: x1 until this fraction of the run ...
    wd_taper_final_mul: float = 1.0  # ... then linear to x this at the end (1.0 = off; 2026-04-18 record: 0.5)
    muon_momentum_warmup_frac: float = 0.0  # > 0: momentum warmup over this fraction of the run, not steps


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
    prime_eval: bool = True  # also compile the evaluation graphs in the warm-up (off: a throughput run that stops
    #                          at the end of training skips them; the final evaluation then compiles its own)
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
    # torch.compile mode of the training graph: default | max-autotune-no-cudagraphs (Triton GEMM templates with
    # fused epilogues, e.g. the LeakyReLU² after the MLP up-projection; minutes more compile, outside the clock) |
    # reduce-overhead (CUDA graphs: each micro-batch's forward and backward replay as one launch, so the GPU does not
    # wait out the gaps between thousands of kernel launches; the first backward's gradients are copied, step.py) |
    # max-autotune (both: the GEMM search with its fused epilogues, replayed as CUDA graphs). Measured on pr1855
    # (H200, flat model): its compile ran past 540 s, and for the LM head's weight gradient the best Triton GEMM ran
    # at 92% of cuBLAS (benchmarks/results/logs/model_step_maxautotune_h200_killed_excerpt.log)
    compile_mode: str = "default"
    # inductor's mix-order reduction fusion in the training graph (torch >= 2.10: row and column reductions of one
    # tensor, as in RMSNorm's backward, in one kernel). Off by default: torch 2.11 asserts on some stacks with it
    # (train/loop.py); evaluation graphs always compile without it
    mix_order_reduction: bool = False
    # inductor's coordinate-descent tuning of its generated Triton kernels (block sizes, warps), timed on the device
    # at compile: the fused norms, rotary and residual mixes are about a quarter of pr1855's GPU time. Off by default
    # (longer warm-up, outside the clock); max-autotune-no-cudagraphs already includes it
    coordinate_descent_tuning: bool = False
    device: str = "auto"  # auto | cpu | cuda
    # --- training techniques: averaging, QAT, loaders, kernels (each off by default) ---
    # Checked by pgolf.train.schedule.check_train_techniques; formulas in train/{schedule,ema,qat}.py, data/loaders_*.py.
    lr_warmup_frac: float = 0.0  # linear LR warmup over this fraction of the run (0 = none, as the records)
    ema_decay: float = 0.0  # EMA of all weights, applied before scoring/export (0 = off; TOP 0.9965)
    swa_every: int = 0  # SWA: average a snapshot every k steps ... (0 = off; 03-20 records: 50)
    swa_start_lr_mul: float = 0.2  # ... once lr_mul < this (03-25: 0.2, 03-20: 0.4)
    qat_bits: int = 0  # late STE QAT of block matrices at this many bits, per-row (0 = off; 03-22: 6)
    qat_start_lr_mul: float = 0.15  # QAT switches on (and stays on) once lr_mul < this; > 1 = from step 0
    loader: str = "stream"  # stream (baseline) | coprime (PR #1060) | docpack (TOP)
    profile_steps: int = 0  # torch.profiler over this many steps ... -> runs/<id>/profile.json (train/profile.py)
    profile_skip: int = 10  # ... after this many timed steps (e.g. past loop_enable_at to see the looped layers)

    def __post_init__(self) -> None:
        if self.batch_tokens % self.seq_len or self.micro_batch_tokens % self.seq_len:
            raise ValueError(
                f"train.batch_tokens={self.batch_tokens} and train.micro_batch_tokens={self.micro_batch_tokens} "
                f"must be multiples of train.seq_len={self.seq_len}"
            )
        if not 0.0 <= self.warmdown_frac <= 1.0:
            raise ValueError(f"train.warmdown_frac must be in [0, 1], got {self.warmdown_frac}")
        _check_choice("train.device", self.device, ("auto", "cpu", "cuda"))
        if self.profile_skip < 1:
            raise ValueError(f"train.profile_skip must be >= 1 (timed steps before the profiled window), got "
                             f"{self.profile_skip}")

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
    # scheme="mixed" switches to pgolf.quant.export (per-class row quantization); the fields below act only then,
    # except codec/compressor/byte_shuffle (any scheme) and gptq_reserve_s (the training loop).
    matrix_bits: int = 8  # block matrices, 2..8 (TOP: 6)
    embed_bits: int = 8  # tok_emb / lm_head: 2..8, or 16 = fp16 (TOP: 7)
    asym: bool = False  # asymmetric rows (zero point) instead of symmetric
    clip: str = "percentile"  # percentile (uses clip_percentile) | search (GPTQ-lite) | sdclip (PR #1394) | absmax
    clip_k_attn: float = 13.0  # SDClip k per tensor class (TOP values)
    clip_k_mlp: float = 11.5
    clip_k_embed: float = 14.0
    clip_k_other: float = 12.85
    control_dtype: str = "float32"  # control tensors: float32 | float16 | int8 (TOP: float16)
    gate_int8: bool = False  # attn_gate tensors int8 per row (PR #1736 / #2123 "quant gate")
    pack_bits: bool = False  # pack 2..7-bit codes densely
    byte_shuffle: int = 0  # byte-shuffle stride before the codec (0 = off; PR #1089 uses 2)
    compressor: str = "single"  # single (one codec) | pergroup (best codec per tensor group, TOP)
    # compressor=pergroup only (a single codec ignores it): groups over this many raw bytes are cut at matrix
    # boundaries into parallel codec jobs (0 = off; quant/pergroup.py: pr1855's mlp.fc brotli 18.5 s -> 3.3 s in
    # 4 parts, same bytes)
    pergroup_split_bytes: int = 0
    gptq: bool = False  # full-Hessian GPTQ (needs calibration batches)
    gptq_block: int = 128
    gptq_damp: float = 0.01
    gptq_act_order: bool = True
    gptq_calib_batches: int = 16
    gptq_reserve_s: float = 0.0  # taken off train.wallclock_s for Hessian collection (PR #1855)
    lqer_rank: int = 0  # LQER low-rank error correction (PR #1797); 0 = off
    lqer_top_k: int = 3
    lqer_group: int = 64
    lqer_asym: bool = True  # A int2 + B int4 per group; False = both at lqer_factor_bits per row
    lqer_factor_bits: int = 4
    lqer_whiten: bool = False  # SVD of E·chol(H): optimal for the layer output (SVD-LLM whitening); needs calibration
    awq_top_k: int = 0  # AWQ-lite (PR #1908): salient column groups kept on the awq_bits grid; 0 = off
    awq_group: int = 64
    awq_bits: int = 8
    fit_budget: bool = False  # budget fitter: scale the clip step (and prune ±1) to land just under the limit
    fit_alpha_min: float = 0.5
    fit_alpha_max: float = 4.0
    fit_max_iters: int = 10
    fit_tolerance_bytes: int = 20_000  # stop once this close under the limit

    def __post_init__(self) -> None:
        _check_choice("quant.scheme", self.scheme, ("int8_rowwise", "mixed"))
        _check_choice("quant.codec", self.codec, ("zlib", "lzma", "zstd", "brotli"))
        from pgolf.quant.options import check_quant_config  # noqa: PLC0415 (torch-free; validates the fields above)

        check_quant_config(self)


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
        if self.model.rope_scaling != "none" and self.model.rope_train_seq_len != self.train.seq_len:
            raise ValueError(
                f"model.rope_scaling={self.model.rope_scaling!r} stretches RoPE from model.rope_train_seq_len="
                f"{self.model.rope_train_seq_len}, which must equal train.seq_len={self.train.seq_len}"
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
