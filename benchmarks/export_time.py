"""Where an export's seconds go: calibration, quantization (GPTQ, LQER, ... at one clip step) and the artifact
write, the write split into its per-group codec jobs (`pgolf.quant.pergroup`). One budget-fitter trial is one
quantization plus one write, so this says what a faster fitter has to cut.

    # device (the proxy data built by benchmarks/device_env.sh sp8192):
    python3 benchmarks/export_time.py --preset pr1855 --data data/proxy_sp8192 --out $OUT/export_time.json
    # a trained model instead of the preset's initialization (compression ratios then match a real run):
    python3 benchmarks/export_time.py --run runs/<id> --out /tmp/export_time.json
    # CPU smoke check (a shrunken pr1855):
    python benchmarks/export_time.py --preset pr1855 --data data/proxy_sp8192 --set model.model_dim=128 \
        --set model.num_layers=4 --set quant.gptq_calib_batches=1 --set train.micro_batch_tokens=4096 \
        --set model.loop_start=1 --set model.loop_end=2 --set model.parallel_start_layer=3 --out /tmp/et.json

Speed hardly depends on the weights' values; sizes do (an initialized model's codes compress differently).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from pgolf.config import apply_overrides, from_dict
from pgolf.data.dataset import Dataset
from pgolf.export.artifact import pack_state, write_artifact
from pgolf.fileio import atomic_write_json
from pgolf.model.gpt import GPT, cast_for_training
from pgolf.presets import get_preset
from pgolf.quant.calib import collect_hessians, training_batches
from pgolf.quant.export import MixedQuantizer, needs_calibration
from pgolf.quant.options import payload_codec
from pgolf.quant.pergroup import encode_jobs, job_workers, run_job
from pgolf.quant.plan import plan_tensors


def timed(fn):
    t = time.perf_counter()
    out = fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return out, time.perf_counter() - t


def codec_jobs(raw: bytes, entries: list, spec: str) -> dict:
    """Each per-group job's seconds and bytes, run in the same thread pool as `compress_pergroup`."""
    _, streams, jobs = encode_jobs(raw, entries, spec)

    def run(job):
        t = time.perf_counter()
        n = len(run_job(streams, job))
        return {"group": job[0], "codec": job[1], "shuffle": job[2], "raw_bytes": len(streams[job[0]]),
                "bytes": n, "seconds": round(time.perf_counter() - t, 3)}

    workers = job_workers(jobs)
    t = time.perf_counter()
    with ThreadPoolExecutor(max_workers=workers) as pool:
        rows = list(pool.map(run, jobs))
    return {"workers": workers, "wall_s": round(time.perf_counter() - t, 3),
            "cpu_s": round(sum(r["seconds"] for r in rows), 3), "jobs": sorted(rows, key=lambda r: -r["seconds"])}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default=None, help="time the preset's initialized model")
    ap.add_argument("--data", default=None, help="data folder (with --preset): calibration batches")
    ap.add_argument("--run", type=Path, default=None, help="a run folder with config.json and model_fp32.pt")
    ap.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE", help="config override")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    if (args.preset is None) == (args.run is None):
        ap.error("give exactly one of --preset or --run")
    if args.run is not None:
        cfg = from_dict(json.loads((args.run / "config.json").read_text()))
    else:
        cfg = get_preset(args.preset)
    cfg = apply_overrides(cfg, ([f"data.path={args.data}"] if args.data else []) + args.set)
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = GPT(cfg.model)
    if args.run is not None:
        model.load_state_dict(torch.load(args.run / "model_fp32.pt", map_location="cpu", weights_only=True))
    model = cast_for_training(model, dev).eval()
    q = cfg.quant
    res = {"preset": cfg.name, "device": str(dev), "cpus": os.cpu_count(), "quant": cfg.to_dict()["quant"]}
    stats = None
    if needs_calibration(q):
        data = Dataset.open(cfg.data, cfg.model.vocab_size)
        stats, res["calibration_s"] = timed(lambda: collect_hessians(
            model, training_batches(cfg, data, dev), max_batches=q.gptq_calib_batches))
    state = {k: v.detach() for k, v in model.state_dict().items()}
    mq, res["plan_s"] = timed(lambda: MixedQuantizer(state, plan_tensors(model, q), q, stats))
    qs, res["quantize_s"] = timed(lambda: mq.finalize(mq.build(1.0)))
    (raw, entries), res["pack_s"] = timed(lambda: pack_state(qs))
    codec = payload_codec(q)
    if codec.startswith("pergroup"):
        res["codec_jobs"] = codec_jobs(raw, entries, codec)
    tmp = args.out.with_suffix(".pgz.tmp")
    info, res["write_s"] = timed(lambda: write_artifact(tmp, qs, codec=codec, meta={"bench": "export_time"}))
    tmp.unlink()
    res.update(raw_bytes=len(raw), artifact_bytes=info.file_bytes)
    atomic_write_json(args.out, res)
    jobs = res.get("codec_jobs", {})
    print(f"calibration {res.get('calibration_s', 0):.1f}s quantize {res['quantize_s']:.1f}s write "
          f"{res['write_s']:.1f}s (codec jobs: wall {jobs.get('wall_s', 0):.1f}s, cpu {jobs.get('cpu_s', 0):.1f}s "
          f"on {jobs.get('workers', 0)} threads) -> {args.out}")
    for j in jobs.get("jobs", [])[:6]:
        print(f"  {j['group']:<10} {j['codec']:<7} {j['raw_bytes']:>10,} -> {j['bytes']:>10,}  {j['seconds']:.1f}s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
