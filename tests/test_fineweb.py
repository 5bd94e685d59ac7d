"""download_fineweb against a local directory laid out like the hub dataset repo (no network)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

import pgolf.data.fineweb as fw
from pgolf.data.shards import ShardError, list_shards, read_shard, write_shard
from pgolf.data.tokenizer import SentencePieceTokenizer, train_sentencepiece

TEXT = ("The quick brown fox jumps over the lazy dog. " * 20 + "Numbers 12345 and words, words, words.\n") * 10


def _hub(root: Path, model: Path, datasets: dict[str, tuple[int, int]]) -> Path:
    """Write ``datasets/manifest.json``, the tokenizer and shards like the official hub repo."""
    tok = SentencePieceTokenizer(model)
    ids = np.array([1] + tok.encode(TEXT))
    manifest = {"datasets": [], "tokenizers": [{"name": "sp_bpe_1024", "kind": "sentencepiece_bpe", "vocab_size": 1024,
                                                "model_path": "tokenizers/fineweb_1024_bpe.model",
                                                "vocab_path": "tokenizers/fineweb_1024_bpe.vocab"}]}
    (root / "datasets/tokenizers").mkdir(parents=True)
    (root / "datasets/tokenizers/fineweb_1024_bpe.model").write_bytes(model.read_bytes())
    (root / "datasets/tokenizers/fineweb_1024_bpe.vocab").write_bytes(model.with_suffix(".vocab").read_bytes())
    for name, (n_train, n_val) in datasets.items():
        d = root / "datasets/datasets" / name
        d.mkdir(parents=True)
        for i in range(n_val):
            write_shard(d / f"fineweb_val_{i:06d}.bin", np.concatenate([ids, ids[: 10 + i]]))
        for i in range(n_train):
            write_shard(d / f"fineweb_train_{i:06d}.bin", np.roll(ids, i))
        manifest["datasets"].append({"name": name, "tokenizer_name": "sp_bpe_1024", "vocab_size": 1024,
                                     "stats": {"files_train": n_train, "files_val": n_val}})
    (root / "datasets/manifest.json").write_text(json.dumps(manifest))
    return root


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return train_sentencepiece([TEXT], 300, tmp_path_factory.mktemp("tok") / "m", num_threads=1)


@pytest.fixture()
def hub(tmp_path, model, monkeypatch):
    repos = {
        "willdepueoai/parameter-golf": _hub(tmp_path / "hub_main", model, {"fineweb10B_sp1024": (3, 2)}),
        "kevclark/parameter-golf": _hub(tmp_path / "hub_kev", model, {"fineweb10B_sp8192": (2, 1)}),
    }
    calls: list[tuple[str, str]] = []

    def fake_download(repo_id, filename, *, subfolder=None, repo_type=None, **kwargs):
        assert repo_type == "dataset"
        path = repos[repo_id] / (subfolder or "") / filename
        calls.append((repo_id, f"{subfolder}/{filename}"))
        if not path.is_file():
            raise FileNotFoundError(path)
        return str(path)

    monkeypatch.setattr(fw, "hf_hub_download", fake_download)
    monkeypatch.delenv("MATCHED_FINEWEB_REPO_ID", raising=False)
    return repos, calls


def test_happy_path_layout_and_resume(tmp_path, hub):
    repos, calls = hub
    m = fw.download_fineweb("sp1024", 2, tmp_path / "data", log=lambda s: None)
    out = tmp_path / "data" / "fineweb_sp1024"
    assert [p.name for p in list_shards(out, "train")] == ["fineweb_train_000000.bin", "fineweb_train_000001.bin"]
    assert [p.name for p in list_shards(out, "val")] == ["fineweb_val_000000.bin", "fineweb_val_000001.bin"]
    assert (out / "tokenizer.model").read_bytes() == (repos["willdepueoai/parameter-golf"]
                                                      / "datasets/tokenizers/fineweb_1024_bpe.model").read_bytes()
    assert json.loads((out / "manifest.json").read_text()) == m
    src = repos["willdepueoai/parameter-golf"] / "datasets/datasets/fineweb10B_sp1024"
    for split in ("train", "val"):
        for s in m["splits"][split]["shards"]:
            assert s["sha256"] == hashlib.sha256((src / s["name"]).read_bytes()).hexdigest()
            read_shard(out / s["name"], vocab_size=1024)
    assert m["splits"]["val"]["docs"] == 4 and m["splits"]["train"]["docs"] == 2
    assert m["tokenizer"]["name"] == "sp1024" and 1.0 < m["splits"]["val"]["bytes_per_token"] < 3.0
    assert ("willdepueoai/parameter-golf", "datasets/manifest.json") in calls
    # Second call: everything verified, nothing downloaded but the hub manifest.
    calls.clear()
    assert fw.download_fineweb("sp1024", 2, tmp_path / "data", log=lambda s: None) == m
    assert calls == [("willdepueoai/parameter-golf", "datasets/manifest.json")]
    # Fewer shards: the extra train shard is removed so the folder matches its manifest.
    m1 = fw.download_fineweb("sp1024", 1, tmp_path / "data", log=lambda s: None)
    assert [s["name"] for s in m1["splits"]["train"]["shards"]] == ["fineweb_train_000000.bin"]
    assert len(list_shards(out, "train")) == 1


def test_too_many_shards(tmp_path, hub):
    with pytest.raises(ValueError, match="sp1024 only has 3 training shards on willdepueoai/parameter-golf, requested 4"):
        fw.download_fineweb("sp1024", 4, tmp_path, log=lambda s: None)
    with pytest.raises(ValueError, match="non-negative"):
        fw.download_fineweb("sp1024", -1, tmp_path, log=lambda s: None)
    assert not (tmp_path / "fineweb_sp1024" / "manifest.json").exists()


def test_sp8192_falls_back_to_second_host_and_env_repo(tmp_path, hub, monkeypatch):
    m = fw.download_fineweb("sp8192", 1, tmp_path, log=lambda s: None)
    assert m["source"]["request"]["repo_id"] == "kevclark/parameter-golf"
    assert len(list_shards(tmp_path / "fineweb_sp8192", "val")) == 1
    with pytest.raises(ValueError, match="fineweb10B_sp4096 not found"):
        fw.download_fineweb("sp4096", 1, tmp_path, log=lambda s: None)
    monkeypatch.setenv("MATCHED_FINEWEB_REPO_ID", "kevclark/parameter-golf")
    with pytest.raises(ValueError, match="fineweb10B_sp1024 not found.*kevclark"):
        fw.download_fineweb("sp1024", 1, tmp_path, log=lambda s: None)


def test_corrupt_hub_shard_is_rejected(tmp_path, hub):
    repos, _ = hub
    bad = repos["willdepueoai/parameter-golf"] / "datasets/datasets/fineweb10B_sp1024/fineweb_train_000001.bin"
    raw = bytearray(bad.read_bytes())
    raw[0] ^= 1
    bad.write_bytes(bytes(raw))
    with pytest.raises(ShardError, match="fineweb_train_000001.bin.*bad magic"):
        fw.download_fineweb("sp1024", 2, tmp_path, log=lambda s: None)
    out = tmp_path / "fineweb_sp1024"
    assert not (out / "manifest.json").exists() and not (out / "fineweb_train_000001.bin").exists()


def _docs(hub_root: Path, n: int, sha: str | None = None) -> list[str]:
    texts = [f"document number {i} " + "word " * i for i in range(n)]
    data = "".join(json.dumps({"text": t}) + "\n" for t in texts).encode()
    (hub_root / "datasets/docs_selected.jsonl").write_bytes(data)
    (hub_root / "datasets/docs_selected.source_manifest.json").write_text(json.dumps(
        {"num_docs": n, "docs_val": 3, "docs_sha256": sha or hashlib.sha256(data).hexdigest(), "shuffle_seed": 1}))
    return texts


def test_docs_route(tmp_path, hub):
    repos, _ = hub
    texts = _docs(repos["willdepueoai/parameter-golf"], 10)
    m = fw.download_fineweb("sp1024", 1, tmp_path, with_docs=True, log=lambda s: None)
    docs = tmp_path / "fineweb_docs"
    val = [json.loads(line) for line in (docs / "val.jsonl").read_text().splitlines()]
    train = [json.loads(line) for line in (docs / "train.jsonl").read_text().splitlines()]
    assert [d["text"] for d in val] == texts[:3] and [d["text"] for d in train] == texts[3:]
    assert val[0]["source"] == "fineweb" and m["docs"]["manifest"]["splits"]["train"]["docs"] == 7
    m2 = fw.download_fineweb_docs(tmp_path, docs_val=5, log=lambda s: None)
    assert m2["splits"]["val"]["docs"] == 5


def test_docs_sha_mismatch(tmp_path, hub):
    repos, _ = hub
    _docs(repos["willdepueoai/parameter-golf"], 6, sha="0" * 64)
    with pytest.raises(ValueError, match=r"docs_selected\.jsonl .*sha256 [0-9a-f]{64} does not match docs_sha256 0{64}"):
        fw.download_fineweb_docs(tmp_path, log=lambda s: None)
    assert not (tmp_path / "fineweb_docs" / "docs_manifest.json").exists()
    assert not (tmp_path / "fineweb_docs" / "train.jsonl").exists()


def test_missing_hub_file_is_named(tmp_path, hub):
    repos, _ = hub
    (repos["willdepueoai/parameter-golf"] / "datasets/tokenizers/fineweb_1024_bpe.vocab").unlink()
    with pytest.raises(FileNotFoundError, match="datasets/tokenizers/fineweb_1024_bpe.vocab not found in hub dataset "
                                                "repo willdepueoai/parameter-golf"):
        fw.download_fineweb("sp1024", 1, tmp_path, log=lambda s: None)
    with pytest.raises(ValueError, match="unsupported fineweb variant"):
        fw.download_fineweb("gpt2", 1, tmp_path, log=lambda s: None)
