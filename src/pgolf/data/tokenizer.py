"""Tokenizers (SentencePiece BPE as in the challenge, and the pure-byte ``byte260``) and their BPB byte tables.

    from pgolf.data.tokenizer import load_tokenizer
    tok = load_tokenizer("data/demo_sp1024/tokenizer.model")     # or "byte260", or a dataset folder
    base_bytes, has_leading_space, is_boundary = tok.byte_luts()

Byte count of a scored target ``y_t`` with previous token ``x_{t-1}`` (``build_sentencepiece_luts`` /
``eval_val`` of the official ``train_gpt.py``; reference §2.4)::

    bytes_t = base_bytes[y_t] + (has_leading_space[y_t] and not is_boundary[x_{t-1}])

Control/unknown/unused ids are boundaries with 0 bytes, byte-fallback pieces count 1 byte, any other piece
counts the UTF-8 bytes of its text without a leading ``▁``, which counts 1 byte unless it follows a boundary.
"""

from __future__ import annotations

import abc
import json
import os
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from pgolf.fileio import sha256_file

# Trainer arguments fixed in the official builder (build_sentencepiece_tokenizer in
# data/download_hf_docs_and_tokenize.py of openai/parameter-golf); reference §2.3.
SP_TRAINER_ARGS: dict[str, Any] = {
    "model_type": "bpe",
    "character_coverage": 0.999,
    "byte_fallback": True,
    "split_digits": True,
    "normalization_rule_name": "nmt_nfkc",
    "add_dummy_prefix": False,
    "pad_id": 0,
    "bos_id": 1,
    "eos_id": 2,
    "unk_id": 3,
    "hard_vocab_limit": False,
}
MAX_SENTENCE_BYTES = 4192  # SentencePiece's default max_sentence_length; longer sentences are silently skipped
INPUT_SENTENCE_SIZE = 4_000_000  # reservoir-sample cap on training sentences for big corpora (shuffled)


def sp_trainer_args(vocab_size: int, *, num_threads: int | None = None,
                    input_sentence_size: int = INPUT_SENTENCE_SIZE, overrides: dict[str, Any] | None = None) -> dict:
    """Every trainer argument `train_sentencepiece` passes (minus the iterator and prefix); recorded in manifests."""
    args = dict(SP_TRAINER_ARGS)
    args.update(
        vocab_size=int(vocab_size),
        input_sentence_size=int(input_sentence_size),
        shuffle_input_sentence=True,
        max_sentence_length=MAX_SENTENCE_BYTES,
        num_threads=int(num_threads or os.cpu_count() or 1),
    )
    args.update(overrides or {})
    return args


def training_sentences(texts: Iterable[str], max_bytes: int = MAX_SENTENCE_BYTES) -> Iterable[str]:
    """Official text clean-up (``\\x00`` -> space, strip, skip empty) and splitting of long documents.

    SentencePiece drops any sentence over ``max_sentence_length`` bytes, which would silently discard every
    long document (all of ``sotu``). Long documents are therefore cut at line breaks, and lines that are
    still too long at the last space before the limit. BPE pieces never cross whitespace
    (``split_by_whitespace``) and nmt_nfkc turns line breaks into spaces, so the merge statistics are the
    same as for the whole document.
    """
    for text in texts:
        text = text.replace("\x00", " ").strip()
        if not text:
            continue
        if len(text.encode("utf-8")) <= max_bytes:
            yield text
            continue
        for line in text.splitlines():
            line = line.strip()
            while len(line.encode("utf-8")) > max_bytes:
                head = line.encode("utf-8")[:max_bytes].decode("utf-8", "ignore")
                cut = head.rfind(" ")
                cut = cut if cut > 0 else len(head)
                piece, line = line[:cut].strip(), line[cut:].strip()
                if piece:
                    yield piece
            if line:
                yield line


def train_sentencepiece(texts: Iterable[str], vocab_size: int, model_prefix: str | Path, *,
                        num_threads: int | None = None, input_sentence_size: int = INPUT_SENTENCE_SIZE,
                        overrides: dict[str, Any] | None = None, seed: int = 0, quiet: bool = True) -> Path:
    """Train a SentencePiece BPE model with the official arguments; return ``<model_prefix>.model``.

    `texts` must be training documents only (never validation text). Writes ``.model`` and ``.vocab``
    through a temporary prefix, renaming the model last, so a present ``.model`` is always complete.
    `seed` fixes SentencePiece's sampler, so the capped, shuffled sentence sample is reproducible.
    """
    import sentencepiece as spm

    prefix = Path(model_prefix)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    tmp_prefix = prefix.with_name(f"{prefix.name}.tmp-{os.getpid()}")
    args = sp_trainer_args(vocab_size, num_threads=num_threads, input_sentence_size=input_sentence_size,
                           overrides=overrides)
    counter = {"n": 0}

    def sentences() -> Iterable[str]:
        for s in training_sentences(texts, int(args["max_sentence_length"])):
            counter["n"] += 1
            yield s

    spm.set_random_generator_seed(int(seed))
    try:
        spm.SentencePieceTrainer.train(sentence_iterator=iter(sentences()), model_prefix=str(tmp_prefix),
                                       minloglevel=2 if quiet else 0, **args)
        os.replace(f"{tmp_prefix}.vocab", f"{prefix}.vocab")
        os.replace(f"{tmp_prefix}.model", f"{prefix}.model")
    except RuntimeError as e:
        if counter["n"] == 0:
            raise ValueError(f"no training text for tokenizer {prefix}: every document was empty") from e
        raise RuntimeError(f"SentencePiece training for {prefix} failed: {e}") from e
    finally:
        for suffix in (".model", ".vocab"):
            Path(f"{tmp_prefix}{suffix}").unlink(missing_ok=True)
    return Path(f"{prefix}.model")


class Tokenizer(abc.ABC):
    """What the data layer and the evaluator need from a tokenizer."""

    name: str
    kind: str
    vocab_size: int
    bos_id: int
    eos_id: int
    pad_id: int
    unk_id: int

    @abc.abstractmethod
    def encode(self, text: str) -> list[int]: ...

    @abc.abstractmethod
    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]: ...

    @abc.abstractmethod
    def decode(self, ids: Sequence[int]) -> str: ...

    @abc.abstractmethod
    def _luts(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]: ...

    def encode_arrays(self, texts: Sequence[str]) -> list[np.ndarray]:
        """`encode_batch` as int32 arrays (what the shard builder consumes)."""
        return [np.asarray(ids, dtype=np.int32) for ids in self.encode_batch(texts)]

    def byte_luts(self, table_size: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(base_bytes int16[V], has_leading_space bool[V], is_boundary bool[V])``.

        ``V = max(vocab_size, table_size)``: ids past the tokenizer's vocabulary (a model embedding
        larger than a SentencePiece model that stopped short under ``hard_vocab_limit=False``) are
        boundaries with 0 bytes, as in the official table.
        """
        base, space, boundary = self._luts()
        size = max(self.vocab_size, int(table_size or 0))
        if size > base.size:
            base = np.concatenate([base, np.zeros(size - base.size, np.int16)])
            space = np.concatenate([space, np.zeros(size - space.size, np.bool_)])
            boundary = np.concatenate([boundary, np.ones(size - boundary.size, np.bool_)])
        return base, space, boundary

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "vocab_size": self.vocab_size, "bos_id": self.bos_id,
                "eos_id": self.eos_id, "pad_id": self.pad_id, "unk_id": self.unk_id}


class SentencePieceTokenizer(Tokenizer):
    kind = "sentencepiece"

    def __init__(self, model_path: str | Path, *, name: str | None = None, num_threads: int | None = None):
        import sentencepiece as spm

        self.model_path = Path(model_path)
        if not self.model_path.is_file():
            raise FileNotFoundError(f"SentencePiece model not found: {self.model_path}")
        try:
            self.sp = spm.SentencePieceProcessor(model_file=str(self.model_path))
        except (OSError, RuntimeError) as e:
            raise ValueError(f"{self.model_path}: not a loadable SentencePiece model ({e})") from e
        self.vocab_size = int(self.sp.vocab_size())
        self.bos_id, self.eos_id = int(self.sp.bos_id()), int(self.sp.eos_id())
        self.pad_id, self.unk_id = int(self.sp.pad_id()), int(self.sp.unk_id())
        self.name = name or f"sp{self.vocab_size}"
        self.num_threads = int(num_threads or os.cpu_count() or 1)

    def encode(self, text: str) -> list[int]:
        return self.sp.encode(text, out_type=int)

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return self.sp.encode(list(texts), out_type=int, num_threads=self.num_threads)

    def decode(self, ids: Sequence[int]) -> str:
        return self.sp.decode([int(i) for i in ids])

    def normalize(self, text: str) -> str:
        """The text SentencePiece actually encodes (nmt_nfkc, whitespace collapsed), with plain spaces."""
        return self.sp.normalize(text).replace("\u2581", " ")

    def _luts(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        sp, n = self.sp, self.vocab_size
        base = np.zeros(n, dtype=np.int16)
        space = np.zeros(n, dtype=np.bool_)
        boundary = np.ones(n, dtype=np.bool_)
        for i in range(n):
            if sp.is_control(i) or sp.is_unknown(i) or sp.is_unused(i):
                continue
            boundary[i] = False
            if sp.is_byte(i):
                base[i] = 1
                continue
            piece = sp.id_to_piece(i)
            if piece.startswith("\u2581"):
                space[i] = True
                piece = piece[1:]
            base[i] = len(piece.encode("utf-8"))
        return base, space, boundary

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "model_sha256": sha256_file(self.model_path)}


class Byte260Tokenizer(Tokenizer):
    """UTF-8 bytes shifted by 4: pad 0, bos 1, eos 2, unk 3, byte b -> id b + 4 (the official ``byte260``)."""

    kind = "byte"
    name = "byte260"
    vocab_size = 260
    pad_id, bos_id, eos_id, unk_id = 0, 1, 2, 3
    offset = 4

    def encode(self, text: str) -> list[int]:
        return self._encode_np(text).tolist()

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [self.encode(t) for t in texts]

    def encode_arrays(self, texts: Sequence[str]) -> list[np.ndarray]:
        return [self._encode_np(t) for t in texts]

    def _encode_np(self, text: str) -> np.ndarray:
        raw = np.frombuffer(text.encode("utf-8", errors="replace"), dtype=np.uint8)
        return raw.astype(np.int32) + self.offset

    def decode(self, ids: Sequence[int]) -> str:
        arr = np.asarray(ids, dtype=np.int64)
        arr = arr[arr >= self.offset] - self.offset
        return arr.astype(np.uint8).tobytes().decode("utf-8", errors="replace")

    def _luts(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        base = np.ones(self.vocab_size, dtype=np.int16)
        base[: self.offset] = 0
        boundary = np.zeros(self.vocab_size, dtype=np.bool_)
        boundary[: self.offset] = True
        return base, np.zeros(self.vocab_size, dtype=np.bool_), boundary


def target_bytes(tokens: np.ndarray, luts: tuple[np.ndarray, np.ndarray, np.ndarray], *,
                 chunk: int = 1 << 24) -> int:
    """Σ bytes_t over the targets ``tokens[1:]`` with previous tokens ``tokens[:-1]`` (the eval convention).

    BOS targets count 0 bytes; a leading ``▁`` right after a boundary token is not charged.
    """
    base, space, boundary = luts
    total = 0
    for start in range(1, len(tokens), chunk):
        y = np.asarray(tokens[start: start + chunk], dtype=np.int64)
        x = np.asarray(tokens[start - 1: start - 1 + y.size], dtype=np.int64)
        total += int(base[y].sum(dtype=np.int64)) + int((space[y] & ~boundary[x]).sum())
    return total


def load_tokenizer(path_or_name: str | Path) -> Tokenizer:
    """``"byte260"``, a ``.model`` file, the official pure-byte ``.json``, or a dataset folder."""
    text = str(path_or_name)
    if text in ("byte260", "pure_byte", "pure_byte_260"):
        return Byte260Tokenizer()
    path = Path(path_or_name)
    if path.is_dir():
        if (path / "tokenizer.model").is_file():
            return SentencePieceTokenizer(path / "tokenizer.model", name=_manifest_name(path))
        manifest = path / "manifest.json"
        if manifest.is_file():
            kind = (json.loads(manifest.read_text(encoding="utf-8")).get("tokenizer") or {}).get("kind")
            if kind == "byte":
                return Byte260Tokenizer()
        raise FileNotFoundError(f"{path}: no tokenizer.model and no manifest.json naming a byte tokenizer")
    if path.suffix == ".json" and path.is_file():
        payload = json.loads(path.read_text(encoding="utf-8"))
        if payload.get("tokenizer_type") == "pure_byte" and int(payload.get("vocab_size", 260)) == 260:
            return Byte260Tokenizer()
        raise ValueError(f"{path}: not a pure_byte tokenizer description with vocab_size 260")
    if path.is_file():
        return SentencePieceTokenizer(path)
    if text.startswith("sp") and text[2:].isdigit():
        raise FileNotFoundError(f"tokenizer {text!r} needs a model file: pass the path to its .model")
    raise FileNotFoundError(f"tokenizer {text!r}: no such file, and not one of byte260/pure_byte")


def _manifest_name(dataset_dir: Path) -> str | None:
    manifest = dataset_dir / "manifest.json"
    if manifest.is_file():
        return (json.loads(manifest.read_text(encoding="utf-8")).get("tokenizer") or {}).get("name")
    return None
