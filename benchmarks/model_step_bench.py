"""One compiled training micro-step of a preset's model (forward + backward, no optimizer) at a chosen training
progress, for several variants in one process: an A/B of compile options or model settings in about 1.5 minutes
per variant on an H100, where a full throughput run (throughput.py) takes 3.5.

    python3 benchmarks/model_step_bench.py --preset pr1855 --data data/proxy_sp8192 --progress 1.0 \\
        --variant base --variant no_mix:train.mix_order_reduction=false --kernels 3 --out $OUT/model_step.json
    python3 benchmarks/model_step_bench.py --preset tiny --data data/demo_sp1024 --device cpu --iters 2 \\
        --variant base --out /tmp/m.json                                          # logic check on CPU

``PGOLF_SRC=<checkout>/src`` runs that checkout's model and training code instead of this one's (an A/B across
commits: issue5_looped_ab.sh). A variant is ``NAME`` or ``NAME:key=value,key=value`` (config overrides applied after the common ``--set`` ones).
Each is built as the training loop builds its model: ``cast_for_training``, ``training_compile_kwargs`` (with
``train.compile``), autocast, ``set_progress(--progress)`` (pr1855: 0 = plain layers, >= 0.35 = looped), and fed
real micro-batches of the preset's loader, with cu_seqlens padded as in training. Gradients accumulate over the
steps, as over a training step's micro-steps. Reported per variant: ms per micro-step (median, mean), tokens/s,
peak memory, the seconds of its first step (compile), and with ``--kernels N`` the top kernels of N more steps.

``--full-step`` times the training loop's whole step instead (``pgolf.train.step.TrainStep``: every micro-batch
from the loader, clip, optimizers, EMA), so 8 x a micro-step against a step is what the loop adds; each timed step
starts on an idle GPU (a sync between steps), which the loop itself does not have.
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
import time
from pathlib import Path

import torch

PGOLF_SRC = os.environ.get("PGOLF_SRC")
if PGOLF_SRC and not (Path(PGOLF_SRC) / "pgolf" / "__init__.py").is_file():  # else this checkout's pgolf runs unseen
    sys.exit(f"PGOLF_SRC={PGOLF_SRC}: no pgolf package there (give the checkout's src folder)")
sys.path.insert(0, str(Path(PGOLF_SRC).resolve()) if PGOLF_SRC else str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(1, str(Path(__file__).resolve().parent))

# pgolf first (from PGOLF_SRC when set), then step_timer, which puts this checkout's src on the path too
# isort: off
from pgolf.config import apply_overrides
from pgolf.data.dataset import Dataset
from pgolf.data.loaders_common import build_loader
from pgolf.fileio import atomic_write_json
from pgolf.model.gpt import GPT, cast_for_training
from pgolf.optim.builder import build_optimizers
from pgolf.presets import get_preset
from pgolf.train.ema import WeightAverager
from pgolf.train.loop import avoid_inductor_fusion_bug, fix_segment_sizes, training_compile_kwargs
from pgolf.train.qat import LateQAT
from pgolf.train.runtime import Runtime, seed_everything
try:  # one training step has its own module since 2026-11-23
    from pgolf.train.step import TrainStep, autocast_ctx, next_micro_batch
except ImportError:  # an older checkout (PGOLF_SRC): micro-steps only
    from pgolf.train.loop import autocast_ctx, next_micro_batch
    TrainStep = None
from step_timer import kernel_table, sync, time_steps
# isort: on


def parse_variant(spec: str) -> tuple[str, list[str]]:
    """'NAME' or 'NAME:key=value,key=value' -> (NAME, [key=value, ...])."""
    name, _, sets = spec.partition(":")
    overrides = [s for s in sets.split(",") if s]
    bad = [s for s in overrides if "=" not in s]
    if not name or bad:
        raise ValueError(f"--variant {spec!r}: expected NAME or NAME:key=value,key=value")
    return name, overrides


def variant_config(args, overrides: list[str]):
    base = [f"data.path={args.data}"] + (["data.corpus=proxy"] if Path(args.data).name.startswith("proxy_") else [])
    return apply_overrides(get_preset(args.preset), [*base, *args.set, *overrides])


def run_variant(name: str, overrides: list[str], args) -> dict:
    device = torch.device(args.device)
    cfg = variant_config(args, overrides)
    tc = cfg.train
    torch._dynamo.reset()
    seed_everything(tc.seed)
    model = cast_for_training(GPT(cfg.model), device)
    model.set_progress(args.progress)
    data = Dataset.open(cfg.data, cfg.model.vocab_size)
    fix_segment_sizes(model, data, tc, [])
    loader = build_loader(tc, data, rank=0, world_size=1)
    batches = itertools.cycle([next_micro_batch(loader, model, tc, device) for _ in range(args.batches)])
    qat = LateQAT.from_config(model, tc) if args.full_step else None  # before the compile, as the loop does
    if tc.compile:
        avoid_inductor_fusion_bug()
    net = torch.compile(model, **training_compile_kwargs(tc)) if tc.compile else model

    def micro_step() -> torch.Tensor:
        x, y, extra = next(batches)
        with autocast_ctx(device):
            loss = net(x, y, **extra)
        loss.backward()
        return loss.detach()

    step, tokens = micro_step, tc.micro_batch_tokens
    if args.full_step:  # the loop's own step: its micro-batches from the loader, then clip, optimizers, EMA
        rt = Runtime(rank=0, local_rank=0, world_size=1, device=device, distributed=False)
        full = TrainStep(model, net, build_optimizers(model, cfg.optim), loader, cfg, tc, rt, qat=qat,
                         averager=WeightAverager.from_config(model, tc), log=lambda msg: None)
        count = itertools.count()
        elapsed = args.progress * tc.wallclock_s  # the schedule's point; the model's progress is forced to it

        def step() -> torch.Tensor:
            return full(next(count), elapsed, at=args.progress)

        tokens = tc.batch_tokens

    t0 = time.perf_counter()
    step()
    sync(device)
    first_s = time.perf_counter() - t0
    r = time_steps(step, device, args.warmup, args.iters)
    r.pop("last")
    out = {"variant": name, "overrides": overrides, "looping": bool(getattr(model, "looping", False)),
           "timed": "step" if args.full_step else "micro-step",
           "first_step_s": round(first_s, 1), **r, "tokens_per_s": round(tokens / (r["ms_median"] * 1e-3))}
    if args.kernels:
        out.update(kernel_table(step, device, args.kernels, top=args.top))  # kernels, device_time (GPU idle)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="pr1855")
    p.add_argument("--data", required=True, help="dataset folder (data.path), e.g. data/proxy_sp8192")
    p.add_argument("--set", action="append", default=[], help="key=value for every variant (repeatable)")
    p.add_argument("--variant", action="append", required=True, metavar="NAME[:key=value,...]")
    p.add_argument("--progress", type=float, default=1.0, help="training progress the model is set to (0..1)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batches", type=int, default=4, help="distinct micro-batches cycled through")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--kernels", type=int, default=0, metavar="N", help="profile N more steps per variant")
    p.add_argument("--top", type=int, default=25, help="kernels listed per variant with --kernels")
    p.add_argument("--full-step", action="store_true",
                   help="time the training loop's whole step (train.batch_tokens: every micro-batch, then clip, "
                        "optimizers and EMA; pgolf.train.step.TrainStep), not one micro-step")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    if os.environ.get("TORCHINDUCTOR_PROFILE"):  # only then: the report reader and its pgolf imports
        from inductor_bandwidth import allow_profiling_on_torch_2_11

        allow_profiling_on_torch_2_11()
    if args.full_step and TrainStep is None:
        p.error("--full-step needs a checkout with pgolf/train/step.py (PGOLF_SRC is older)")
    try:
        variants = [parse_variant(v) for v in args.variant]
        for _, overrides in variants:  # a bad override fails before anything is compiled
            variant_config(args, overrides)
    except (ValueError, KeyError) as e:
        p.error(str(e))
    if not 0.0 <= args.progress <= 1.0:
        p.error(f"--progress must be in [0, 1], got {args.progress}")
    results = []
    for name, overrides in variants:
        try:
            r = run_variant(name, overrides, args)
        except Exception as e:  # noqa: BLE001 (reported per variant; the others still run)
            r = {"variant": name, "overrides": overrides, "error": f"{type(e).__name__}: {str(e)[:400]}"}
        results.append(r)
        write_results(args, results, complete=len(results) == len(variants))  # a killed call keeps what ran
        print(f"{name:20s} " + (f"{r['ms_median']:9.2f} ms/{r['timed']}  {r['tokens_per_s']:>11,} tok/s  "
                                f"first step {r['first_step_s']} s  peak {r['peak_mib']} MiB "
                                f"(reserved {r.get('reserved_mib')})"
                                if "error" not in r else r["error"])
              + (f"  GPU idle {r['device_time']['idle']:.1f} of {r['device_time']['span']:.1f} ms"
                 if r.get("device_time") else ""), flush=True)
        if r.get("ranges"):  # GPU ms of the step's annotated phases (optimizers, clip, EMA)
            print("    ranges: " + ", ".join(f"{k} {v['ms_per_step']:.2f} ms" for k, v in r["ranges"].items()))
        for g in (r.get("idle_gaps") or [])[:4]:  # where the GPU waited: the kernels either side of the gaps
            print(f"    idle {g['ms_per_step']:6.2f} ms/step in {g['gaps_per_step']:g} gaps: {g['before'][:60]} -> "
                  f"{g['after'][:60]}", flush=True)
    print(f"wrote {args.out}")
    return 1 if any("error" in r for r in results) else 0


def write_results(args, results: list[dict], complete: bool) -> None:
    """--out after each variant (temp name, then rename): `complete` is false until the last variant has run, so
    a call killed at its time limit (e.g. inside a long compile) still returns the variants before it."""
    base = next((r for r in results if "error" not in r), None)
    for r in results:
        if base and "error" not in r:
            r["speedup_vs_first"] = round(base["ms_median"] / r["ms_median"], 4)
    device = torch.device(args.device)
    atomic_write_json(args.out, {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu", "torch": torch.__version__,
        "pgolf_src": str(Path(sys.modules["pgolf"].__file__).parents[1]),
        "preset": args.preset, "data": str(args.data), "sets": args.set, "progress": args.progress,
        "warmup": args.warmup, "iters": args.iters, "full_step": args.full_step, "complete": complete,
        "results": results})


if __name__ == "__main__":
    raise SystemExit(main())
