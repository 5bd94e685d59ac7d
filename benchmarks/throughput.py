"""Training throughput and MFU: pgolf (any preset) against record #1855's own ``train_gpt.py``, same shards,
same cap, same GPU, one after the other. Writes one JSON with tokens/s overall and per phase (before / after the
depth-recurrence switch), mean step time, peak memory, MFU (one FLOPs formula for both: `pgolf.report.flops`) and
the ratios pgolf / record.

    source benchmarks/device_env.sh sp8192
    python3 benchmarks/throughput.py --record .peers/pr1855_train_gpt.py --pgolf pr1855 --seconds 60 \
        --data data/proxy_sp8192 --stop-after-training --out "$OUT/throughput_issue5.json"
    python3 benchmarks/throughput.py --merge a.json b.json --out c.json     # record and pgolf from two calls
    python3 benchmarks/throughput.py --repeats p1.json p2.json p3.json --out r.json   # mean of merged pairings
    python3 benchmarks/throughput.py --bandwidth-split h100.json h200.json --out s.json  # bandwidth-bound time
    python3 benchmarks/throughput.py --pgolf tiny --data data/demo_sp1024 --seconds 5 --out /tmp/t.json   # CPU

pgolf runs as ``python -m pgolf train --preset P --set train.wallclock_s=S ...`` with a cheap export (int8 + zlib,
no GPTQ; `QUICK_EXPORT`) and one eval batch shape (fewer compiled eval graphs to prime); with
``--stop-after-training`` it primes no eval graph (``train.prime_eval=false``) and is stopped once its ``stopped:``
line (steps, time, peak memory) is in train.log. The record runs from a patched temporary copy (record1855.py)
with ``benchmarks/shims`` (a FlashAttention-3 stand-in) on PYTHONPATH. Both runs log every `--log-every` steps;
the wall second at which each printed its first step and its end of training is kept (``marks``), i.e. how long
start-up and compilation took. ``--profile-steps N`` also profiles N steps of each, ``--profile-skip K`` (default
PROFILE_SKIP) timed steps after its warm-up (the record through profile_script.py), and prints GPU ms per step by
kernel kind side by side; a K past the loop switch profiles the looped layers.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling record1855.py

import record1855 as rec1855
from pgolf.report.flops import (
    PhaseFlops,
    attention_flops_per_token,
    hbm_bandwidth,
    peak_flops,
    phase_flops,
    read_tokens,
    t_eff_from_tokens,
)
from pgolf.report.throughput import bandwidth_split, load_pgolf_run, mfu_block, mfu_budget, phase_stats, ratios
from pgolf.train.profile import PROFILE_SKIP

SHIMS = Path(__file__).resolve().parent / "shims"
PROFILE_SCRIPT = Path(__file__).resolve().parent / "profile_script.py"
TARGETS = {"tokens_per_s_ratio": 1.15, "mfu": 0.40}  # issue 5, item 2
# pgolf overrides that keep the post-training work small (the benchmark only reads the training clock)
QUICK_EXPORT = ("quant.scheme=int8_rowwise", "quant.gptq=false", "quant.lqer_rank=0", "quant.awq_top_k=0",
                "quant.gate_int8=false", "quant.pack_bits=false", "quant.fit_budget=false", "quant.compressor=single",
                "quant.codec=zlib", "quant.gptq_reserve_s=0", "train.val_every=0")
RECORD_MARKS = {"first_step": r"^1/\d+ train_loss:", "train_end": r"^(stopping_early|peak memory)"}
PGOLF_MARKS = {"first_step": r"^step:1/", "train_end": r"^stopped:"}


def run_logged(cmd: list[str], *, cwd: Path, env: dict[str, str], log_path: Path, timeout: float | None,
               watch: Path | None = None, marks: dict[str, str] | None = None, stop_at: str | None = None,
               grace_s: float = 2.0, poll_s: float = 0.5) -> dict[str, Any]:
    """Run `cmd` with stdout+stderr to `log_path`. `marks` (name -> regex) are looked for in `watch` (default: the
    log) and the wall second of each first match is kept; once mark `stop_at` is seen, or past `timeout`, the
    process group is stopped (TERM, then KILL)."""
    t0, seen, why = time.time(), {}, None
    watch = watch or log_path
    pats = {k: re.compile(v, re.M) for k, v in (marks or {}).items()}
    with open(log_path, "w", encoding="utf-8") as f:
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
        while proc.poll() is None:
            time.sleep(poll_s)
            now = time.time() - t0
            if pats and len(seen) < len(pats) and watch.exists():
                text = watch.read_text(encoding="utf-8", errors="replace")
                seen.update({k: round(now, 1) for k, p in pats.items() if k not in seen and p.search(text)})
            if stop_at in seen and now - seen[stop_at] >= grace_s:
                why = f"stopped after {stop_at}"
            elif timeout is not None and now > timeout:
                why = f"timeout {timeout:g}s"
            if why:
                _stop(proc)
                break
    return {"rc": proc.returncode, "stopped": why, "wall_s": round(time.time() - t0, 1), "marks": seen,
            "log": str(log_path)}


def _stop(proc: subprocess.Popen) -> None:
    """TERM then KILL the process group this script started for `proc`."""
    for sig, wait in ((signal.SIGTERM, 15), (signal.SIGKILL, None)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def pgolf_command(preset: str, run_id: str, seconds: float, data: Path, sets: Sequence[str], *, warmup_steps: int,
                  log_every: int, training_only: bool = False, profile_steps: int = 0,
                  profile_skip: int = PROFILE_SKIP) -> list[str]:
    """``python -m pgolf train`` with the benchmark's overrides; the caller's `sets` come last and win.
    `training_only` (--stop-after-training): no evaluation graphs are compiled in the warm-up. `profile_steps`:
    torch.profiler over that many steps after the first `profile_skip` timed ones (runs/<id>/profile.json)."""
    from pgolf.config import apply_overrides
    from pgolf.presets import get_preset

    base = [f"train.wallclock_s={seconds:g}", f"train.log_every={log_every}", f"train.warmup_steps={warmup_steps}",
            f"data.path={data}", *QUICK_EXPORT]
    if data.name.startswith("proxy_"):
        base.append("data.corpus=proxy")
    if training_only:
        base.append("train.prime_eval=false")
    if profile_steps:
        base += [f"train.profile_steps={profile_steps}", f"train.profile_skip={profile_skip}"]
    apply_overrides(get_preset(preset), [*base, *sets])  # a bad override fails here, before the device run
    cmd = [sys.executable, "-m", "pgolf", "train", "--preset", preset, "--run-id", run_id]
    for s in (*base, *sets):
        cmd += ["--set", s]
    return cmd


def run_pgolf(args, workdir: Path, run_id: str) -> dict[str, Any]:
    cmd = pgolf_command(args.pgolf, run_id, args.seconds, args.data, args.set, warmup_steps=args.warmup_steps,
                        log_every=args.log_every, training_only=args.stop_after_training,
                        profile_steps=args.profile_steps, profile_skip=args.profile_skip)
    print("+", shlex.join(cmd), flush=True)
    run_dir = Path("runs") / run_id
    res = run_logged(cmd, cwd=Path.cwd(), env=dict(os.environ), log_path=workdir / "pgolf_stdout.log",
                     timeout=args.pgolf_timeout, watch=run_dir / "train.log", marks=PGOLF_MARKS,
                     stop_at="train_end" if args.stop_after_training else None)
    res.update(command=shlex.join(cmd), run_dir=str(run_dir))
    if not (run_dir / "config.json").exists():
        res["error"] = f"no {run_dir / 'config.json'}: the run did not start (see {res['log']})"
        return res
    res["profile"] = read_profile(run_dir / "profile.json") if args.profile_steps else None
    trace, summary, log, cfg = load_pgolf_run(run_dir)
    peak, reserved = summary.get("peak_mem_bytes"), summary.get("peak_reserved_bytes")
    res.update(trace=trace, cfg=cfg, summary_found=bool(summary), model_params=log.get("model_params"),
               peak_mem_mib=int(peak) // 2**20 if peak else log.get("peak_mem_mib"),
               peak_reserved_mib=int(reserved) // 2**20 if reserved else log.get("peak_reserved_mib"),
               device=summary.get("device"), summary_mfu=summary.get("mfu"),
               clock_warnings=log.get("clock_warnings", []))
    return res


def run_record(args, workdir: Path, bucket: dict[str, Any], record_cfg) -> dict[str, Any]:
    """The patched record script; `record_cfg` is the pr1855 preset (its loops decide the warm-up length)."""
    script = workdir / "record" / "train_gpt.py"
    script.parent.mkdir(parents=True, exist_ok=True)
    script.write_text(rec1855.patch_source(Path(args.record).read_text(encoding="utf-8")), encoding="utf-8")
    tokenizer = args.tokenizer or args.data / "tokenizer.model"
    settings = rec1855.record_env(args.data, tokenizer, args.seconds, bucket=bucket["bucket"],
                                  warmup_steps=args.warmup_steps, log_every=args.log_every)
    env = {**os.environ, **settings, "PYTHONPATH": os.pathsep.join(
        [str(SHIMS)] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else []))}
    cmd = [sys.executable, "train_gpt.py"]
    if args.profile_steps:  # the same window as pgolf's: profile_skip steps after its warm-up (x2 with loops)
        skip = args.warmup_steps * (2 if record_cfg.model.num_loops else 1) + args.profile_skip
        cmd = [sys.executable, str(PROFILE_SCRIPT), "--skip", str(skip), "--steps", str(args.profile_steps),
               "--out-dir", str((workdir / "record_profile").resolve()), "--", "train_gpt.py"]
    shown = f"PYTHONPATH={SHIMS} " + " ".join(f"{k}={v}" for k, v in settings.items()) + " " + shlex.join(cmd)
    print(f"+ (cd {script.parent}) {shown}", flush=True)
    res = run_logged(cmd, cwd=script.parent, env=env, log_path=workdir / "record_stdout.log",
                     timeout=args.record_timeout, marks=RECORD_MARKS)
    parsed = rec1855.parse_record_log(Path(res["log"]).read_text(encoding="utf-8", errors="replace"))
    res["profile"] = read_profile(workdir / "record_profile" / "profile.json") if args.profile_steps else None
    res.update(command=f"(cd {script.parent}) {shown}", source=str(args.record), cu_bucket=bucket,
               patches=[{"name": p.name, "why": p.why} for p in rec1855.PATCHES], trace=parsed["trace"],
               **{k: parsed[k] for k in ("stopped_by_cap", "peak_mem_mib", "peak_reserved_mib", "model_params",
                                         "traceback", "hparams")})
    return res


def read_profile(path: Path, top: int = 15) -> dict[str, Any] | None:
    """The per-kind totals and top kernels of a profile.json (pgolf.train.profile), None if the run wrote none."""
    if not path.exists():
        return None
    rep = json.loads(path.read_text())
    return {"path": str(path), "steps": rep["steps"], "skip": rep.get("skip"), "clock": rep["clock"],
            "total_ms_per_step": rep["total_ms_per_step"], "kinds": rep["kinds"], "top": rep["top"][:top],
            "device_time": rep.get("device_time")}


def analyze(res: dict[str, Any], pf: PhaseFlops, peak: float | None) -> dict[str, Any]:
    """The JSON block of one run: its run facts, phase rates and MFU (the trace itself becomes `points`)."""
    tr = res.pop("trace", None)
    res.pop("cfg", None)
    res["flops_per_token"] = pf.as_dict()
    if tr is None or not tr.points:
        res["phases"], res["mfu"] = None, None
        return res
    stats = phase_stats(tr)
    res.update(steps=tr.steps, train_time_s=tr.train_time_s, batch_tokens=tr.batch_tokens,
               switch_step=tr.switch_step, switch_time_s=tr.switch_time, phases=stats,
               tokens_per_s=stats["overall"]["tokens_per_s"], mfu=mfu_block(stats, tr, pf, peak),
               points=[[s, round(t, 4)] for s, t in tr.points])
    return res


def compare(result: dict[str, Any]) -> dict[str, Any]:
    """Add the pgolf / record ratios and the issue's targets when both runs have phases."""
    rec, pg = result.get("record") or {}, result.get("pgolf") or {}
    if rec.get("phases") and pg.get("phases"):
        result["ratio_pgolf_over_record"] = ratios(pg["phases"], rec["phases"])
        if result.get("profiled_steps"):  # profiler overhead in both: a diagnosis run, not a measurement
            result["meets_targets"] = None
            return result
        if pg.get("clock_warnings"):  # a compile or stall inside pgolf's clock: its rate is not a measurement
            result["meets_targets"] = None
            result["not_judged"] = f"{len(pg['clock_warnings'])} clock warning(s) in pgolf's train.log"
            return result
        r, m = result["ratio_pgolf_over_record"]["overall"], (pg.get("mfu") or {}).get("overall")
        result["meets_targets"] = {"tokens_per_s_ratio": r is not None and r >= TARGETS["tokens_per_s_ratio"],
                                   "mfu": m is not None and m >= TARGETS["mfu"]}
    return result


def device_name() -> str:
    try:
        import torch

        return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    except Exception:  # noqa: BLE001 (a name for the report only)
        return "unknown"


def merge(paths: Sequence[Path]) -> dict[str, Any]:
    """One result from several JSONs of this script (e.g. the record and pgolf measured in two device calls)."""
    out: dict[str, Any] = {}
    for p in paths:
        d = json.loads(Path(p).read_text())
        out.update({k: v for k, v in d.items() if k not in out or k in ("record", "pgolf")})
    out["merged_from"] = [str(p) for p in paths]
    return compare(out)


def repeats(paths: Sequence[Path]) -> dict[str, Any]:
    """Several pairings of the same comparison (merged JSONs, record and pgolf of each from one machine): each one's
    overall rates and ratios, the mean, min and max ratio per phase, and the targets judged on the means."""
    rows = []
    for p in paths:
        d = json.loads(Path(p).read_text())
        r = d.get("ratio_pgolf_over_record")
        if not r or None in r.values():
            raise SystemExit(f"{p}: no ratio_pgolf_over_record for every phase; give merged pairings (--merge)")
        rows.append({"file": str(p), "device": d.get("device"), "ratio": r,
                     "tokens_per_s": {k: d[k]["phases"]["overall"]["tokens_per_s"] for k in ("record", "pgolf")},
                     "pgolf_mfu": (d["pgolf"].get("mfu") or {}).get("overall")})
    ratio = {}
    for ph in ("overall", "flat", "looped"):
        vals = [x["ratio"][ph] for x in rows]
        ratio[ph] = {"mean": sum(vals) / len(vals), "min": min(vals), "max": max(vals)}
    mfus = [x["pgolf_mfu"] for x in rows if x["pgolf_mfu"] is not None]
    mfu = sum(mfus) / len(mfus) if mfus else None
    return {"what": "repeated pairings of pgolf against the record; targets judged on the mean ratio and MFU",
            "pairings": rows, "ratio": ratio, "pgolf_mfu_mean": mfu, "targets": TARGETS,
            "meets_targets": {"tokens_per_s_ratio": ratio["overall"]["mean"] >= TARGETS["tokens_per_s_ratio"],
                              "mfu": mfu is not None and mfu >= TARGETS["mfu"]}}


def split_by_bandwidth(paths: Sequence[Path]) -> dict[str, Any]:
    """The same runs on two GPUs of one bf16 peak and different HBM bandwidth (an H100 and an H200): per run and
    phase, the step's bandwidth-bound and bandwidth-free time (`pgolf.report.throughput.bandwidth_split`)."""
    docs = []
    for p in paths:
        d = json.loads(Path(p).read_text())
        dev = d.get("device") or ""
        bw, peak = hbm_bandwidth(dev), peak_flops(dev)
        if bw is None or peak is None:
            raise SystemExit(f"{p}: device {dev!r} has no HBM bandwidth or bf16 peak in pgolf.report.flops")
        docs.append((str(p), dev, bw, peak, d))
    (p_slow, dev_slow, bw_slow, peak_slow, slow), (p_fast, dev_fast, bw_fast, peak_fast, fast) = \
        sorted(docs, key=lambda x: x[2])
    if peak_slow != peak_fast or bw_slow == bw_fast:
        raise SystemExit(f"--bandwidth-split needs one bf16 peak and two bandwidths: {dev_slow!r} and {dev_fast!r}")
    runs = {k: bandwidth_split(slow[k], fast[k], bw_slow, bw_fast) for k in ("record", "pgolf")
            if (slow.get(k) or {}).get("phases") and (fast.get(k) or {}).get("phases")}
    if not runs:
        raise SystemExit(f"{p_slow} and {p_fast} share no run with phases (record / pgolf)")
    return {"what": "t = C + M * bw_slow / bw per phase: C bandwidth-free, M bandwidth-bound on the slower GPU",
            "slow": {"file": p_slow, "device": dev_slow, "hbm_bytes_per_s": bw_slow},
            "fast": {"file": p_fast, "device": dev_fast, "hbm_bytes_per_s": bw_fast},
            "peak_flops": peak_slow, "runs": runs}


def budget_of_profiled_run(path: Path, run: str, preset: str | None, target: float,
                           phase: str | None = None) -> dict[str, Any]:
    """`mfu_budget` of one profiled run of a throughput JSON (``--profile-steps``): the profiled window's phase
    (before or after the loop switch; from the run's switch step, else `phase` must say) gives the FLOPs per
    token; attention's share is `attention_flops_per_token`, d from `preset` (default: the run's command's)."""
    from pgolf.presets import get_preset

    d = json.loads(Path(path).read_text())
    r = d.get(run) or {}
    prof, fpt, tokens = r.get("profile"), r.get("flops_per_token"), r.get("batch_tokens")
    if not (prof and fpt and tokens):
        raise SystemExit(f"{path}: run {run!r} has no profile, flops_per_token or batch_tokens (--profile-steps)")
    peak = peak_flops(d.get("device") or "")
    if peak is None:
        raise SystemExit(f"{path}: device {d.get('device')!r} has no bf16 peak in pgolf.report.flops")
    if preset is None:
        m = re.search(r"--preset (\S+)", r.get("command") or "")
        if m is None:
            raise SystemExit(f"{path}: no --preset in run {run!r}'s command; give --preset")
        preset = m.group(1)
    start, end, switch = prof.get("skip") or 0, (prof.get("skip") or 0) + prof["steps"], r.get("switch_step")
    if phase is None:
        if switch is None and fpt.get("switch_frac", 1.0) < 1.0:
            raise SystemExit(f"{path}: run {run!r} logged no switch step; say which phase was profiled (--phase)")
        if switch is None or end <= switch:
            phase = "flat"
        elif start >= switch:
            phase = "looped"
        else:
            raise SystemExit(f"{path}: the profiled steps {start}-{end} span the loop switch at step {switch}")
    layers = fpt["virtual_layers"][0 if phase == "flat" else 1]
    attn = attention_flops_per_token(layers, fpt["t_eff"], get_preset(preset).model.model_dim)
    res = mfu_budget(prof["kinds"], (fpt[phase] - attn) * tokens, attn * tokens, peak, target)
    return {"what": "the profiled step's GPU time by kernel kind against its FLOPs (report.throughput.mfu_budget)",
            "file": str(path), "run": run, "device": d.get("device"), "preset": preset, "phase": phase,
            "profiled_steps": [start, end], "batch_tokens": tokens, **res}


def print_budget(b: dict[str, Any]) -> None:
    print(f"{b['run']} ({b['preset']}, {b['phase']}, {b['device']}): busy {b['busy_ms']:.1f} ms per step, "
          f"FLOPs worth {b['useful_ms']:.1f} ms at peak, MFU {b['mfu']:.1%}")
    for k, r in b["kinds"].items():
        eff = f"  efficiency {r['efficiency']:.1%}" if r.get("efficiency") is not None else ""
        gone = f"{r['mfu_without']:.1%}" if r["mfu_without"] is not None else "-"
        print(f"  {k:10s} {r['ms']:8.1f} ms ({r['share']:5.1%}){eff:20s}  MFU without it {gone}")
    t = b["target"]
    print(f"MFU {t['mfu']:.0%} needs a busy step of {t['busy_ms']:.1f} ms: {t['cut_ms']:.1f} ms ({t['cut_share']:.1%}) "
          f"less")


def measure(args) -> dict[str, Any]:
    from pgolf.fileio import atomic_write_json
    from pgolf.presets import get_preset

    stamp = time.strftime("%Y%m%d-%H%M%S")
    workdir = args.workdir or Path("runs") / f"throughput-{stamp}"
    workdir.mkdir(parents=True, exist_ok=True)
    train_files = sorted(args.data.glob("fineweb_train_*.bin"))
    if not train_files:
        raise SystemExit(f"{args.data}: no fineweb_train_*.bin shards (build them: pgolf data build ...)")
    dev = device_name()
    peak = peak_flops(dev)
    record_cfg = get_preset("pr1855")
    tokens = read_tokens(train_files)  # T_EFF_SCAN_TOKENS, as summary.json's MFU
    t_eff = t_eff_from_tokens(tokens, record_cfg.model.bos_id, record_cfg.train.seq_len)
    result: dict[str, Any] = {
        "what": "training tokens/s and MFU: pgolf preset vs record #1855 train_gpt.py, same shards, cap and GPU",
        "device": dev, "peak_flops": peak, "seconds": args.seconds, "data": str(args.data), "targets": TARGETS,
        "flops_formula": "pgolf.report.flops: 6 x matmul weights per virtual layer + 6 T_eff d causal attention "
                         "per virtual layer (documents cut at seq_len); looped layers counted after the switch",
        "t_eff": {"doc_isolated_seq2048": t_eff, "tokens_scanned": len(tokens)},
        # profiled_steps > 0: tokens/s include profiler overhead, compare kernel times only
        "profiled_steps": args.profile_steps, "profile_skip": args.profile_skip if args.profile_steps else None}
    hparams: dict[str, str] = {}
    if args.record:
        bucket = rec1855.record_bucket_size(train_files, record_cfg.train.micro_batch_tokens, record_cfg.train.seq_len)
        print(f"record cu_seqlens bucket: {bucket}", flush=True)
        rec = run_record(args, workdir, bucket, record_cfg)
        hparams = rec.get("hparams") or {}
        result["record"] = analyze(rec, phase_flops(record_cfg, t_eff), peak)
        show_tail_if_failed(result["record"])
        atomic_write_json(args.out, result)  # a partial result survives a later failure
    if args.pgolf:
        pg = run_pgolf(args, workdir, f"throughput-{args.pgolf}-{stamp}")
        cfg = pg.get("cfg")
        if cfg is not None:
            if hparams:  # same model and batch as the record? (empty list: yes)
                result["equal_model_mismatches"] = rec1855.equal_model_check(hparams, cfg)
            te = t_eff_from_tokens(tokens, cfg.model.bos_id, cfg.train.seq_len) if cfg.model.doc_isolated else None
            pg = analyze(pg, phase_flops(cfg, te), peak)
        result["pgolf"] = pg
        show_tail_if_failed(pg)
    if hparams and "equal_model_mismatches" not in result:
        result["equal_model_mismatches"] = rec1855.equal_model_check(hparams, record_cfg)
    return compare(result)


def show_tail_if_failed(run: dict[str, Any], lines: int = 15) -> None:
    """Print the end of a run's output when it produced no phase rates (the device call shows only a tail)."""
    if run.get("phases") or not run.get("log") or not Path(run["log"]).exists():
        return
    tail = Path(run["log"]).read_text(encoding="utf-8", errors="replace").splitlines()[-lines:]
    print(f"--- no step rates; last lines of {run['log']}:", *tail, sep="\n", flush=True)


def print_table(result: dict[str, Any]) -> None:
    def fmt(x, spec):
        return "-" if x is None else format(x, spec)

    if "pairings" in result:
        for x in result["pairings"]:
            print(f"{x['file']}: record {x['tokens_per_s']['record']:,.0f} pgolf {x['tokens_per_s']['pgolf']:,.0f} "
                  f"tok/s, ratio", {k: round(v, 4) for k, v in x["ratio"].items()})
        print("mean ratio", {k: round(v["mean"], 4) for k, v in result["ratio"].items()},
              "pgolf MFU", fmt(result["pgolf_mfu_mean"], ".3f"), "meets targets", result["meets_targets"])
        return

    print(f"{'run':8s} {'phase':8s} {'tok/s':>12s} {'step s':>8s} {'MFU':>7s}")
    for name in ("record", "pgolf"):
        run = result.get(name) or {}
        for ph in ("overall", "flat", "looped"):
            st = (run.get("phases") or {}).get(ph) or {}
            print(f"{name:8s} {ph:8s} {fmt(st.get('tokens_per_s'), ',.0f'):>12s} "
                  f"{fmt(st.get('step_time_s'), '.4f'):>8s} {fmt((run.get('mfu') or {}).get(ph), '.3f'):>7s}")
        if run:
            print(f"{name:8s} wall {run.get('wall_s')}s marks {run.get('marks')} rc {run.get('rc')} "
                  f"stopped {run.get('stopped')} peak {run.get('peak_mem_mib')} MiB "
                  f"(reserved {run.get('peak_reserved_mib')} MiB)")
            for line in run.get("clock_warnings") or []:
                print(f"{name:8s} {line}")
    if "ratio_pgolf_over_record" in result:
        print("pgolf/record tok/s:", {k: None if v is None else round(v, 3)
                                      for k, v in result["ratio_pgolf_over_record"].items()})
    if result.get("not_judged"):
        print("targets not judged:", result["not_judged"])
    profiles = {k: (result.get(k) or {}).get("profile") for k in ("record", "pgolf")}
    if any(profiles.values()):
        kinds = sorted({kind for p in profiles.values() if p for kind in p["kinds"]})
        print(f"{'GPU ms/step':12s}", *(f"{k:>10s}" for k in ("record", "pgolf")))
        for kind in [*kinds, "total"]:
            row = [None if not p else p["total_ms_per_step"] if kind == "total" else
                   (p["kinds"].get(kind) or {}).get("ms_per_step", 0.0) for p in profiles.values()]
            print(f"{kind:12s}", *(f"{fmt(v, '.1f'):>10s}" for v in row))
        for key in ("busy", "idle", "span"):  # the GPU's timeline over the window: idle = waiting for the host
            row = [((p or {}).get("device_time") or {}).get(key) for p in profiles.values()]
            print(f"{'GPU ' + key:12s}", *(f"{fmt(v, '.1f'):>10s}" for v in row))
    if result.get("equal_model_mismatches"):
        print("NOT the same model/batch:", result["equal_model_mismatches"])


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pgolf", default=None, metavar="PRESET", help="pgolf preset to run (e.g. pr1855)")
    ap.add_argument("--set", action="append", default=[], help="extra pgolf override section.field=value")
    ap.add_argument("--record", type=Path, default=None, help="record #1855's train_gpt.py (a patched copy is run)")
    ap.add_argument("--seconds", type=float, default=60.0, help="training wallclock cap of each run")
    ap.add_argument("--data", type=Path, default=Path("data/proxy_sp8192"))
    ap.add_argument("--tokenizer", type=Path, default=None, help="default: <data>/tokenizer.model")
    ap.add_argument("--warmup-steps", type=int, default=5, help="compile-priming steps of both (records: 20)")
    ap.add_argument("--log-every", type=int, default=5, help="steps between step lines, both runs")
    ap.add_argument("--record-timeout", type=float, default=None, help="wall seconds before the record is stopped")
    ap.add_argument("--pgolf-timeout", type=float, default=None, help="wall seconds before pgolf is stopped")
    ap.add_argument("--stop-after-training", action="store_true",
                    help="stop pgolf once training ended (skip its evaluation and export)")
    ap.add_argument("--profile-steps", type=int, default=0,
                    help="also profile this many steps of each run after --profile-skip timed ones (tokens/s of a "
                         "profiled run is not comparable; the report gets per-kind kernel time of both)")
    ap.add_argument("--profile-skip", type=int, default=PROFILE_SKIP,
                    help="timed steps before the profiled window (past the loop switch to profile looped layers)")
    ap.add_argument("--workdir", type=Path, default=None, help="default: runs/throughput-<time>")
    ap.add_argument("--merge", type=Path, nargs="+", default=None, help="combine earlier JSONs of this script")
    ap.add_argument("--repeats", type=Path, nargs="+", default=None, help="summarize merged pairings (mean ratio)")
    ap.add_argument("--bandwidth-split", type=Path, nargs=2, default=None, metavar=("A.json", "B.json"),
                    help="the same runs on two GPUs of one peak, different HBM bandwidth: bandwidth-bound time")
    ap.add_argument("--mfu-budget", type=Path, default=None, metavar="PROFILED.json",
                    help="a profiled run's GPU time by kernel kind against its FLOPs: where the MFU gap is")
    ap.add_argument("--run", choices=("pgolf", "record"), default="pgolf", help="which run --mfu-budget reads")
    ap.add_argument("--preset", default=None, help="--mfu-budget: the model's preset (default: from its command)")
    ap.add_argument("--phase", choices=("flat", "looped"), default=None,
                    help="--mfu-budget: the profiled phase, where the run logged no switch step")
    ap.add_argument("--target-mfu", type=float, default=TARGETS["mfu"])
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    from pgolf.fileio import atomic_write_json

    if args.mfu_budget:
        result = budget_of_profiled_run(args.mfu_budget, args.run, args.preset, args.target_mfu, args.phase)
        atomic_write_json(args.out, result)
        print_budget(result)
        print(f"wrote {args.out}")
        return 0

    if args.bandwidth_split:
        result = split_by_bandwidth(args.bandwidth_split)
        atomic_write_json(args.out, result)
        for run, phases in result["runs"].items():
            for ph, r in phases.items():
                bound = r["mfu_if_no_bandwidth_bound"]
                print(f"{run:7s} {ph:7s} step {r['step_s']['slow']:.4f} / {r['step_s']['fast']:.4f} s  "
                      f"bandwidth-bound {r['bandwidth_bound_s']:.4f} s ({r['bandwidth_bound_share']:.0%})  "
                      f"free {r['bandwidth_free_s']:.4f} s  MFU {r['mfu_slow']:.3f} -> "
                      + (f"{bound:.3f}" if bound is not None else "-") + ("" if r["consistent"] else "  INCONSISTENT"))
        print(f"wrote {args.out}")
        return 0
    if args.merge:
        result = merge(args.merge)
    elif args.repeats:
        result = repeats(args.repeats)
    elif args.pgolf or args.record:
        result = measure(args)
    else:
        ap.error("give --pgolf PRESET, --record PATH, both, --merge A.json B.json or --repeats P.json ...")
    atomic_write_json(args.out, result)
    print_table(result)
    print(f"wrote {args.out}")
    ok = [(result.get(k) or {}).get("phases") for k in ("record", "pgolf") if k in result or getattr(args, k, None)]
    return 0 if all(ok) else 1


if __name__ == "__main__":
    sys.exit(main())
