"""Token mixing at the embedding: SmearGate (two variants) and the BigramHash embedding.

Where they act in ``GPT.embed`` (``e`` = token embedding, ``ids`` = token ids)::

    e <- e + BigramHash(ids)                       before the norm
    e <- SmearGateBOS(e, ids)                      on the raw embedding   (smear_gate = "bos_fixed")
    x  = rms_norm(e)
    x <- SmearGateV1(x)                            after the norm         (smear_gate = "v1")

Every module here looks at most one token back, so the model stays causal.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pgolf.config import ModelConfig
from pgolf.model.layers import CastedLinear


def previous(x: Tensor) -> Tensor:
    """x shifted one position right along time (B, T, ...), zeros at t = 0."""
    return torch.cat((torch.zeros_like(x[:, :1]), x[:, :-1]), dim=1)


class SmearGateV1(nn.Module):
    """PR #102 (and the 2026-03-20/25 records): a static per-dim gate g blends in the previous position,

        x_t <- (1 - sigmoid(g)) * x_t + sigmoid(g) * x_{t-1}        (x_{-1} = 0)

    g starts at 0, i.e. a 0.5/0.5 blend: NOT the identity at init. (The 03-19 smeargate README used g = 3.)
    It does not know about document boundaries: at a BOS it blends in the previous document's last token.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.gate = nn.Parameter(torch.zeros(cfg.model_dim))

    def forward(self, x: Tensor) -> Tensor:
        g = torch.sigmoid(self.gate.to(x.dtype))
        return (1 - g) * x + g * previous(x)


class SmearGateBOS(nn.Module):
    """TOP (PR #1855), #1880, #1969 (PR #1667 gate, BOS fix from PR #1851): an input-dependent scalar gate on the
    raw embedding, from the first ``w = smear_gate_width`` channels of the current token::

        e_t <- e_t + lam * sigmoid(w . e_t[:W]) * e_{t-1} * [tok_t != BOS]        for t >= 1

    ``w`` (W,) and ``lam`` are zero, so it is the identity at init. The BOS mask stops the last token of one
    packed document from leaking into the next document's first token (the PR #1797 bug).
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.width, self.bos_id = cfg.smear_gate_width, cfg.bos_id
        self.gate_w = nn.Parameter(torch.zeros(cfg.smear_gate_width))
        self.lam = nn.Parameter(torch.zeros(1))

    def forward(self, e: Tensor, ids: Tensor) -> Tensor:
        g = self.lam.to(e.dtype) * torch.sigmoid(e[:, 1:, : self.width] @ self.gate_w.to(e.dtype))  # (B, T-1)
        g = g * (ids[:, 1:] != self.bos_id).to(e.dtype)
        return torch.cat((e[:, :1], e[:, 1:] + g.unsqueeze(-1) * e[:, :-1]), dim=1)


class BigramHash(nn.Module):
    """Hashed bigram embedding (2026-03-20 record lineage, PR #102 era; dropped at SP4096+)::

        h_t = table[(36313 * tok_t XOR 27191 * tok_{t-1}) mod (B - 1)]      bucket B-1 at t = 0 and at a BOS
        out = scale * proj(h_t)                                              added to the token embedding

    table (B, dim) starts at zero, so it is the identity at init; ``scale`` starts at 0.05. ``proj`` is NOT
    zero: with a zero table and a zero proj neither would ever get a gradient (in the records ``proj`` was
    re-initialized orthogonally by the model's init loop). Here it gets the model's linear init (PyTorch
    default or ``init = orthogonal``). A BOS position also takes bucket B-1 (the records hash it with the
    previous document's last token) so that no document sees the one before it.
    The table goes to Adam at the embedding LR, proj to Muon (policy rows in ``pgolf.optim.policy``).
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.buckets, self.bos_id = cfg.bigram_buckets, cfg.bos_id
        self.table = nn.Parameter(torch.zeros(cfg.bigram_buckets, cfg.bigram_dim))
        with torch.random.fork_rng(devices=[]):  # built without moving the RNG: baseline weights stay bit-identical
            self.proj = CastedLinear(cfg.bigram_dim, cfg.model_dim)
        self.scale = nn.Parameter(torch.tensor(0.05))

    @torch.no_grad()
    def reset_parameters(self) -> None:
        nn.init.zeros_(self.table)
        self.proj.reset_parameters()
        self.scale.fill_(0.05)

    def bucket_ids(self, ids: Tensor) -> Tensor:
        t = ids.long()
        mod = self.buckets - 1
        h = torch.bitwise_xor(36313 * t[:, 1:], 27191 * t[:, :-1]) % mod
        h = torch.where(t[:, 1:] == self.bos_id, mod, h)
        return torch.cat((torch.full_like(t[:, :1], mod), h), dim=1)

    def forward(self, ids: Tensor) -> Tensor:
        h = F.embedding(self.bucket_ids(ids), self.table)
        return self.scale.to(h.dtype) * self.proj(h)
