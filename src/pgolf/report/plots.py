"""Plots of a run's curve: ``runs/<id>/curve.png`` (train loss and validation BPB against training time)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def plot_curve(summary: dict, out: str | Path) -> Path:
    curve = summary.get("curve", [])
    train = [p for p in curve if "train_loss" in p]
    val = [p for p in curve if "val_bpb" in p]
    fig, ax = plt.subplots(figsize=(7, 4))
    if train:
        ax.plot([p["train_time_s"] for p in train], [p["train_loss"] for p in train], label="train loss (nats)")
    ax.set_xlabel("training time (s)")
    ax.set_ylabel("train loss (nats/token)")
    if val:
        ax2 = ax.twinx()
        ax2.plot([p["train_time_s"] for p in val], [p["val_bpb"] for p in val], "o-", color="tab:red", label="val BPB")
        ax2.set_ylabel("val BPB")
    rt = summary.get("val_bpb", {}).get("roundtrip")
    ax.set_title(f"{summary.get('preset', '')}: round-trip val BPB {rt:.4f}" if rt else summary.get("preset", ""))
    fig.tight_layout()
    out = Path(out)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out
