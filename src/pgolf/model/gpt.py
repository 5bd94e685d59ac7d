"""The GPT of the naive baseline (openai/parameter-golf ``train_gpt.py``), written to be extended.

Data flow of one block (pre-norm, RMSNorm without weights)::

    x  <- resid_mix[0] * x + resid_mix[1] * x0          # x0 = rms_norm(embedding), mix starts at (1, 0)
    x  <- x + attn_scale * Attn(rms_norm(x))           # GQA, QK-RMSNorm, RoPE, learned per-head q gain
    x  <- x + mlp_scale  * MLP(rms_norm(x))            # relu(x W1)^2 W2

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


def rms_norm(x: Tensor) -> Tensor:
    return F.rms_norm(x, (x.size(-1),))


class CastedLinear(nn.Linear):
    """Linear layer whose fp32 weight is cast to the activation dtype (bf16 under autocast) at matmul time."""

    def __init__(self, in_features: int, out_features: int, *, zero_init: bool = False):
        super().__init__(in_features, out_features, bias=False)
        self.zero_init = zero_init

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight.to(x.dtype))


def rotary_tables(seq_len: int, dim: int, base: float, device: torch.device, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """cos/sin tables of shape (1, 1, T, dim/2), computed in fp32 then cast to the activation dtype.

    The official script keeps ``inv_freq`` in a buffer that its ``.bfloat16()`` call also casts, so its
    positions are built in bf16 and rounded above 256; here the tables are always built in fp32.
    """
    inv_freq = 1.0 / (base ** (torch.arange(0, dim, 2, device=device, dtype=torch.float32) / dim))
    freqs = torch.outer(torch.arange(seq_len, device=device, dtype=torch.float32), inv_freq)
    return freqs.cos()[None, None].to(dtype), freqs.sin()[None, None].to(dtype)


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate-half RoPE over the whole last dimension of x (B, H, T, D)."""
    half = x.size(-1) // 2
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat((x1 * cos + x2 * sin, x2 * cos - x1 * sin), dim=-1)


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.num_heads, self.num_kv_heads, self.head_dim = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        kv_dim = cfg.num_kv_heads * cfg.head_dim
        self.c_q = CastedLinear(cfg.model_dim, cfg.model_dim)
        self.c_k = CastedLinear(cfg.model_dim, kv_dim)
        self.c_v = CastedLinear(cfg.model_dim, kv_dim)
        self.proj = CastedLinear(cfg.model_dim, cfg.model_dim, zero_init=True)
        self.q_gain = nn.Parameter(torch.full((cfg.num_heads,), cfg.qk_gain_init, dtype=torch.float32))
        self.rope_base = cfg.rope_base

    def forward(self, x: Tensor) -> Tensor:
        B, T, D = x.shape
        q = self.c_q(x).view(B, T, self.num_heads, self.head_dim).transpose(1, 2)  # (B, H, T, hd)
        k = self.c_k(x).view(B, T, self.num_kv_heads, self.head_dim).transpose(1, 2)  # (B, Hkv, T, hd)
        v = self.c_v(x).view(B, T, self.num_kv_heads, self.head_dim).transpose(1, 2)
        q, k = rms_norm(q), rms_norm(k)
        cos, sin = rotary_tables(T, self.head_dim, self.rope_base, x.device, q.dtype)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        q = q * self.q_gain.to(q.dtype)[None, :, None, None]
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=self.num_kv_heads != self.num_heads)
        return self.proj(y.transpose(1, 2).reshape(B, T, D))


class MLP(nn.Module):
    """relu² MLP (modded-nanogpt lineage, as in the baseline)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.fc = CastedLinear(cfg.model_dim, cfg.mlp_hidden)
        self.proj = CastedLinear(cfg.mlp_hidden, cfg.model_dim, zero_init=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(torch.relu(self.fc(x)).square())


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        d = cfg.model_dim
        self.attn = CausalSelfAttention(cfg)
        self.mlp = MLP(cfg)
        self.attn_scale = nn.Parameter(torch.ones(d))
        self.mlp_scale = nn.Parameter(torch.ones(d))
        self.resid_mix = nn.Parameter(torch.stack((torch.ones(d), torch.zeros(d))))

    def forward(self, x: Tensor, x0: Tensor) -> Tensor:
        mix = self.resid_mix.to(x.dtype)
        x = mix[0] * x + mix[1] * x0
        x = x + self.attn_scale.to(x.dtype) * self.attn(rms_norm(x))
        return x + self.mlp_scale.to(x.dtype) * self.mlp(rms_norm(x))


class GPT(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.model_dim)
        self.num_encoder_layers = cfg.num_layers // 2
        self.num_decoder_layers = cfg.num_layers - self.num_encoder_layers
        num_skips = min(self.num_encoder_layers, self.num_decoder_layers)
        self.skip_weights = nn.Parameter(torch.ones(num_skips, cfg.model_dim))
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.num_layers))
        self.lm_head = None if cfg.tie_embeddings else CastedLinear(cfg.model_dim, cfg.vocab_size, zero_init=True)
        self.reset_parameters()

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
