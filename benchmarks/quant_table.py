"""Issue 6 table: round-trip BPB and total bytes of export schemes on one trained model (no retraining).

Needs a run folder with ``model_fp32.pt`` and ``config.json`` (every `pgolf train` writes both) and
its dataset. Hessians for GPTQ / AWQ-lite come from the run's *training* shards (collected once and
shared by all schemes); scores use `pgolf.eval.flat.evaluate_flat` on the artifact read back from disk.

    # device (proxy track, 90 s):
    python3 -m pgolf train --preset baseline --proxy --run-id quant-src --set data.path=data/proxy_sp1024
    python3 benchmarks/quant_table.py --run runs/quant-src --out benchmarks/results/quant_table_proxy.json
    # CPU smoke check at tiny scale:
    python benchmarks/quant_table.py --run runs/<tiny run> --val-tokens 8192 --calib-batches 2 \
        --keep-float-max-numel 4096 --out /tmp/qt.json

Writes the JSON (rows, pre-quant BPB, calibration time, the best scheme's inspect groups) and the
inspect bar chart of the best fitting scheme (``<out>.png``); artifacts go to ``<run>/quant_table/``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from pgolf.config import QuantConfig, from_dict  # noqa: E402
from pgolf.data.dataset import Dataset  # noqa: E402
from pgolf.eval.bpb import ByteLUT  # noqa: E402
from pgolf.eval.flat import evaluate_flat  # noqa: E402
from pgolf.export.artifact import write_artifact  # noqa: E402
from pgolf.export.code import shipped_code_bytes  # noqa: E402
from pgolf.export.inspect import format_report, inspect_artifact  # noqa: E402
from pgolf.fileio import atomic_write_json  # noqa: E402
from pgolf.model.gpt import GPT, cast_for_training  # noqa: E402
from pgolf.pipeline import load_artifact_model  # noqa: E402
from pgolf.quant.calib import collect_hessians, training_batches  # noqa: E402
from pgolf.quant.export import export_model, needs_calibration  # noqa: E402
from pgolf.quant.options import payload_codec  # noqa: E402

TOP = dict(scheme="mixed", matrix_bits=6, embed_bits=7, clip="sdclip", gptq=True)
BEST = dict(lqer_rank=4, lqer_top_k=3, lqer_group=64, lqer_whiten=True, awq_top_k=1, awq_group=64,
            compressor="pergroup", gate_int8=True, control_dtype="float16", fit_budget=True, fit_alpha_min=0.35,
            fit_alpha_max=4.0)
SCHEMES = {
    "int8_zlib": ("int8+zlib (baseline)", {}),
    "int6_zstd": ("int6 rows + zstd", dict(scheme="mixed", matrix_bits=6, embed_bits=8, clip="search", codec="zstd")),
    "gptq6_brotli": ("GPTQ int6 + brotli", dict(TOP, codec="brotli")),
    "gptq_lqer_awq_pergroup": ("GPTQ + LQER + AWQ-lite + per-group (fit)", dict(BEST, **TOP)),
    # GPTQ's own effect at the record's SDClip rule: the same int6 codes with and without error feedback
    "int6_sdclip_zstd": ("int6 SDClip, plain rounding + zstd", dict(TOP, gptq=False, codec="zstd")),
    "gptq6_sdclip_zstd": ("GPTQ int6 SDClip + zstd", dict(TOP, codec="zstd")),
    # int8 codes with the step chosen by the fitter: same bytes as int6 at 4x the step, never more clipping
    "gptq8_lqer_awq_pergroup": ("same, int8 codes (fit)", {**BEST, **TOP, "matrix_bits": 8, "embed_bits": 8,
                                                               "fit_alpha_min": 0.5, "fit_alpha_max": 8.0}),
}
DEFAULT_SCHEMES = ["int8_zlib", "int6_zstd", "gptq6_brotli", "gptq_lqer_awq_pergroup", "gptq8_lqer_awq_pergroup"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", required=True, help="run folder with model_fp32.pt and config.json")
    ap.add_argument("--data", default=None, help="dataset folder (default: the run's)")
    ap.add_argument("--out", default=None, help="JSON path (default: benchmarks/results/quant_table_<run>.json)")
    ap.add_argument("--schemes", default=",".join(DEFAULT_SCHEMES), help=f"comma list from: {', '.join(SCHEMES)}")
    ap.add_argument("--val-tokens", type=int, default=0, help="score only the first N val tokens (0 = all)")
    ap.add_argument("--calib-batches", type=int, default=16, help="training micro-batches for the Hessians")
    ap.add_argument("--keep-float-max-numel", type=int, default=None, help="override (tiny models: e.g. 4096)")
    ap.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    args = ap.parse_args(argv)

    run = Path(args.run)
    cfg = from_dict(json.loads((run / "config.json").read_text()))
    if args.data:
        cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, path=args.data))
    cfg = dataclasses.replace(cfg, quant=dataclasses.replace(cfg.quant, gptq_calib_batches=args.calib_batches))
    dev = torch.device("cuda" if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
                       else "cpu")
    data = Dataset.open(cfg.data, cfg.model.vocab_size)
    model = GPT(cfg.model)
    model.load_state_dict(torch.load(run / "model_fp32.pt", map_location="cpu", weights_only=True))
    model.set_progress(1.0)
    model = cast_for_training(model, dev).eval()
    lut = ByteLUT.from_numpy(data.luts, dev)
    seq_len = cfg.eval.seq_len or cfg.train.seq_len

    def score(m) -> dict:
        t0 = time.perf_counter()
        r = evaluate_flat(m.token_losses, data.val_tokens, lut, seq_len=seq_len, batch_tokens=cfg.eval.batch_tokens,
                          device=dev, max_tokens=args.val_tokens)
        return {"bpb": r.bpb, "loss": r.loss, "tokens": r.tokens, "eval_s": time.perf_counter() - t0}

    pre = score(model)
    print(f"prequant val_bpb:{pre['bpb']:.5f} tokens:{pre['tokens']} ({pre['eval_s']:.1f}s)", flush=True)
    code = shipped_code_bytes()
    limit = cfg.budget_bytes
    names = [s for s in args.schemes.split(",") if s]
    for s in names:
        if s not in SCHEMES:
            raise SystemExit(f"unknown scheme {s!r}; known: {', '.join(SCHEMES)}")
    base_q = QuantConfig() if args.keep_float_max_numel is None else QuantConfig(
        keep_float_max_numel=args.keep_float_max_numel)
    qcfgs = {s: dataclasses.replace(base_q, gptq_calib_batches=args.calib_batches, **SCHEMES[s][1]) for s in names}
    stats = None
    if any(needs_calibration(q) for q in qcfgs.values()):
        stats = collect_hessians(model, training_batches(cfg, data, dev), max_batches=args.calib_batches)
        print(f"calibration: {len(stats.hessians)} hessians from {stats.batches} batches in {stats.seconds:.1f}s",
              flush=True)
    work = run / "quant_table"
    rows = []
    for s in names:
        label, q = SCHEMES[s][0], qcfgs[s]
        meta = {"preset": cfg.name, "seq_len": seq_len, "model": dataclasses.asdict(cfg.model),
                "quant": dataclasses.asdict(q), "data": dataclasses.asdict(cfg.data)}
        t0 = time.perf_counter()
        qs = export_model(model, q, calib=stats, byte_limit=limit - code, meta=meta,
                          log=lambda m: print(f"  {m}", flush=True))
        export_s = time.perf_counter() - t0
        path = work / f"{s}.pgz"
        t0 = time.perf_counter()
        info = write_artifact(path, qs, codec=payload_codec(q), meta=meta)
        write_s = time.perf_counter() - t0
        rt = score(load_artifact_model(path, dev))
        total = info.file_bytes + code
        row = {"scheme": s, "label": label, "roundtrip_bpb": rt["bpb"], "quant_tax_bpb": rt["bpb"] - pre["bpb"],
               "model_bytes": info.file_bytes, "code_bytes": code, "total_bytes": total, "fits": total <= limit,
               "codec": payload_codec(q), "export_s": export_s, "write_s": write_s, "artifact": str(path),
               "fit_alpha": next((t.meta.get("alpha") for t in qs.tensors.values() if "alpha" in t.meta), None),
               "quant": {k: v for k, v in SCHEMES[s][1].items()}}
        rows.append(row)
        print(f"{label:45s} bpb {rt['bpb']:.5f} tax {row['quant_tax_bpb']:+.5f} total {total:,} "
              f"fits {row['fits']} export {export_s:.1f}s write {write_s:.1f}s", flush=True)
    fitting = [r for r in rows if r["fits"]]
    best = min(fitting, key=lambda r: r["roundtrip_bpb"]) if fitting else None
    out = Path(args.out) if args.out else ROOT / "benchmarks" / "results" / f"quant_table_{run.name}.json"
    result = {"run": str(run), "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
              "prequant_bpb": pre["bpb"], "val_tokens_scored": pre["tokens"], "limit_bytes": limit,
              "calibration": ({"batches": stats.batches, "seconds": stats.seconds,
                               "reserve_s": cfg.quant.gptq_reserve_s} if stats else None),
              "rows": rows, "best": best["scheme"] if best else None}
    if best:
        rep = inspect_artifact(best["artifact"], fp32=run / "model_fp32.pt", code_bytes=code,
                               png=out.with_suffix(".png"))
        print(format_report(rep, max_rows=12))
        result["best_inspect"] = {"groups": rep["groups"], "bytes": rep["bytes"], "png": rep["png"]}
    atomic_write_json(out, result)
    print(f"wrote {out}")
    print("\n| scheme | round-trip BPB | tax | total bytes | fits |\n|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['label']} | {r['roundtrip_bpb']:.5f} | {r['quant_tax_bpb']:+.5f} | {r['total_bytes']:,} | "
              f"{r['fits']} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
