"""One run end to end: train -> pre-quant score -> artifact on disk -> reload -> final score -> summary.

    pgolf train --preset baseline --set train.wallclock_s=90      # writes runs/<id>/
    pgolf eval runs/<id>/artifact.pgz                              # re-score an artifact

``runs/<id>/`` holds config.json (resolved config), train.log, summary.json, artifact.pgz,
model_fp32.pt (the trained float weights, for comparing export schemes) and, when enabled, checkpoints. The final BPB always comes from the artifact read back from disk.
"""

from __future__ import annotations

import io
import json
import time
from pathlib import Path

import torch

from pgolf.config import ModelConfig, RunConfig, from_dict
from pgolf.data.dataset import Dataset
from pgolf.eval.bpb import ByteLUT
from pgolf.eval.flat import evaluate_flat
from pgolf.export.artifact import read_artifact, read_manifest
from pgolf.export.budget import ByteBudget
from pgolf.export.code import shipped_code_bytes
from pgolf.fileio import atomic_write_bytes, atomic_write_json
from pgolf.model.gpt import GPT, cast_for_training
from pgolf.quant.calib import training_batches
from pgolf.quant.export import export_model
from pgolf.quant.int8 import dequantize_state_dict
from pgolf.report.flops import peak_flops, summary_flops
from pgolf.report.runlog import RunLog, versions
from pgolf.train.loop import TrainResult, train_model
from pgolf.train.runtime import Runtime, init_runtime, shutdown

ARTIFACT = "artifact.pgz"


def new_run_id(cfg: RunConfig) -> str:
    return f"{time.strftime('%Y%m%d-%H%M%S')}_{cfg.name}_s{cfg.train.seed}"


def run(cfg: RunConfig, *, run_id: str | None = None, resume_dir: str | None = None) -> dict:
    rt = init_runtime(cfg.train.device)
    try:
        return _run(cfg, rt, run_id=run_id, resume_dir=resume_dir)
    finally:
        shutdown(rt)


def _run(cfg: RunConfig, rt: Runtime, *, run_id: str | None, resume_dir: str | None) -> dict:
    t_start = time.perf_counter()
    if resume_dir:
        run_dir = Path(resume_dir)
        cfg = from_dict(json.loads((run_dir / "config.json").read_text()))
    else:
        run_id = run_id or _broadcast_run_id(rt, new_run_id(cfg))
        run_dir = Path(cfg.runs_dir) / run_id
        if rt.is_main:
            if (run_dir / "summary.json").exists():
                raise FileExistsError(f"{run_dir} already holds a finished run; pick another --run-id")
            run_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_json(run_dir / "config.json", cfg.to_dict())
    rt.barrier()
    log = RunLog(run_dir / "train.log", enabled=rt.is_main)
    log.header(cfg.to_json())
    log(f"run_dir:{run_dir} preset:{cfg.name} device:{rt.device} world_size:{rt.world_size}")
    data = Dataset.open(cfg.data, cfg.model.vocab_size)
    log(f"data:{data.path} train_shards:{len(data.train_files)} train_tokens:{data.train_token_count()} "
        f"val_tokens:{len(data.val_tokens)}")

    result = train_model(cfg, rt, data, run_dir, log, resume=bool(resume_dir))
    lut = ByteLUT.from_numpy(data.luts, rt.device)
    score = _scorer(cfg, data, lut, rt)
    t0 = time.perf_counter()
    pre = score(result.eval_losses)
    log(f"prequant val_loss:{pre.loss:.4f} val_bpb:{pre.bpb:.4f} eval_time:{time.perf_counter() - t0:.1f}s")
    pre_last = pre  # last-step weights; with EMA/SWA (train/ema.py) the averaged weights are scored and exported
    if result.averager is not None and result.averager.apply_to(result.model):
        t0 = time.perf_counter()
        pre = score(result.eval_losses)
        log(f"prequant_post_{result.averager.kind} val_loss:{pre.loss:.4f} val_bpb:{pre.bpb:.4f} "
            f"eval_time:{time.perf_counter() - t0:.1f}s")

    artifact_path = run_dir / ARTIFACT
    code = shipped_code_bytes()
    if rt.is_main:  # the float weights, kept so that export schemes can be compared later without retraining
        atomic_write_bytes(run_dir / "model_fp32.pt", _state_bytes(result.model))
        meta = {"preset": cfg.name, "seq_len": cfg.eval.seq_len or cfg.train.seq_len,
                **{k: v for k, v in cfg.to_dict().items() if k in ("model", "quant", "data")}}
        # quant.scheme=int8_rowwise is the baseline's quantize_state_dict, unchanged (pgolf.quant.export)
        export_model(result.model, cfg.quant, calib=training_batches(cfg, data, rt.device),
                     byte_limit=cfg.budget_bytes - code, meta=meta, log=log, out_path=artifact_path)
    rt.barrier()
    budget = ByteBudget(code_bytes=code, model_bytes=artifact_path.stat().st_size, limit=cfg.budget_bytes)
    t0 = time.perf_counter()
    model = load_artifact_model(artifact_path, rt.device)
    rt_score = score(model.token_losses)
    eval_time = time.perf_counter() - t0
    log(f"roundtrip val_loss:{rt_score.loss:.4f} val_bpb:{rt_score.bpb:.4f} eval_time:{eval_time:.1f}s")
    log(f"bytes code:{budget.code_bytes} model:{budget.model_bytes} total:{budget.total} "
        f"limit:{budget.limit} headroom:{budget.headroom} fits:{budget.fits}")
    if not budget.fits:
        log(f"INVALID: the artifact is {budget.total - budget.limit} bytes over the {budget.limit}-byte limit")

    summary = build_summary(cfg, rt, data, result, pre, rt_score, budget, eval_time, run_dir,
                            wall_s=time.perf_counter() - t_start, pre_last=pre_last)
    if rt.is_main:
        atomic_write_json(run_dir / "summary.json", summary)
    log(f"summary:{run_dir / 'summary.json'}")
    return summary


def _state_bytes(model) -> bytes:
    buf = io.BytesIO()
    torch.save({k: v.detach().float().cpu() if v.is_floating_point() else v.cpu()
                for k, v in model.state_dict().items()}, buf)
    return buf.getvalue()


def _broadcast_run_id(rt: Runtime, run_id: str) -> str:
    if not rt.distributed:
        return run_id
    import torch.distributed as dist

    box = [run_id]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _scorer(cfg: RunConfig, data: Dataset, lut: ByteLUT, rt: Runtime):
    seq_len = cfg.eval.seq_len or cfg.train.seq_len

    def score(token_losses):
        return evaluate_flat(token_losses, data.val_tokens, lut, seq_len=seq_len, batch_tokens=cfg.eval.batch_tokens,
                             device=rt.device)

    return score


def load_artifact_model(path: Path, device: torch.device) -> GPT:
    """Rebuild the model from the artifact bytes alone (config from its manifest)."""
    qs, manifest = read_artifact(path)
    model = GPT(ModelConfig(**manifest["config"]["model"]))
    model.load_state_dict(dequantize_state_dict(qs))
    model = cast_for_training(model, device)
    model.eval()
    return model


def build_summary(cfg: RunConfig, rt: Runtime, data: Dataset, result: TrainResult, pre, rt_score, budget: ByteBudget,
                  eval_time: float, run_dir: Path, wall_s: float, pre_last=None) -> dict:
    tok_s = result.tokens_seen / result.train_time_s if result.train_time_s > 0 else 0.0
    gpu = torch.cuda.get_device_name(rt.device) if rt.device.type == "cuda" else "cpu"
    peak = peak_flops(gpu)
    flops = summary_flops(cfg, result.curve, result.steps, result.train_time_s, data.train_files)
    mfu = tok_s * flops["run_mean"] / (peak * rt.world_size) if peak else None
    return {
        "run_dir": str(run_dir),
        "preset": cfg.name,
        "seed": cfg.train.seed,
        "corpus": cfg.data.corpus,
        "tokenizer": cfg.data.tokenizer,
        # prequant = the exported float weights (post-EMA/SWA when on); prequant_last_step = the last step's
        "val_bpb": {"prequant": pre.bpb, "prequant_last_step": (pre_last or pre).bpb, "roundtrip": rt_score.bpb},
        "val_loss": {"prequant": pre.loss, "prequant_last_step": (pre_last or pre).loss, "roundtrip": rt_score.loss},
        "averaging": result.averager.kind if getattr(result, "averager", None) is not None else "none",
        "val_tokens_scored": rt_score.tokens,
        "val_bytes_scored": rt_score.bytes,
        "quant_tax_bpb": rt_score.bpb - pre.bpb,
        "bytes": {"code": budget.code_bytes, "model": budget.model_bytes, "total": budget.total,
                  "limit": budget.limit, "headroom": budget.headroom},
        "valid": budget.fits,
        "steps": result.steps,
        "stopped_by": result.stopped_by,
        "train_time_s": result.train_time_s,
        "eval_time_s": eval_time,
        "wall_time_s": wall_s,
        "tokens_seen": result.tokens_seen,
        "tokens_per_s": tok_s,
        "epochs": result.epochs,
        "mfu": mfu,
        "model_flops_per_token": flops["run_mean"],
        "flops_per_token": flops,  # per phase (flat / looped), T_eff, switch step: pgolf.report.flops
        "peak_mem_bytes": result.peak_mem_bytes,
        "peak_reserved_bytes": result.peak_reserved_bytes,
        "compiles_in_clock": result.compiles_in_clock,  # train/watch.py: the warm-up missed a guard
        "slow_steps": result.slow_steps,
        "world_size": rt.world_size,
        "device": gpu,
        "curve": result.curve,
        "versions": versions(),
    }


def score_artifact(path: str | Path, *, data_dir: str | None = None, device: str = "auto",
                   batch_tokens: int = 524_288) -> dict:
    """Re-score an artifact on its validation split: ``pgolf eval runs/<id>/artifact.pgz``."""
    from pgolf.config import DataConfig

    rt = init_runtime(device)
    try:
        path = Path(path)
        manifest = read_manifest(path)  # the full read and checks happen once, in load_artifact_model
        meta = manifest["config"]
        data_cfg = DataConfig(**{**meta["data"], **({"path": data_dir} if data_dir else {})})
        model_cfg = ModelConfig(**meta["model"])
        data = Dataset.open(data_cfg, model_cfg.vocab_size)
        model = load_artifact_model(path, rt.device)
        seq_len = int(meta.get("seq_len") or 1024)
        res = evaluate_flat(model.token_losses, data.val_tokens, ByteLUT.from_numpy(data.luts, rt.device),
                            seq_len=seq_len, batch_tokens=batch_tokens, device=rt.device)
        return {"artifact": str(path), "val_loss": res.loss, "val_bpb": res.bpb, "tokens": res.tokens,
                "bytes_scored": res.bytes, "model_bytes": path.stat().st_size, "data": str(data.path)}
    finally:
        shutdown(rt)
