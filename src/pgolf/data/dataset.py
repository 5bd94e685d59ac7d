"""An opened dataset folder (``pgolf data build`` output): train shards, val tokens, tokenizer, byte LUTs."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pgolf.config import DataConfig
from pgolf.data.shards import list_shards, load_tokens
from pgolf.data.tokenizer import Byte260Tokenizer, load_tokenizer


@dataclass
class Dataset:
    path: Path
    train_files: list[Path]
    val_tokens: np.ndarray
    tokenizer: object
    luts: tuple[np.ndarray, np.ndarray, np.ndarray]
    manifest: dict = field(default_factory=dict)

    @classmethod
    def open(cls, cfg: DataConfig, vocab_size: int) -> "Dataset":
        path = Path(cfg.dataset_dir)
        hint = f"build it with: pgolf data build --corpus {cfg.corpus} --tokenizer {cfg.tokenizer}"
        if not path.is_dir():
            raise FileNotFoundError(f"dataset folder {path} does not exist; {hint}")
        train_files = list_shards(path, "train")
        if not train_files:
            raise FileNotFoundError(f"no fineweb_train_*.bin shards in {path}; {hint}")
        if cfg.tokenizer == "byte260":
            tok = Byte260Tokenizer()
        else:
            model = path / "tokenizer.model"
            if not model.is_file():
                raise FileNotFoundError(f"tokenizer {model} is missing; {hint}")
            tok = load_tokenizer(model)
        if tok.vocab_size != vocab_size:
            raise ValueError(f"tokenizer in {path} has {tok.vocab_size} ids but model.vocab_size={vocab_size}")
        val = load_tokens(path, "val", vocab_size=vocab_size)
        manifest_path = path / "manifest.json"
        manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
        return cls(path, train_files, val, tok, tok.byte_luts(), manifest)

    def train_token_count(self) -> int:
        counts = self.manifest.get("splits", {}).get("train", {}).get("tokens")
        if counts:
            return int(counts)
        return sum((f.stat().st_size - 1024) // 2 for f in self.train_files)
