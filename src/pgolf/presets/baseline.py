"""The official naive baseline (openai/parameter-golf ``train_gpt.py``, record 2026-03-17, 1.2244 BPB).

9 layers, d=512, 8 heads / 4 KV heads, relu² MLP 2x, U-Net skips, resid_mix, q_gain 1.5, QK-norm,
RoPE, softcap 30, tied embedding; Muon (lr 0.04, momentum 0.85 -> 0.95 over 500 steps) + Adam;
524,288 tokens per step at seq 1024; warmdown over the last 1,200 steps; int8 + zlib export.
All of these are the config defaults, so the preset only names the data.

    pgolf train --preset baseline --set data.corpus=fineweb
"""

from pgolf.config import DataConfig, RunConfig


def preset() -> RunConfig:
    return RunConfig(name="baseline", data=DataConfig(corpus="fineweb", tokenizer="sp1024"))
