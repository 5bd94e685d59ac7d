"""Build a dataset folder: docs -> tokenizer -> official-format shards -> manifest.

    pgolf data build --corpus demo --tokenizer sp1024
    # == build_dataset("demo", "sp1024")  ->  data/demo_sp1024/{tokenizer.model, fineweb_*.bin, manifest.json}

Steps (each skipped when its outputs exist and their sha256 match what was recorded):
  1. docs: ``corpus.build_docs`` into ``<root>/<corpus>_docs/`` (or an existing ``docs_dir`` holding
     ``train.jsonl[.xz]`` and ``val.jsonl[.xz]``, e.g. docs carried to the GPU machine).
  2. tokenizer: SentencePiece BPE trained on the *train* docs only (official trainer arguments), or a copy of
     ``tokenizer_path``; ``byte260`` needs no file.
  3. shards: every doc as ``[BOS] + ids``, encoded in multi-threaded batches, packed into
     ``fineweb_{train,val}_NNNNNN.bin``.
  4. ``manifest.json``: written last, so a folder with a manifest is a finished build. What each step
     produced (and from which inputs) is recorded in ``.build_state.json`` as soon as the step ends, so an
     interrupted or partly stale build redoes only the steps whose inputs changed.

``unigram_bpb(dataset_dir)`` is a sanity floor: BPB of add-one-smoothed unigram train counts on val.
"""

from __future__ import annotations

import json
import lzma
import math
import os
import shutil
from pathlib import Path
from typing import IO, Any, Callable, Iterator

import numpy as np

from pgolf.data.shards import DEFAULT_SHARD_TOKENS, ShardWriter, list_shards, load_tokens, read_shard
from pgolf.data.tokenizer import (
    Byte260Tokenizer, SentencePieceTokenizer, Tokenizer, load_tokenizer, sp_trainer_args, target_bytes,
    train_sentencepiece,
)
from pgolf.fileio import atomic_open, atomic_write_json, sha256_file

MANIFEST_FORMAT = "pgolf-dataset/1"
STATE_FILE = ".build_state.json"
BATCH_CHARS = 8_000_000  # text per encode_batch call: enough to keep every thread busy
TOKENIZERS = {"byte260": 260, "sp1024": 1024, "sp4096": 4096, "sp8192": 8192}


def build_dataset(corpus: str, tokenizer_name: str, out_dir: str | Path | None = None, *, root: str | Path = "data",
                  docs_dir: str | Path | None = None, tokenizer_path: str | Path | None = None,
                  shard_tokens: int = DEFAULT_SHARD_TOKENS, workers: int | None = None,
                  log: Callable[[str], Any] = print) -> dict[str, Any]:
    """Build (or verify and reuse) ``<root>/<corpus>_<tokenizer>``; return its manifest."""
    vocab_size = _vocab_for(tokenizer_name)
    workers = int(workers or os.cpu_count() or 1)
    out = Path(out_dir) if out_dir is not None else Path(root) / f"{corpus}_{tokenizer_name}"
    out.mkdir(parents=True, exist_ok=True)

    docs_dir = _docs(corpus, root, docs_dir, log)
    docs = {split: _docs_file(docs_dir, split) for split in ("train", "val")}
    docs_sha = {split: sha256_file(path) for split, path in docs.items()}
    tok_want = _tokenizer_want(tokenizer_name, vocab_size, docs_sha["train"], tokenizer_path)

    manifest_file = out / "manifest.json"
    if manifest_file.is_file():
        old = json.loads(manifest_file.read_text(encoding="utf-8"))
        if _manifest_current(out, old, docs_sha, tok_want, shard_tokens):
            log(f"{out}: up to date")
            return old
        log(f"{out}: manifest is stale, rebuilding what changed")
    manifest_file.unlink(missing_ok=True)  # a partial rebuild must not look complete

    state_file = out / STATE_FILE
    state = json.loads(state_file.read_text(encoding="utf-8")) if state_file.is_file() else {}

    # 2. tokenizer -----------------------------------------------------------------------------------
    tok_state = state.get("tokenizer") or {}
    model = out / "tokenizer.model"
    if tokenizer_name == "byte260":
        tok: Tokenizer = Byte260Tokenizer()
        tok_state = {"want": tok_want, "sha256": None}
    elif tok_state.get("want") == tok_want and model.is_file() and sha256_file(model) == tok_state.get("sha256"):
        log(f"{model}: reusing tokenizer")
    else:
        if tokenizer_path is not None:
            src = Path(tokenizer_path)
            _copy(src, model)
            if src.with_suffix(".vocab").is_file():
                _copy(src.with_suffix(".vocab"), out / "tokenizer.vocab")
            log(f"{model}: copied from {src}")
        else:
            log(f"{model}: training SentencePiece BPE vocab {vocab_size} on {docs['train']}")
            train_sentencepiece((d["text"] for d in iter_docs(docs["train"])), vocab_size, out / "tokenizer",
                                num_threads=workers)
        tok_state = {"want": tok_want, "sha256": sha256_file(model)}
        state["tokenizer"] = tok_state
        state.pop("shards", None)
        atomic_write_json(state_file, state)
    if tokenizer_name != "byte260":
        tok = SentencePieceTokenizer(model, name=tokenizer_name, num_threads=workers)
        if tok.vocab_size != vocab_size:
            log(f"warning: {model} has {tok.vocab_size} ids, fewer than {vocab_size} "
                "(hard_vocab_limit=False on a small corpus)")
    state["tokenizer"] = tok_state

    # 3. shards --------------------------------------------------------------------------------------
    shard_state = state.setdefault("shards", {})
    for split in ("val", "train"):
        want = {"docs_sha256": docs_sha[split], "tokenizer_sha256": tok_state["sha256"], "shard_tokens": shard_tokens,
                "tokenizer": tokenizer_name}
        done = shard_state.get(split) or {}
        if done.get("want") == want and _shard_list_ok(out, split, done.get("shards", [])):
            log(f"{out}: reusing {len(done['shards'])} {split} shards")
            continue
        shard_state.pop(split, None)
        atomic_write_json(state_file, state)
        shard_state[split] = {"want": want, **encode_split(docs[split], tok, out, split, shard_tokens, log=log)}
        atomic_write_json(state_file, state)

    # 4. manifest ------------------------------------------------------------------------------------
    import sentencepiece

    val_tokens = load_tokens(out, "val", vocab_size=tok.vocab_size)
    val_bytes = target_bytes(val_tokens, tok.byte_luts())
    splits = {s: {k: v for k, v in shard_state[s].items() if k != "want"} for s in ("train", "val")}
    splits["val"].update(bytes=val_bytes, bytes_per_token=val_bytes / max(1, val_tokens.size - 1))
    tok_info = {**tok.describe(), "name": tokenizer_name, "requested_vocab_size": vocab_size,
                "source": tok_want["source"]}
    if tokenizer_name != "byte260":
        tok_info.update(model="tokenizer.model", model_sha256=tok_state["sha256"],
                        vocab_file="tokenizer.vocab" if (out / "tokenizer.vocab").is_file() else None,
                        trainer_args=tok_want.get("trainer_args"),
                        trained_on="train docs only" if tokenizer_path is None else f"given: {tokenizer_path}")
    docs_manifest = docs_dir / "docs_manifest.json"
    manifest = {
        "format": MANIFEST_FORMAT,
        "corpus": corpus,
        "tokenizer": tok_info,
        "docs": {
            "dir": str(docs_dir),
            **{s: {"file": docs[s].name, "sha256": docs_sha[s], "docs": splits[s]["docs"],
                   "text_bytes": splits[s]["text_bytes"]} for s in ("train", "val")},
            "docs_manifest": json.loads(docs_manifest.read_text(encoding="utf-8")) if docs_manifest.is_file() else None,
        },
        "shard_tokens": shard_tokens,
        "splits": splits,
        "versions": {"sentencepiece": sentencepiece.__version__, "numpy": np.__version__},
    }
    atomic_write_json(manifest_file, manifest)
    log(f"{out}: {splits['train']['tokens']:,} train / {splits['val']['tokens']:,} val tokens, "
        f"{manifest['splits']['val']['bytes_per_token']:.3f} val bytes/token")
    return manifest


def encode_split(docs_file: Path, tok: Tokenizer, out: Path, split: str, shard_tokens: int, *,
                 log: Callable[[str], Any] = print) -> dict[str, Any]:
    """Encode every doc of `docs_file` as ``[BOS] + ids`` into ``fineweb_<split>_*.bin``; return counts + shards."""
    text_bytes = 0
    with ShardWriter(out, split, shard_tokens, bos_id=tok.bos_id, vocab_size=tok.vocab_size) as writer:
        for texts in _batches(docs_file):
            for ids in tok.encode_arrays(texts):
                writer.add_doc(ids)
            text_bytes += sum(len(t.encode("utf-8")) for t in texts)
    if writer.num_docs == 0:
        raise ValueError(f"{docs_file}: no documents for the {split} split")
    shards = [{"name": p.name, "tokens": int(read_shard(p).size), "sha256": sha256_file(p)} for p in writer.paths]
    log(f"{out}: {split} {writer.num_docs:,} docs -> {writer.num_tokens:,} tokens in {len(shards)} shards")
    return {"shards": shards, "docs": writer.num_docs, "tokens": writer.num_tokens, "text_bytes": text_bytes}


def unigram_bpb(dataset_dir: str | Path) -> float:
    """BPB of an add-one-smoothed unigram model fit on train token counts, scored on val with the §2.4 LUT.

    Targets are ``val[1:]`` with previous tokens ``val[:-1]`` (as in the model eval); BOS targets add
    their nats but no bytes.
    """
    directory = Path(dataset_dir)
    tok = load_tokenizer(directory)
    vocab = tok.vocab_size
    counts = np.zeros(vocab, dtype=np.int64)
    files = list_shards(directory, "train")
    if not files:
        raise FileNotFoundError(f"no fineweb_train_*.bin shards in {directory}")
    for f in files:
        counts += np.bincount(read_shard(f, vocab_size=vocab), minlength=vocab)
    logp = np.log(counts + 1.0) - math.log(float(counts.sum()) + vocab)
    val = load_tokens(directory, "val", vocab_size=vocab)
    if val.size < 2:
        raise ValueError(f"{directory}: val split has {val.size} tokens, need at least 2")
    nats = -float(np.sum(logp[val[1:].astype(np.int64)], dtype=np.float64))
    nbytes = target_bytes(val, tok.byte_luts())
    return nats / math.log(2.0) / nbytes


# -- docs --------------------------------------------------------------------------------------------
def iter_docs(path: str | Path) -> Iterator[dict[str, Any]]:
    """Records of a ``.jsonl`` or ``.jsonl.xz`` docs file (the ``text`` key is required)."""
    path = Path(path)
    opener: Callable[..., IO[str]] = lzma.open if path.suffix == ".xz" else open  # type: ignore[assignment]
    with opener(path, "rt", encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                rec["text"]
            except (json.JSONDecodeError, KeyError, TypeError):
                raise ValueError(f"{path}:{n}: expected a JSON object with a \"text\" field") from None
            yield rec


def _batches(path: Path) -> Iterator[list[str]]:
    batch: list[str] = []
    size = 0
    for rec in iter_docs(path):
        batch.append(rec["text"])
        size += len(rec["text"])
        if size >= BATCH_CHARS:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


def _docs(corpus: str, root: str | Path, docs_dir: str | Path | None, log: Callable[[str], Any]) -> Path:
    if docs_dir is not None:
        path = Path(docs_dir)
        if not path.is_dir():
            raise FileNotFoundError(f"docs_dir {path} does not exist")
        return path
    path = Path(root) / f"{corpus}_docs"
    if corpus == "fineweb":
        if not path.is_dir():
            raise FileNotFoundError(f"{path} is missing: fetch it with download_fineweb(..., with_docs=True)")
        return path
    from pgolf.data.corpus import build_docs

    build_docs(corpus, path, log=log)
    return path


def _docs_file(docs_dir: Path, split: str) -> Path:
    for name in (f"{split}.jsonl", f"{split}.jsonl.xz"):
        if (docs_dir / name).is_file():
            return docs_dir / name
    raise FileNotFoundError(f"{docs_dir} has no {split}.jsonl or {split}.jsonl.xz")


# -- resume bookkeeping ---------------------------------------------------------------------------------
def _vocab_for(name: str) -> int:
    if name in TOKENIZERS:
        return TOKENIZERS[name]
    if name.startswith("sp") and name[2:].isdigit() and 0 < int(name[2:]) <= 2**16:
        return int(name[2:])
    raise ValueError(f"tokenizer {name!r} is not one of {', '.join(TOKENIZERS)} (or sp<N>)")


def _tokenizer_want(name: str, vocab: int, train_sha: str, tokenizer_path: str | Path | None) -> dict[str, Any]:
    if name == "byte260":
        return {"source": "byte260"}
    if tokenizer_path is not None:
        if not Path(tokenizer_path).is_file():
            raise FileNotFoundError(f"tokenizer_path {tokenizer_path} does not exist")
        return {"source": "given", "sha256": sha256_file(tokenizer_path)}
    args = sp_trainer_args(vocab)
    args.pop("num_threads")  # does not change the model
    return {"source": "trained", "train_docs_sha256": train_sha, "trainer_args": args}


def _shard_list_ok(out: Path, split: str, shards: list[dict[str, Any]]) -> bool:
    if not shards or [p.name for p in list_shards(out, split)] != [s["name"] for s in shards]:
        return False
    return all(sha256_file(out / s["name"]) == s["sha256"] for s in shards)


def _manifest_current(out: Path, manifest: dict[str, Any], docs_sha: dict[str, str], tok_want: dict[str, Any],
                      shard_tokens: int) -> bool:
    docs = manifest.get("docs") or {}
    if any((docs.get(s) or {}).get("sha256") != docs_sha[s] for s in ("train", "val")):
        return False
    tok = manifest.get("tokenizer") or {}
    if tok.get("source") != tok_want["source"] or manifest.get("shard_tokens") != shard_tokens:
        return False
    if tok_want["source"] == "trained" and tok.get("trainer_args") != tok_want["trainer_args"]:
        return False
    if tok_want["source"] != "byte260":
        model = out / "tokenizer.model"
        if not model.is_file() or sha256_file(model) != tok.get("model_sha256"):
            return False
        if tok_want["source"] == "given" and tok.get("model_sha256") != tok_want["sha256"]:
            return False
    return all(_shard_list_ok(out, s, (manifest.get("splits") or {}).get(s, {}).get("shards", []))
               for s in ("train", "val"))


def _copy(src: Path, dest: Path) -> None:
    with open(src, "rb") as fin, atomic_open(dest, "wb") as fout:
        shutil.copyfileobj(fin, fout, 1 << 22)
