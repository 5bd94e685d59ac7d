"""The real challenge data from the Hugging Face hub, laid out as a pgolf dataset folder.

    pgolf data fineweb --variant sp8192 --train-shards 80
    # == download_fineweb("sp8192", 80, "data")  ->  data/fineweb_sp8192/{fineweb_*.bin, tokenizer.model, manifest.json}

Manifest-driven like the official ``data/cached_challenge_fineweb.py``: ``datasets/manifest.json`` of the hub
dataset repo lists datasets ``fineweb10B_<variant>`` (``stats.files_train`` / ``stats.files_val``,
``tokenizer_name``) and tokenizers (``model_path`` / ``vocab_path`` / ``path``). All val shards and the first N
train shards are fetched. The repo is ``MATCHED_FINEWEB_REPO_ID`` or ``willdepueoai/parameter-golf``; sp4096 and
sp8192 come from ``kevclark/parameter-golf`` when the manifest lacks them (reference §2.2).

``with_docs=True`` also fetches ``datasets/docs_selected.jsonl`` with its ``docs_selected.source_manifest.json``,
checks ``docs_sha256`` and splits it into ``<out_root>/fineweb_docs/{train,val}.jsonl`` (val = the first
``docs_val`` docs, default 50,000), ready for ``build_dataset("fineweb", ..., docs_dir=...)`` retokenization.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path, PurePosixPath
from typing import Any, Callable

from huggingface_hub import hf_hub_download  # tests replace this module attribute with a local resolver

try:
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError
except ImportError:  # huggingface_hub < 0.23
    from huggingface_hub.utils import EntryNotFoundError, LocalEntryNotFoundError

from pgolf.data.shards import ShardError, list_shards, read_header, read_shard, shard_path
from pgolf.data.tokenizer import load_tokenizer, target_bytes
from pgolf.fileio import atomic_open, atomic_write_json, sha256_file

DEFAULT_REPO_ID = "willdepueoai/parameter-golf"
FALLBACK_REPOS = {"sp4096": "kevclark/parameter-golf", "sp8192": "kevclark/parameter-golf"}
REMOTE_ROOT = "datasets"
DOCS_FILENAME = "docs_selected.jsonl"
DOCS_SIDECAR = "docs_selected.source_manifest.json"
NUM_VAL_DOCS = 50_000
MANIFEST_FORMAT = "pgolf-dataset/1"


def default_repo_id() -> str:
    return os.environ.get("MATCHED_FINEWEB_REPO_ID") or DEFAULT_REPO_ID


def dataset_name(variant: str) -> str:
    if variant == "byte260" or (variant.startswith("sp") and variant[2:].isdigit()):
        return f"fineweb10B_{variant}"
    raise ValueError(f"unsupported fineweb variant {variant!r}; expected byte260 or sp<VOCAB_SIZE>")


def hub_file(repo_id: str, remote_path: str) -> Path:
    """Local path of ``remote_path`` (e.g. ``datasets/manifest.json``) from the hub dataset repo, via its cache."""
    remote = PurePosixPath(remote_path)
    try:
        local = hf_hub_download(repo_id=repo_id, filename=remote.name,
                                subfolder=str(remote.parent) if str(remote.parent) != "." else None,
                                repo_type="dataset")
    except LocalEntryNotFoundError as e:  # offline and not in the local cache
        raise FileNotFoundError(f"{remote_path} of hub dataset repo {repo_id}: hub unreachable and not cached") from e
    except (EntryNotFoundError, FileNotFoundError) as e:
        raise FileNotFoundError(f"{remote_path} not found in hub dataset repo {repo_id}") from e
    return Path(local).resolve(strict=True)


def _place(src: Path, dest: Path) -> None:
    """Hard-link (or copy) a hub cache blob to `dest` under a temporary name, then rename it into place."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f"{dest.name}.tmp-{os.getpid()}")
    tmp.unlink(missing_ok=True)
    try:
        os.link(src, tmp)
        os.replace(tmp, dest)
    except OSError:
        tmp.unlink(missing_ok=True)
        with open(src, "rb") as fin, atomic_open(dest, "wb") as fout:
            shutil.copyfileobj(fin, fout, 1 << 24)


def load_hub_manifest(repo_id: str) -> dict[str, Any]:
    path = hub_file(repo_id, f"{REMOTE_ROOT}/manifest.json")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{REMOTE_ROOT}/manifest.json of {repo_id} is not valid JSON ({e})") from e


def _find_dataset(variant: str, repo_id: str | None) -> tuple[str, dict, dict]:
    """(repo, hub manifest, dataset entry), falling back to the sp4096/sp8192 host when the manifest lacks it."""
    name = dataset_name(variant)
    repos = [repo_id or default_repo_id()]
    if variant in FALLBACK_REPOS and FALLBACK_REPOS[variant] not in repos:
        repos.append(FALLBACK_REPOS[variant])
    seen: list[str] = []
    for repo in repos:
        manifest = load_hub_manifest(repo)
        entry = next((d for d in manifest.get("datasets", []) if d.get("name") == name), None)
        if entry is not None:
            return repo, manifest, entry
        seen.append(f"{repo}: {', '.join(d.get('name', '?') for d in manifest.get('datasets', [])) or 'none'}")
    raise ValueError(f"dataset {name} not found in {REMOTE_ROOT}/manifest.json (available — {'; '.join(seen)})")


def download_fineweb(variant: str, train_shards: int, out_root: str | Path = "data", *, repo_id: str | None = None,
                     with_docs: bool = False, docs_val: int | None = None, log: Callable[[str], Any] = print
                     ) -> dict[str, Any]:
    """Fetch all val shards + the first `train_shards` train shards of `variant`; return the written manifest."""
    if train_shards < 0:
        raise ValueError(f"train_shards must be non-negative, got {train_shards}")
    name = dataset_name(variant)
    repo, hub_manifest, entry = _find_dataset(variant, repo_id)
    stats = entry.get("stats") or {}
    try:
        files_train, files_val = int(stats["files_train"]), int(stats["files_val"])
    except (KeyError, TypeError, ValueError):
        raise ValueError(f"dataset {name} in {repo} manifest has no stats.files_train/files_val: {stats}") from None
    if train_shards > files_train:
        raise ValueError(f"{variant} only has {files_train} training shards on {repo}, requested {train_shards}")
    tok_name = entry.get("tokenizer_name")
    tok_entry = next((t for t in hub_manifest.get("tokenizers", []) if t.get("name") == tok_name), None)
    if tok_entry is None:
        raise ValueError(f"tokenizer {tok_name!r} of dataset {name} not found in {repo} {REMOTE_ROOT}/manifest.json")
    vocab_size = int(entry.get("vocab_size") or tok_entry.get("vocab_size"))

    out = Path(out_root) / f"fineweb_{variant}"
    manifest_file = out / "manifest.json"
    request = {"repo_id": repo, "dataset": name, "train_shards": train_shards, "val_shards": files_val}
    if manifest_file.is_file():
        old = json.loads(manifest_file.read_text(encoding="utf-8"))
        if (old.get("source") or {}).get("request") == request and (not with_docs or old.get("docs")) \
                and _shards_match(out, old):
            log(f"{out}: up to date ({train_shards} train + {files_val} val shards)")
            return old
    manifest_file.unlink(missing_ok=True)  # from here on a partial state must not look complete

    # Tokenizer artifacts first: they are small, and byte LUTs need them.
    tokenizer_files = {}
    for key in ("model_path", "vocab_path", "path"):
        if tok_entry.get(key):
            remote = f"{REMOTE_ROOT}/{tok_entry[key]}"
            suffix = PurePosixPath(str(tok_entry[key])).suffix or ".bin"
            dest = out / f"tokenizer{suffix}"
            _place(hub_file(repo, remote), dest)
            tokenizer_files[key] = {"remote": remote, "file": dest.name, "sha256": sha256_file(dest)}
    if not tokenizer_files:
        raise ValueError(f"tokenizer entry {tok_name!r} in {repo} lists no model_path/vocab_path/path")
    tok = load_tokenizer(out / "tokenizer.model") if (out / "tokenizer.model").is_file() else load_tokenizer(variant)
    if tok.vocab_size > vocab_size:
        raise ValueError(f"{out}/tokenizer: {tok.vocab_size} ids but dataset {name} declares vocab_size {vocab_size}")

    for stale in list_shards(out, "train")[train_shards:]:
        log(f"removing {stale.name}: only {train_shards} train shards requested")
        stale.unlink()
    for split, count in (("val", files_val), ("train", train_shards)):
        for i in range(count):
            dest = shard_path(out, split, i)
            if dest.is_file():
                try:
                    read_header(dest)
                    continue
                except ShardError:
                    dest.unlink()
            _place(hub_file(repo, f"{REMOTE_ROOT}/datasets/{name}/{dest.name}"), dest)
            try:
                read_shard(dest, vocab_size=vocab_size)
            except ShardError:
                dest.unlink()
                raise
        log(f"{out}: {count} {split} shards")

    docs = download_fineweb_docs(out_root, repo_id=repo, docs_val=docs_val, log=log) if with_docs else None
    manifest = {
        "format": MANIFEST_FORMAT,
        "corpus": "fineweb",
        "variant": variant,
        "source": {"request": request, "hub_dataset": entry, "hub_tokenizer": tok_entry, "files": tokenizer_files},
        "tokenizer": {**tok.describe(), "name": variant, "files": {k: v["file"] for k, v in tokenizer_files.items()}},
        "splits": {split: split_summary(out, split, tok) for split in ("train", "val")},
    }
    if docs is not None:
        manifest["docs"] = {"dir": "../fineweb_docs", "manifest": docs}
    atomic_write_json(manifest_file, manifest)
    log(f"{out}: manifest written")
    return manifest


def split_summary(directory: Path, split: str, tok) -> dict[str, Any]:
    """Shard list with sha256, token and doc (BOS) counts; for val also LUT bytes and bytes/token."""
    shards, tokens, docs = [], 0, 0
    for f in list_shards(directory, split):
        arr = read_shard(f, vocab_size=None)
        shards.append({"name": f.name, "tokens": int(arr.size), "sha256": sha256_file(f)})
        tokens += int(arr.size)
        docs += int((arr == tok.bos_id).sum())
    out: dict[str, Any] = {"shards": shards, "tokens": tokens, "docs": docs}
    if split == "val" and tokens > 1:
        from pgolf.data.shards import load_tokens

        nbytes = target_bytes(load_tokens(directory, "val"), tok.byte_luts())
        out.update(bytes=nbytes, bytes_per_token=nbytes / (tokens - 1))
    return out


def _shards_match(directory: Path, manifest: dict[str, Any]) -> bool:
    for split, info in (manifest.get("splits") or {}).items():
        names = [s["name"] for s in info.get("shards", [])]
        if [p.name for p in list_shards(directory, split)] != names:
            return False
        for s in info["shards"]:
            if sha256_file(directory / s["name"]) != s["sha256"]:
                return False
    for f in ((manifest.get("source") or {}).get("files") or {}).values():
        path = directory / f["file"]
        if not path.is_file() or sha256_file(path) != f["sha256"]:
            return False
    return bool(manifest.get("splits"))


def download_fineweb_docs(out_root: str | Path = "data", *, repo_id: str | None = None, docs_val: int | None = None,
                          log: Callable[[str], Any] = print) -> dict[str, Any]:
    """``docs_selected.jsonl`` (sha256-checked) split into ``<out_root>/fineweb_docs/{train,val}.jsonl``."""
    repo = repo_id or default_repo_id()
    docs_path = hub_file(repo, f"{REMOTE_ROOT}/{DOCS_FILENAME}")
    sidecar_path = hub_file(repo, f"{REMOTE_ROOT}/{DOCS_SIDECAR}")
    sidecar = json.loads(sidecar_path.read_text(encoding="utf-8"))
    if not isinstance(sidecar, dict):
        raise ValueError(f"{DOCS_SIDECAR} of {repo} must be a JSON object")
    n_val = int(docs_val if docs_val is not None else sidecar.get("docs_val") or NUM_VAL_DOCS)

    out = Path(out_root) / "fineweb_docs"
    manifest_file = out / "docs_manifest.json"
    if manifest_file.is_file():
        old = json.loads(manifest_file.read_text(encoding="utf-8"))
        if old.get("source", {}).get("docs_sha256") == sidecar.get("docs_sha256") and old.get("docs_val") == n_val \
                and all((out / f"{s}.jsonl").is_file() and sha256_file(out / f"{s}.jsonl") == old["splits"][s]["sha256"]
                        for s in ("train", "val")):
            log(f"{out}: up to date")
            return old
    manifest_file.unlink(missing_ok=True)

    actual = sha256_file(docs_path)
    expected = sidecar.get("docs_sha256")
    if expected and actual != expected:
        raise ValueError(f"{DOCS_FILENAME} ({docs_path}) from {repo}: sha256 {actual} does not match "
                         f"docs_sha256 {expected} in {DOCS_SIDECAR}")
    counts = {"train": 0, "val": 0}
    nbytes = {"train": 0, "val": 0}
    with open(docs_path, "r", encoding="utf-8") as fin, atomic_open(out / "val.jsonl", "w") as fval, \
            atomic_open(out / "train.jsonl", "w") as ftrain:
        for i, line in enumerate(fin):
            text = json.loads(line)["text"]
            split = "val" if i < n_val else "train"
            (fval if split == "val" else ftrain).write(
                json.dumps({"text": text, "source": "fineweb", "id": f"fineweb-{i}"}, ensure_ascii=False) + "\n")
            counts[split] += 1
            nbytes[split] += len(text.encode("utf-8"))
    total = counts["train"] + counts["val"]
    if sidecar.get("num_docs") is not None and int(sidecar["num_docs"]) != total:
        raise ValueError(f"{DOCS_FILENAME} from {repo} has {total} docs but {DOCS_SIDECAR} says {sidecar['num_docs']}")
    if counts["val"] < n_val:
        raise ValueError(f"{DOCS_FILENAME} from {repo} has only {total} docs, fewer than docs_val={n_val}")
    manifest = {
        "corpus": "fineweb",
        "docs_val": n_val,
        "source": {"repo_id": repo, "file": f"{REMOTE_ROOT}/{DOCS_FILENAME}", "docs_sha256": actual,
                   "sidecar": sidecar},
        "splits": {s: {"file": f"{s}.jsonl", "docs": counts[s], "bytes": nbytes[s], "sha256": sha256_file(out / f"{s}.jsonl")}
                   for s in ("train", "val")},
    }
    atomic_write_json(manifest_file, manifest)
    log(f"{out}: {counts['val']} val + {counts['train']} train docs")
    return manifest
