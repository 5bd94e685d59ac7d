"""GCIDE dictionary (Debian ``dict-gcide``: 1913 Webster + WordNet 1.5 + additions) as readable entries,
grouped into docs of consecutive entries (a new doc at each new initial letter or past ~``DOC_CHARS``).

    text = gcide_entry_to_text(entry)   # "Calorie, n. [F., fr. L. calor heat.] (Physics) The unit of heat ..."

Entries come from ``gcide.index`` (headword, base64 offset, base64 length into the gzip-compatible
``gcide.dict.dz``); each distinct (offset, length) is one entry; the ``00-database-*`` entries are skipped.
Markup stripped: the ``\\Cal"o*rie\\`` headword spelling and the pronunciation that follows it, ``{cross refs}``
braces, source tags (``[1913 Webster]``, ``[WordNet 1.5 +PJC]``), and the ``[=a]``/``['e]``/``[ae]``
character codes (turned into Unicode). Wrapped lines are rejoined; paragraphs become lines.
"""

from __future__ import annotations

import gzip
import re
import unicodedata
from typing import Iterator

from pgolf.data.sources.fetch import Fetcher, SourceError

PKG = "dict-gcide"
DOC_CHARS = 64_000
_B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"

_MARKS = {"=": "\u0304", "-": "\u0304", ".": "\u0323", "'": "\u0301", "`": "\u0300", '"': "\u0308",
          "~": "\u0303", ",": "\u0327", "^": "\u0302", "*": "\u030a"}  # prefix mark -> combining char
_NAMED = {
    "ae": "æ", "AE": "Æ", "oe": "œ", "OE": "Œ", "eth": "ð", "thorn": "þ", "ng": "ŋ", "th": "θ", "yogh": "ȝ",
    "imac": "ī", "aum": "ä", "add": "a", "asl": "a", "udd": "u", "dsdot": "d", "zdot": "z", "lsdot": "l",
    "root": "√", "cuberoot": "∛", "deg": "°", "sect": "§", "para": "¶", "pounds": "£", "dagger": "†", "dag": "†",
    "middot": "·", "times": "×", "div": "÷", "divby": "÷", "rarr": "→", "nbsp": " ", "ldqo": "“", "rdqo": "”",
    "flat": "♭", "sharp": "♯", "natural": "♮", "prime": "′", "bprime": "″", "min": "′", "sec": "″", "break": "",
    "filig": "ﬁ", "ffllig": "ﬄ", "sigmat": "ς", "digamma": "ϝ", "asper": "ʽ", "hand": "☞", "bar": "|",
}
for _i, _g in enumerate("alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi rho "
                        "sigma tau upsilon phi chi psi omega".split()):
    _NAMED[_g] = "αβγδεζηθικλμνξοπρστυφχψω"[_i]
    _NAMED[_g.capitalize()] = "ΑΒΓΔΕΖΗΘΙΚΛΜΝΞΟΠΡΣΤΥΦΧΨΩ"[_i]

_HEADFORM = re.compile(r"[ \t]*\n?[ \t]*\\[^\\\n]{1,100}(?:\n[^\\\n]{1,100})?\\(\s*\([^()]{0,160}\))?")
_CHAR_CODE = re.compile(r"\[(?:([=\-.'`\"~,^*])([A-Za-z]{1,2})|([A-Za-z]{1,2})\^|([A-Za-z]{2,8}))\]")
_SOURCE_LINE = re.compile(
    r"[ \t]*\[\s*(?:(?:1913 Webster|Webster 1913 Suppl\.|WordNet(?: 1\.[5-7]| sense \d+)?|Century Dict\.(?: 1906)?|"
    r"PJC\.?|AS|RDH|RHUD|GG|RP|MW\d*|JBB|CB|NRSC)\s*\+?\s*)+\]")


def b64(s: str) -> int:
    v = 0
    for c in s:
        k = _B64.find(c)
        if k < 0:
            raise SourceError(f"gcide.index: bad base64 digit {c!r} in {s!r}")
        v = v * 64 + k
    return v


def _head_repl(m: re.Match) -> str:
    """Drop a ``\\Cal"o*rie\\`` spelling and a pronunciation right after it; keep a label like (Physics)."""
    paren = m.group(1)
    if paren:
        inner = paren.strip()[1:-1].strip()
        bare = re.sub(r"\[[^\]]*\]", "", inner)
        if not re.search(r"[*\"`]", bare) and (bare == inner or inner[:1].isupper()):
            return " " + paren.strip()
    return ""


def _char_repl(m: re.Match) -> str:
    mark, letters, breve, name = m.groups()
    if mark:
        return unicodedata.normalize("NFC", letters[0] + _MARKS[mark] + letters[1:])
    if breve:
        return unicodedata.normalize("NFC", breve[0] + "\u0306" + breve[1:])
    return _NAMED.get(name, m.group(0))


def gcide_entry_to_text(entry: str) -> str:
    s = _HEADFORM.sub(_head_repl, entry)
    s = _SOURCE_LINE.sub("", s)
    s = _CHAR_CODE.sub(_char_repl, s)
    s = _CHAR_CODE.sub(_char_repl, s)  # nested codes such as [A["e]ro-]
    s = s.replace("{", "").replace("}", "")
    paras = (" ".join(p.split()) for p in re.split(r"\n\s*\n", s))
    return "\n".join(p for p in paras if p)


def entries(index: str, data: bytes) -> list[tuple[str, str]]:
    """(headword, raw entry text) for each distinct entry in file order, database info entries skipped."""
    seen: dict[tuple[int, int], str] = {}
    for n, line in enumerate(index.splitlines(), 1):
        parts = line.split("\t")
        if len(parts) != 3:
            raise SourceError(f"gcide.index line {n}: expected 'headword<TAB>offset<TAB>length', got {line[:80]!r}")
        key = (b64(parts[1]), b64(parts[2]))
        if key[0] + key[1] > len(data):
            raise SourceError(f"gcide.index line {n}: entry {parts[0]!r} points past the end of gcide.dict.dz")
        if not parts[0].startswith("00-database") and key not in seen:
            seen[key] = parts[0]
    out = []
    for (off, length), head in sorted(seen.items()):
        raw = data[off:off + length]
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            text = raw.decode("cp1252", errors="replace")
        out.append((head, text))
    return out


def group(items: list[tuple[str, str]], doc_chars: int = DOC_CHARS) -> list[tuple[str, str]]:
    """Consecutive cleaned entries joined by blank lines; a new doc when the entry's initial ASCII letter
    changes or once a doc reaches doc_chars. Ids are ``<letter>.<NNN>`` (``#`` before the first letter)."""
    docs: list[tuple[str, str]] = []
    cur: list[str] = []
    size, letter, count = 0, "#", {}

    def flush() -> None:
        nonlocal cur, size
        if cur:
            k = count.get(letter, 0)
            count[letter] = k + 1
            docs.append((f"{letter}.{k:03d}", "\n\n".join(cur)))
        cur, size = [], 0

    for _head, raw in items:
        text = gcide_entry_to_text(raw)
        if not text:
            continue
        c = text[:1].upper()
        if "A" <= c <= "Z" and c != letter:
            flush()
            letter = c
        elif size >= doc_chars:
            flush()
        cur.append(text)
        size += len(text) + 2
    flush()
    return docs


def docs(f: Fetcher) -> tuple[list[dict], Iterator[tuple[str, str]]]:
    root, rec = f.deb(PKG)
    d = root / "usr" / "share" / "dictd"
    try:
        data = gzip.decompress((d / "gcide.dict.dz").read_bytes())
        index = (d / "gcide.index").read_text(encoding="utf-8")
    except (OSError, EOFError, UnicodeDecodeError) as e:
        raise SourceError(f"{PKG}: cannot read {d}/gcide.dict.dz or gcide.index: {e}") from e
    return [rec], iter(group(entries(index, data)))
