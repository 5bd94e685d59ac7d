"""Layer order of the U-Net stack, with depth recurrence (looped layers).

Depth recurrence (PR #1204/#1285 lineage; TOP = PR #1855, #1880, #1969): physical layers
``loop_start..loop_end`` run ``num_loops + 1`` times with shared weights. The virtual order is split in
half for the U-Net: the first half pushes skips, the second half pops them. For 11 layers, loop 3..5, 2 loops::

    plain   [0 1 2 3 4 | 5 6 7 8 9 10]                        5 skips used
    looped  [0 1 2 3 4 5 3 4 | 5 3 4 5 6 7 8 9 10]            17 virtual layers, 8 skips

Each decoder position ``j`` owns skip slot ``j`` (its own skip weight and gate), in both orders; the
model has ``num_skips = min(#encoder, #decoder)`` slots of the longest order. The plain order runs until
``loop_enable_at`` of training (``GPT.set_progress``), the looped one after it (TOP: 35%, so the first
part of training is cheaper and the looped layers have learned something before they are reused).
"""

from __future__ import annotations

from dataclasses import dataclass

from pgolf.config import ModelConfig

Split = tuple[tuple[int, ...], tuple[int, ...]]  # (encoder layer indices, decoder layer indices)


@dataclass(frozen=True)
class LayerOrder:
    plain: Split
    looped: Split  # == plain when recurrence is off

    @property
    def has_loops(self) -> bool:
        return self.looped != self.plain

    @property
    def num_skips(self) -> int:
        return max(min(len(enc), len(dec)) for enc, dec in (self.plain, self.looped))


def virtual_layers(cfg: ModelConfig) -> tuple[int, ...]:
    """Physical layer index of every virtual position, e.g. (0,1,2,3,4,5,3,4,5,3,4,5,6,7,8,9,10)."""
    L = cfg.num_layers
    if cfg.num_loops == 0:
        return tuple(range(L))
    loop = tuple(range(cfg.loop_start, cfg.loop_end + 1))
    return tuple(range(cfg.loop_start)) + loop * (cfg.num_loops + 1) + tuple(range(cfg.loop_end + 1, L))


def split_half(order: tuple[int, ...]) -> Split:
    half = len(order) // 2
    return order[:half], order[half:]


def layer_order(cfg: ModelConfig) -> LayerOrder:
    return LayerOrder(plain=split_half(tuple(range(cfg.num_layers))), looped=split_half(virtual_layers(cfg)))
