"""Checkpoints for bit-exact resume: ``runs/<id>/checkpoint.pt`` plus one optimizer file per rank.

    pgolf train --resume runs/<id>

Rank 0 writes the model, loader position, step, trained seconds, validation curve, technique state
(EMA/SWA shadows, late-QAT switch: identical on every rank) and RNG states; every rank writes its own
optimizer state (today identical across ranks, since every rank keeps the full Muon momentum). Files are written
to a temporary name and renamed, so an interrupted save leaves the previous good checkpoint in place.
"""

from __future__ import annotations

import io
from pathlib import Path

import torch

from pgolf.fileio import atomic_write_bytes
from pgolf.train.runtime import Runtime, rng_state, set_rng_state

MODEL_FILE = "checkpoint.pt"


def _opt_file(rank: int) -> str:
    return f"checkpoint_optim_rank{rank}.pt"


def _dump(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def save(run_dir: Path, rt: Runtime, model, opt, loader, *, step: int, elapsed_s: float, curve: list,
         extras: dict | None = None) -> None:
    """`extras`: name -> object with state_dict()/load_state_dict() (EMA/SWA, late QAT), kept with the model."""
    rt.barrier()
    atomic_write_bytes(run_dir / _opt_file(rt.rank), _dump({"step": step, "optim": opt.state_dict(),
                                                            "rng": rng_state()}))
    rt.barrier()
    if rt.is_main:
        state = {"step": step, "elapsed_s": elapsed_s, "curve": curve, "world_size": rt.world_size,
                 "model": model.state_dict(), "loader": loader.state_dict(),
                 "extras": {k: v.state_dict() for k, v in (extras or {}).items()}}
        atomic_write_bytes(run_dir / MODEL_FILE, _dump(state))
    rt.barrier()


def exists(run_dir: Path) -> bool:
    return (Path(run_dir) / MODEL_FILE).is_file()


def load(run_dir: Path, rt: Runtime, model, opt, loader, extras: dict | None = None) -> dict:
    path = Path(run_dir) / MODEL_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint to resume from: {path} does not exist")
    state = torch.load(path, map_location="cpu", weights_only=False)
    if state["world_size"] != rt.world_size:
        raise ValueError(f"{path} was written by {state['world_size']} processes; resume with the same number "
                         f"(now {rt.world_size})")
    opt_path = Path(run_dir) / _opt_file(rt.rank)
    if not opt_path.is_file():
        raise FileNotFoundError(f"optimizer state {opt_path} is missing for rank {rt.rank}")
    ostate = torch.load(opt_path, map_location="cpu", weights_only=False)
    if ostate["step"] != state["step"]:
        raise ValueError(f"{opt_path} is from step {ostate['step']} but {path} is from step {state['step']}")
    model.load_state_dict(state["model"])
    opt.load_state_dict(ostate["optim"])
    loader.load_state_dict(state["loader"])
    saved = state.get("extras", {})
    if set(saved) != set(extras or {}):
        raise ValueError(f"{path} holds technique state for {sorted(saved) or 'none'} but this run has "
                         f"{sorted(extras or {}) or 'none'} (train.ema_decay / swa_every / qat_bits must match)")
    for k, obj in (extras or {}).items():
        obj.load_state_dict(saved[k])
    set_rng_state(ostate["rng"])
    return state
