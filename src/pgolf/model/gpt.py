"""The GPT of the naive baseline (openai/parameter-golf ``train_gpt.py``), with each technique behind one switch.

    embed    e = tok_emb(ids) [+ BigramHash] [SmearGate bos_fixed];  x = x0 = rms_norm(e) [SmearGate v1]
    encoder  for layer i in the encoder order:  x = block_i(x, x0);  push x                    (U-Net)
    decoder  for slot j, layer i in the decoder order:  x = skip_j(x, pop());  x = block_i(x, x0)
             from parallel_start_layer on, two lanes:   x, lane1 = block_i.forward_lanes(x, lane1, x0)
    head     h = rms_norm(x, or the lane merge);  logits = softcap * tanh(h E^T / softcap)  (tied E)
    loss     cross-entropy of the logits; fused_ce: softcap + CE in one kernel on h E^T (fused_ce.py, training);
             fused_head_ce: head, CE and their gradients in one op (fused_head_ce.py, training)

``skip_j(x, s) = x + w_j * s``, or with skip gates ``lerp(w_j * s, x, sigmoid(g_j))``. Encoder/decoder
orders come from ``recurrence.py`` (plain, or with looped layers once ``loop_enable_at`` is reached);
token mixing from ``embed.py``; the block's data flow from ``block.py``; init options from ``init.py``.
Output projections start at zero, so every baseline block is the identity at step 0.

Parameter names follow the official script, so its checkpoints load here unchanged.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pgolf.config import ModelConfig
from pgolf.model.attention import CausalSelfAttention
from pgolf.model.attn_backends import apply_sdpa_priority, build_attn_context, needs_cu_seqlens, padded_cu_seqlens
from pgolf.model.block import Block
from pgolf.model.embed import BigramHash, SmearGateBOS, SmearGateV1
from pgolf.model.fused_ce import softcapped_cross_entropy
from pgolf.model.fused_head_ce import head_softcapped_ce
from pgolf.model.init import orthogonal_linears_, overtone_
from pgolf.model.layers import CastedLinear, rms_norm
from pgolf.model.mlp import MLP
from pgolf.model.recurrence import layer_order


class GPT(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.model_dim)
        self.order = layer_order(cfg)
        self.num_encoder_layers, self.num_decoder_layers = (len(half) for half in self.order.plain)
        self.skip_weights = nn.Parameter(torch.ones(self.order.num_skips, cfg.model_dim))
        self.blocks = nn.ModuleList(Block(cfg, i) for i in range(cfg.num_layers))
        self.lm_head = None if cfg.tie_embeddings else CastedLinear(cfg.model_dim, cfg.vocab_size, zero_init=True)
        # Technique modules exist only when switched on, come after the baseline's and draw no random numbers
        # here, so the baseline weights are bit-identical with or without them.
        self.skip_gates = nn.Parameter(torch.zeros(self.order.num_skips, cfg.model_dim)) if cfg.skip_gates else None
        smear_cls = {"v1": SmearGateV1, "bos_fixed": SmearGateBOS}.get(cfg.smear_gate)
        self.smear = smear_cls(cfg) if smear_cls else None
        self.bigram = BigramHash(cfg) if cfg.bigram_buckets else None
        self.segment_sizes: dict[tuple[int, int], int] = {}  # (B, T) -> padded cu_seqlens length, see pad_segments
        self.looping = self.order.has_loops  # a fresh model is in its end-of-training state (progress 1.0)
        self.reset_parameters()

    def set_progress(self, frac: float) -> None:
        """Called by the training loop before every step with the elapsed fraction of the run (0..1), and with
        1.0 before export/eval. Depth recurrence runs the looped order from ``loop_enable_at`` on. `looping` is
        a plain bool read in forward: torch.compile guards on it and builds a second graph when it flips."""
        self.looping = self.order.has_loops and frac >= self.cfg.loop_enable_at

    def progress_milestones(self) -> tuple[float, ...]:
        """Training fractions at which the forward changes; the loop's compile warm-up primes each state."""
        return (self.cfg.loop_enable_at,) if self.order.has_loops else ()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Init table: tied tok_emb ~ N(0, tied_embed_init_std); untied tok_emb ~ N(0, 1) (nn.Embedding default);
        attn.proj, mlp.proj and an untied lm_head = 0; other linears keep PyTorch's kaiming-uniform default;
        attn_scale = mlp_scale = skip_weights = 1; resid_mix = (1, 0); q_gain = qk_gain_init.
        Options (init.py): embed_init=overtone reshapes tok_emb's spectrum; init=orthogonal re-inits linears.
        Technique parameters: skip_gates 0, lane_resid 1.1, lane_post 1, smear gates 0, bigram table 0."""
        if self.cfg.tie_embeddings:
            nn.init.normal_(self.tok_emb.weight, mean=0.0, std=self.cfg.tied_embed_init_std)
        if self.cfg.embed_init == "overtone":
            overtone_(self.tok_emb.weight)
        for m in self.modules():
            if isinstance(m, CastedLinear) and m.zero_init:
                nn.init.zeros_(m.weight)
        if self.bigram is not None:
            self.bigram.reset_parameters()
        if self.cfg.init == "orthogonal":
            orthogonal_linears_(self)

    def embed(self, input_ids: Tensor) -> Tensor:
        """Normed input embedding x0 (B, T, D), with the token-mixing options of embed.py."""
        e = self.tok_emb(input_ids)
        if self.bigram is not None:
            e = e + self.bigram(input_ids)
        if self.cfg.smear_gate == "bos_fixed":
            e = self.smear(e, input_ids)
        x = rms_norm(e)
        if self.cfg.smear_gate == "v1":
            x = self.smear(x)
        return x

    @property
    def uses_segments(self) -> bool:
        """Whether attention reads cu_seqlens (varlen; fa3 when doc-isolated), which `attn_inputs` supplies."""
        return needs_cu_seqlens(self.cfg)

    def pad_segments(self, shape: tuple[int, int], size: int) -> None:
        """Pad the cu_seqlens of every (B, T) = `shape` batch to `size` entries (attn_backends.segment_bound), so
        one compiled graph serves them all; the training loop sets it per batch shape and primes that graph."""
        self.segment_sizes[tuple(shape)] = size

    def attn_inputs(self, input_ids: Tensor) -> dict[str, Tensor]:
        """Extra forward arguments computed outside a compiled graph: {"cu_seqlens": ...} for the segment backends
        (attn_backends.padded_cu_seqlens), else {}, on the device of `input_ids`. Call as
        ``net(x, y, **model.attn_inputs(x))``. The training loop calls it on the host batch and copies the result
        with the batch, so the host never waits for the GPU (#1855 builds cu_seqlens in its loader)."""
        if not self.uses_segments:
            return {}
        size = self.segment_sizes.get(tuple(input_ids.shape))
        return {"cu_seqlens": padded_cu_seqlens(input_ids, self.cfg.bos_id, self.cfg.doc_isolated, size=size)}

    def hidden(self, input_ids: Tensor, cu_seqlens: Tensor | None = None) -> Tensor:
        """Final-normed hidden states (B, T, D). cu_seqlens: see `attn_inputs`."""
        x = x0 = self.embed(input_ids)
        ctx = build_attn_context(self.cfg, input_ids, cu_seqlens)  # mask / doc segments, shared by all layers
        encoder, decoder = self.order.looped if self.looping else self.order.plain
        skips: list[Tensor] = []
        for i in encoder:
            x = self.blocks[i](x, x0, ctx)
            skips.append(x)
        lane1 = None  # second residual lane once the parallel blocks start; x is lane 0
        for slot, i in enumerate(decoder):
            block = self.blocks[i]
            if block.parallel and lane1 is None:
                lane1 = x
            if skips:
                x = self.skip(slot, x, skips.pop())
            if lane1 is None:
                x = block(x, x0, ctx)
            else:
                x, lane1 = block.forward_lanes(x, lane1, x0, ctx)
        if lane1 is not None:
            x = self.merge_lanes(x, lane1)
        return rms_norm(x)

    def skip(self, slot: int, x: Tensor, s: Tensor) -> Tensor:
        """U-Net skip into decoder position `slot`; with skip gates (PR #1089; TOP) sigmoid(g)*x + (1-sigmoid(g))*w*s,
        g = 0 at init: a 0.5/0.5 blend, NOT the baseline's x + w*s."""
        w = self.skip_weights[slot].to(x.dtype)
        if self.skip_gates is None:
            return x + w * s
        return torch.lerp(w * s, x, torch.sigmoid(self.skip_gates[slot].to(x.dtype)))

    def merge_lanes(self, lane0: Tensor, lane1: Tensor) -> Tensor:
        """Final hidden of the parallel lanes (``parallel_final_lane``; TOP: mean)."""
        lane = self.cfg.parallel_final_lane
        return lane0 if lane == "attn" else lane1 if lane == "mlp" else 0.5 * (lane0 + lane1)

    def raw_logits(self, input_ids: Tensor, cu_seqlens: Tensor | None = None) -> Tensor:
        """Head output before the softcap, (B, T, V), in the activation dtype (bf16 under autocast)."""
        h = self.hidden(input_ids, cu_seqlens)
        w = self.tok_emb.weight if self.lm_head is None else self.lm_head.weight
        return F.linear(h, w.to(h.dtype))

    def logits(self, input_ids: Tensor, cu_seqlens: Tensor | None = None) -> Tensor:
        """Soft-capped logits in fp32, (B, T, V)."""
        raw = self.raw_logits(input_ids, cu_seqlens)
        cap = self.cfg.logit_softcap
        return (cap * torch.tanh(raw / cap)).float()

    def token_losses(self, input_ids: Tensor, target_ids: Tensor, cu_seqlens: Tensor | None = None) -> Tensor:
        """Per-token negative log-likelihood in nats, (B, T), fp32."""
        logits = self.logits(input_ids, cu_seqlens)
        return F.cross_entropy(logits.flatten(0, 1), target_ids.flatten(), reduction="none").view_as(target_ids)

    def forward(self, input_ids: Tensor, target_ids: Tensor, cu_seqlens: Tensor | None = None) -> Tensor:
        """Mean training loss (nats/token). With fused_ce (PR #1787; TOP #1855) softcap + CE run in one kernel on the
        raw head, in fp32 (fused_ce.py). token_losses (evaluation) keeps the eager head on purpose, as the record
        does: under autocast its tanh runs in bf16, so the fused loss is close to it but not bit-equal on GPU."""
        if self.cfg.fused_head_ce:
            h = self.hidden(input_ids, cu_seqlens)
            w = self.tok_emb.weight if self.lm_head is None else self.lm_head.weight
            return head_softcapped_ce(h.flatten(0, 1), w.to(h.dtype), target_ids.flatten(), self.cfg.logit_softcap)
        if self.cfg.fused_ce:
            raw = self.raw_logits(input_ids, cu_seqlens)
            return softcapped_cross_entropy(raw.flatten(0, 1), target_ids.flatten(), self.cfg.logit_softcap)
        logits = self.logits(input_ids, cu_seqlens)
        return F.cross_entropy(logits.flatten(0, 1), target_ids.flatten())


def control_param(name: str, p: Tensor) -> bool:
    """Vectors, scalars and the named control tensors stay fp32 (baseline CONTROL_TENSOR_NAME_PATTERNS)."""
    return p.ndim < 2 or any(k in name for k in ("attn_scale", "mlp_scale", "resid_mix", "q_gain", "skip_weight",
                                                 "skip_gate", "lane_", "attn_gate"))


def cast_for_training(model: GPT, device: torch.device) -> GPT:
    """Baseline dtype layout on GPU: bf16 embedding, fp32 linear weights and control tensors.
    On CPU everything stays fp32. Applies the model's SDPA kernel order (model.sdpa_priority) to the process."""
    apply_sdpa_priority(model.cfg.sdpa_priority)
    model = model.to(device)
    return cast_parameters_bf16(model) if device.type == "cuda" else model


def cast_parameters_bf16(model: GPT) -> GPT:
    """bf16 parameters except linear weights and control tensors (fp32); buffers (RoPE tables) stay fp32."""
    for name, p in model.named_parameters():
        keep_fp32 = isinstance(_owner(model, name), CastedLinear) or control_param(name, p)
        p.data = p.data.float() if keep_fp32 else p.data.bfloat16()
    return model


def _owner(model: nn.Module, param_name: str) -> nn.Module:
    return model.get_submodule(param_name.rsplit(".", 1)[0]) if "." in param_name else model


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@contextlib.contextmanager
def unfused_projections(model: nn.Module) -> Iterator[None]:
    """The fused paths of `model` off meanwhile (``model.fused_mlp``: MLP.fused; ``model.fused_qkv``:
    CausalSelfAttention.fused_qkv), so every CastedLinear is called: code that observes their inputs through module
    hooks (quant/calib.py) needs that. Both paths compute the same function, so the outputs do not change."""
    mods = list(model.modules())
    switched = ([(m, "fused") for m in mods if isinstance(m, MLP) and m.fused]
                + [(m, "fused_qkv") for m in mods if isinstance(m, CausalSelfAttention) and m.fused_qkv])
    for m, flag in switched:
        setattr(m, flag, False)
    try:
        yield
    finally:
        for m, flag in switched:
            setattr(m, flag, True)
