"""Profile a window of training steps of any script that steps a torch optimizer, without editing the script: the
record's ``train_gpt.py`` gets the same per-kernel report as ``pgolf train --set train.profile_steps=N``.

    python3 benchmarks/profile_script.py --skip 20 --steps 8 --out-dir runs/x/record_profile -- train_gpt.py
    # -> runs/x/record_profile/profile.json (+ profile_trace.json), pgolf.train.profile's format

A global optimizer-step hook (``torch.optim.optimizer.register_optimizer_step_post_hook``) counts the steps of the
first optimizer object that steps (a record steps its Adam and Muon optimizers once each per training step, so one
object's count is the step count, warm-up steps included). pgolf's ``StepProfiler`` opens torch.profiler after
``--skip`` of them and writes the report ``--steps`` later, or when the script ends inside the window. The script
runs as ``__main__`` from its own folder with the arguments after ``--``; only rank 0 (env ``RANK``) profiles.
"""

from __future__ import annotations

import argparse
import os
import runpy
import sys
from collections.abc import Sequence
from pathlib import Path

import torch
from torch.optim.optimizer import register_optimizer_step_post_hook

from pgolf.train.profile import StepProfiler


class OptimizerStepCounter:
    """Calls ``profiler.after_step(n)`` after the n-th step of the first optimizer object seen stepping."""

    def __init__(self, profiler: StepProfiler):
        self.profiler, self.owner, self.steps = profiler, None, 0
        self._handle = register_optimizer_step_post_hook(self._after)

    def _after(self, optimizer, args, kwargs) -> None:
        if self.owner is None:
            self.owner = id(optimizer)
        if id(optimizer) == self.owner:
            self.steps += 1
            self.profiler.after_step(self.steps)

    def close(self) -> None:
        self._handle.remove()
        self.profiler.close()


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--skip", type=int, required=True, help="optimizer steps before the window (warm-up included)")
    ap.add_argument("--steps", type=int, required=True, help="steps in the profiled window")
    ap.add_argument("--out-dir", type=Path, required=True, help="profile.json and profile_trace.json go here")
    ap.add_argument("script", type=Path, help="the training script, then its own arguments after --")
    ap.add_argument("script_args", nargs=argparse.REMAINDER)
    args = ap.parse_args(argv)
    if args.steps < 1 or args.skip < 0:
        ap.error(f"--steps must be >= 1 and --skip >= 0 (got {args.steps}, {args.skip})")
    script = args.script.resolve()
    if not script.is_file():
        ap.error(f"{args.script}: no such script")
    args.out_dir.mkdir(parents=True, exist_ok=True)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    profiler = StepProfiler(args.steps, args.out_dir.resolve(), device, skip=args.skip,
                            enabled=int(os.environ.get("RANK", "0")) == 0)
    counter = OptimizerStepCounter(profiler)
    script_args = args.script_args[1:] if args.script_args[:1] == ["--"] else args.script_args
    sys.argv = [str(script), *script_args]
    sys.path.insert(0, str(script.parent))
    os.chdir(script.parent)
    try:
        runpy.run_path(str(script), run_name="__main__")
    finally:
        counter.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
