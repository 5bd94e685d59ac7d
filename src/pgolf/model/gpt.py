"""The GPT of the naive baseline (openai/parameter-golf ``train_gpt.py``), written to be extended.

Embedding -> rms_norm -> blocks (``block.py``: attention, MLP, residual mixing) -> rms_norm -> tied head.
The first half of the blocks push their outputs on a stack; each later block first adds
``skip_weights[i] * pop()`` (U-Net skips). Logits are ``softcap * tanh(h E^T / softcap)`` with the
tied embedding E. Output projections start at zero, so every block is the identity at step 0.

Parameter names follow the official script, so its checkpoints load here unchanged.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pgolf.config import ModelConfig
from pgolf.model.block import Block
from pgolf.model.layers import CastedLinear, rms_norm


class GPT(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.model_dim)
        self.num_encoder_layers = cfg.num_layers // 2
        self.num_decoder_layers = cfg.num_layers - self.num_encoder_layers
        num_skips = min(self.num_encoder_layers, self.num_decoder_layers)
        self.skip_weights = nn.Parameter(torch.ones(num_skips, cfg.model_dim))
        self.blocks = nn.ModuleList(Block(cfg, i) for i in range(cfg.num_layers))
        self.lm_head = None if cfg.tie_embeddings else CastedLinear(cfg.model_dim, cfg.vocab_size, zero_init=True)
        self.reset_parameters()

    def set_progress(self, frac: float) -> None:
        """Called by the training loop before every step with the elapsed fraction of the run (0..1);
        techniques scheduled on training progress (e.g. depth recurrence switched on at 35%) read it here.
        Evaluation code calls it with 1.0. The baseline has none."""

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Init table: tied tok_emb ~ N(0, tied_embed_init_std); untied tok_emb ~ N(0, 1) (nn.Embedding default);
        attn.proj, mlp.proj and an untied lm_head = 0; other linears keep PyTorch's kaiming-uniform default;
        attn_scale = mlp_scale = skip_weights = 1; resid_mix = (1, 0); q_gain = qk_gain_init."""
        if self.cfg.tie_embeddings:
            nn.init.normal_(self.tok_emb.weight, mean=0.0, std=self.cfg.tied_embed_init_std)
        for m in self.modules():
            if isinstance(m, CastedLinear) and m.zero_init:
                nn.init.zeros_(m.weight)

    def hidden(self, input_ids: Tensor) -> Tensor:
        """Final-normed hidden states (B, T, D)."""
        x = rms_norm(self.tok_emb(input_ids))
        x0 = x
        skips: list[Tensor] = []
        for i in range(self.num_encoder_layers):
            x = self.blocks[i](x, x0)
            skips.append(x)
        for i in range(self.num_decoder_layers):
            if skips:
                x = x + self.skip_weights[i].to(x.dtype) * skips.pop()
            x = self.blocks[self.num_encoder_layers + i](x, x0)
        return rms_norm(x)

    def logits(self, input_ids: Tensor) -> Tensor:
        """Soft-capped logits in fp32, (B, T, V)."""
        h = self.hidden(input_ids)
        w = self.tok_emb.weight if self.lm_head is None else self.lm_head.weight
        raw = F.linear(h, w.to(h.dtype))
        cap = self.cfg.logit_softcap
        return (cap * torch.tanh(raw / cap)).float()

    def token_losses(self, input_ids: Tensor, target_ids: Tensor) -> Tensor:
        """Per-token negative log-likelihood in nats, (B, T), fp32."""
        logits = self.logits(input_ids)
        return F.cross_entropy(logits.flatten(0, 1), target_ids.flatten(), reduction="none").view_as(target_ids)

    def forward(self, input_ids: Tensor, target_ids: Tensor) -> Tensor:
        """Mean training loss (nats/token)."""
        logits = self.logits(input_ids)
        return F.cross_entropy(logits.flatten(0, 1), target_ids.flatten())


def control_param(name: str, p: Tensor) -> bool:
    """Vectors, scalars and the named control tensors stay fp32 (baseline CONTROL_TENSOR_NAME_PATTERNS)."""
    return p.ndim < 2 or any(k in name for k in ("attn_scale", "mlp_scale", "resid_mix", "q_gain", "skip_weight"))


def cast_for_training(model: GPT, device: torch.device) -> GPT:
    """Baseline dtype layout on GPU: bf16 embedding, fp32 linear weights and control tensors.
    On CPU everything stays fp32."""
    model = model.to(device)
    if device.type != "cuda":
        return model
    model.bfloat16()
    for name, p in model.named_parameters():
        if isinstance(_owner(model, name), CastedLinear) or control_param(name, p):
            p.data = p.data.float()
    return model


def _owner(model: nn.Module, param_name: str) -> nn.Module:
    return model.get_submodule(param_name.rsplit(".", 1)[0]) if "." in param_name else model


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
