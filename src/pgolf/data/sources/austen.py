"""Jane Austen's six novels from Debian ``r-cran-janeaustenr`` (no R needed), one doc per chapter.

The package's ``data/Rdata.rdx`` (gzip) is an R-serialized index ``variables = list(emma = c(offset, length),
...)``; each ``Rdata.rdb[offset:offset+length]`` is a 4-byte big-endian size plus a zlib stream holding an
R-serialized character vector, one element per line of the book. ``read_r_xdr`` reads the subset of R's XDR
serialization format (R Internals, "Serialization Formats") these files use.
"""

from __future__ import annotations

import gzip
import re
import struct
import zlib
from typing import Any, Iterator

from pgolf.data.sources.fetch import Fetcher, SourceError

PKG = "r-cran-janeaustenr"
DATA = "usr/lib/R/site-library/janeaustenr/data"
NOVELS = ("sensesensibility", "prideprejudice", "mansfieldpark", "emma", "northangerabbey", "persuasion")
_CHAPTER = re.compile(r"^(CHAPTER|Chapter) [0-9IVXLC]+\.?\s*$")

# SEXP types used here (R Internals, "Serialization Formats")
NILVALUE, SYMSXP, LISTSXP, CHARSXP, LGLSXP, INTSXP, REALSXP, STRSXP, VECSXP = 254, 1, 2, 9, 10, 13, 14, 16, 19
REFSXP = 255
NA_INT = -(2**31)


class _Reader:
    def __init__(self, buf: bytes, what: str):
        self.b, self.i, self.what, self.refs = buf, 0, what, []

    def int(self) -> int:
        if self.i + 4 > len(self.b):
            raise SourceError(f"{self.what}: R serialization ends early at byte {self.i}")
        (v,) = struct.unpack_from(">i", self.b, self.i)
        self.i += 4
        return v

    def item(self) -> Any:
        flags = self.int()
        t, has_attr, has_tag = flags & 0xFF, bool(flags & (1 << 9)), bool(flags & (1 << 10))
        if t == NILVALUE:
            return None
        if t == REFSXP:
            return self.refs[(flags >> 8) - 1]
        if t == SYMSXP:
            name = self.item()
            self.refs.append(name)
            return name
        if t == CHARSXP:
            n = self.int()
            if n == -1:
                return None
            s = self.b[self.i:self.i + n].decode("utf-8", errors="replace")
            self.i += n
            return s
        if t == LISTSXP:  # pairlist: (attr) (tag) car cdr
            out = {}
            while True:
                if has_attr:
                    self.item()
                tag = self.item() if has_tag else None
                out[tag if tag is not None else len(out)] = self.item()
                nxt = self.int()
                if nxt & 0xFF != LISTSXP:
                    if nxt & 0xFF != NILVALUE:
                        raise SourceError(f"{self.what}: unsupported pairlist tail type {nxt & 0xFF}")
                    return out
                has_attr, has_tag = bool(nxt & (1 << 9)), bool(nxt & (1 << 10))
        if t in (STRSXP, VECSXP, INTSXP, LGLSXP, REALSXP):
            n = self.int()
            if t in (STRSXP, VECSXP):
                val: Any = [self.item() for _ in range(n)]
            elif t == REALSXP:
                val = list(struct.unpack_from(f">{n}d", self.b, self.i))
                self.i += 8 * n
            else:
                val = list(struct.unpack_from(f">{n}i", self.b, self.i))
                self.i += 4 * n
            if has_attr:
                attrs = self.item()
                names = attrs.get("names") if isinstance(attrs, dict) else None
                if names is not None:
                    val = dict(zip(names, val))
            return val
        raise SourceError(f"{self.what}: unsupported R object type {t} at byte {self.i - 4}")


def read_r_xdr(buf: bytes, what: str) -> Any:
    """Python value of one R XDR serialization (``X\\n`` header): vectors -> lists, named ones -> dicts."""
    if not buf.startswith(b"X\n"):
        raise SourceError(f"{what}: not an R XDR serialization (starts {buf[:2]!r})")
    r = _Reader(buf, what)
    r.i = 2
    version = r.int()
    r.int(), r.int()  # writer and minimal reader R versions
    if version == 3:
        n = r.int()
        r.i += n  # native encoding name
    elif version != 2:
        raise SourceError(f"{what}: R serialization version {version} not supported")
    return r.item()


def novels(rdx: bytes, rdb: bytes) -> dict[str, list[str]]:
    """Lines of each novel, keyed by R variable name, from the Rdata.rdx/.rdb pair."""
    index = read_r_xdr(gzip.decompress(rdx), "Rdata.rdx")
    try:
        variables = index["variables"]
    except (TypeError, KeyError) as e:
        raise SourceError("Rdata.rdx: no 'variables' index") from e
    out = {}
    for name, (offset, length) in variables.items():
        blob = rdb[offset:offset + length]
        if len(blob) != length or length < 4:
            raise SourceError(f"Rdata.rdb: record {name!r} at {offset}+{length} is out of range")
        raw = zlib.decompress(blob[4:])
        if len(raw) != struct.unpack(">I", blob[:4])[0]:
            raise SourceError(f"Rdata.rdb: record {name!r} has the wrong uncompressed size")
        lines = read_r_xdr(raw, f"Rdata.rdb[{name}]")
        if not isinstance(lines, list) or not all(s is None or isinstance(s, str) for s in lines):
            raise SourceError(f"Rdata.rdb: record {name!r} is not a character vector")
        out[name] = ["" if s is None else s for s in lines]
    return out


def chapters(lines: list[str]) -> list[str]:
    """Split a novel's lines at ``CHAPTER n`` headings; front matter (title, volume) leads chapter 1."""
    parts: list[list[str]] = [[]]
    seen_heading = False
    for line in lines:
        if _CHAPTER.match(line.strip()):
            if seen_heading:
                parts.append([])
            seen_heading = True
        parts[-1].append(line)
    return [text for p in parts if (text := "\n".join(p).strip())]


def docs(f: Fetcher) -> tuple[list[dict], Iterator[tuple[str, str]]]:
    root, rec = f.deb(PKG)
    try:
        books = novels((root / DATA / "Rdata.rdx").read_bytes(), (root / DATA / "Rdata.rdb").read_bytes())
    except OSError as e:
        raise SourceError(f"{PKG}: cannot read {DATA}/Rdata.rdx or Rdata.rdb: {e}") from e
    if set(books) != set(NOVELS):
        raise SourceError(f"{PKG}: Rdata holds {sorted(books)}, expected {sorted(NOVELS)}")
    out = [(f"{name}/{k:03d}", text) for name in NOVELS for k, text in enumerate(chapters(books[name]))]
    return [rec], iter(out)
