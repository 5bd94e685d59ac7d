"""Command line: ``pgolf <command>``.

    pgolf demo                                                   # build the demo corpus, train `tiny`, score it
    pgolf data build --corpus proxy --tokenizer sp1024           # docs -> tokenizer -> shards
    pgolf data fineweb --variant sp8192 --train-shards 80         # the challenge data (huggingface_hub)
    pgolf train --preset baseline --set train.wallclock_s=180     # any preset, dotted overrides
    pgolf train --preset baseline --proxy                         # the one-GPU proxy form
    pgolf train --resume runs/<id>                                # continue from the last checkpoint
    pgolf eval runs/<id>/artifact.pgz                             # re-score an artifact from disk
    pgolf inspect runs/<id>/artifact.pgz                          # where the bytes go (table + bar chart PNG)
    pgolf presets                                                 # list presets
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from pgolf.config import TOKENIZERS, apply_overrides


def _train_config(args):
    from pgolf.presets import get_preset, proxy_form

    cfg = get_preset(args.preset)
    if args.proxy:
        cfg = proxy_form(cfg)
    return apply_overrides(cfg, args.set or [])


def cmd_train(args) -> int:
    from pgolf.pipeline import run

    if args.resume:
        summary = run(_train_config(args), resume_dir=args.resume)
    else:
        summary = run(_train_config(args), run_id=args.run_id)
    return 0 if summary["valid"] else 2


def cmd_eval(args) -> int:
    from pgolf.pipeline import score_artifact

    res = score_artifact(args.artifact, data_dir=args.data_dir, device=args.device)
    print(json.dumps(res, indent=2))
    return 0


def cmd_inspect(args) -> int:
    from pathlib import Path

    from pgolf.export.inspect import format_report, inspect_artifact
    from pgolf.fileio import atomic_write_json

    png = args.png or str(Path(args.artifact).with_suffix(".bytes.png"))
    rep = inspect_artifact(args.artifact, fp32=args.fp32, png=png)
    print(format_report(rep, max_rows=args.top))
    print(f"chart: {rep['png']}")
    if args.json:
        atomic_write_json(args.json, rep)
    return 0 if rep["bytes"]["headroom"] >= 0 else 2


def cmd_data_build(args) -> int:
    from pgolf.data.build import build_dataset

    manifest = build_dataset(args.corpus, args.tokenizer, args.out, root=args.root, docs_dir=args.docs_dir,
                             tokenizer_path=args.tokenizer_path)
    print(json.dumps({k: manifest[k] for k in manifest if k in ("out_dir", "splits", "tokenizer")}, indent=2,
                     default=str))
    return 0


def cmd_data_fineweb(args) -> int:
    from pgolf.data.fineweb import download_fineweb

    out = download_fineweb(args.variant, args.train_shards, args.root, with_docs=args.with_docs)
    print(out)
    return 0


def cmd_demo(args) -> int:
    from pgolf.demo import run_demo

    return run_demo(wallclock_s=args.wallclock_s)


def cmd_presets(args) -> int:
    from pgolf.presets import PRESETS, get_preset

    for name in sorted(PRESETS):
        cfg = get_preset(name)
        m = cfg.model
        print(f"{name:10s} {m.num_layers}L d={m.model_dim} heads={m.num_heads}/{m.num_kv_heads} "
              f"vocab={m.vocab_size} data={cfg.data.corpus}/{cfg.data.tokenizer}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pgolf", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a preset, export the artifact, score it from disk")
    t.add_argument("--preset", default="baseline")
    t.add_argument("--proxy", action="store_true", help="use the preset's one-GPU proxy form")
    t.add_argument("--set", action="append", metavar="SECTION.FIELD=VALUE", help="override a config field")
    t.add_argument("--run-id", default=None)
    t.add_argument("--resume", default=None, metavar="RUN_DIR", help="continue runs/<id> from its checkpoint")
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("eval", help="re-score an artifact")
    e.add_argument("artifact")
    e.add_argument("--data-dir", default=None, help="dataset folder (default: the one recorded in the artifact)")
    e.add_argument("--device", default="auto")
    e.set_defaults(func=cmd_eval)

    d = sub.add_parser("data", help="build or download datasets")
    dsub = d.add_subparsers(dest="data_command", required=True)
    b = dsub.add_parser("build", help="embedded corpus -> docs -> tokenizer -> shards")
    b.add_argument("--corpus", choices=("demo", "proxy"), required=True)
    b.add_argument("--tokenizer", choices=TOKENIZERS, required=True)
    b.add_argument("--out", default=None, help="dataset folder (default: <root>/<corpus>_<tokenizer>)")
    b.add_argument("--root", default="data")
    b.add_argument("--docs-dir", default=None, help="use existing train.jsonl(.xz)/val.jsonl(.xz) documents")
    b.add_argument("--tokenizer-path", default=None, help="reuse a trained tokenizer .model instead of training")
    b.set_defaults(func=cmd_data_build)
    f = dsub.add_parser("fineweb", help="download the challenge shards through huggingface_hub")
    f.add_argument("--variant", default="sp1024")
    f.add_argument("--train-shards", type=int, default=80)
    f.add_argument("--root", default="data")
    f.add_argument("--with-docs", action="store_true")
    f.set_defaults(func=cmd_data_fineweb)

    m = sub.add_parser("demo", help="the whole pipeline on the embedded demo corpus (CPU friendly)")
    m.add_argument("--wallclock-s", type=float, default=None)
    m.set_defaults(func=cmd_demo)

    ins = sub.add_parser("inspect", help="per-tensor bytes, errors and a bar chart of an artifact")
    ins.add_argument("artifact")
    ins.add_argument("--fp32", default=None, help="float weights to measure errors against "
                                                  "(default: model_fp32.pt next to the artifact)")
    ins.add_argument("--png", default=None, help="chart path (default: <artifact>.bytes.png)")
    ins.add_argument("--json", default=None, help="also write the report as JSON")
    ins.add_argument("--top", type=int, default=0, help="list only the N largest tensors")
    ins.set_defaults(func=cmd_inspect)

    pr = sub.add_parser("presets", help="list presets")
    pr.set_defaults(func=cmd_presets)
    return p


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        code = args.func(args)
    except (ValueError, FileNotFoundError, FileExistsError) as exc:
        if os.environ.get("PGOLF_DEBUG"):
            raise
        print(f"pgolf: error: {exc}", file=sys.stderr)
        code = 1
    sys.exit(code)
