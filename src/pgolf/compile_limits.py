"""Dynamo's per-function graph limit: runs that compile one graph per shape (Newton–Schulz per matrix shape,
one training graph per cu_seqlens bucket) must raise it, or dynamo silently drops to eager past 8 graphs."""

from __future__ import annotations


def raise_recompile_limit(minimum: int = 64) -> None:
    """Set dynamo's recompile (older PyTorch: cache size) limit to at least `minimum`."""
    import torch._dynamo

    for key in ("recompile_limit", "cache_size_limit"):
        if hasattr(torch._dynamo.config, key):
            setattr(torch._dynamo.config, key, max(getattr(torch._dynamo.config, key), minimum))
