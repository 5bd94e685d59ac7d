"""Fortune cookies from Debian ``fortunes`` and its dependency ``fortunes-min``, one doc per cookie.

Cookie files live in ``usr/share/games/fortunes/``; ``*.dat`` indexes, the ``*.u8`` symlinks and ``ascii-art``
are skipped. Cookies are separated by lines holding a single ``%``. Doc ids are ``file:NNNN``.
"""

from __future__ import annotations

import re
from typing import Iterator

from pgolf.data.sources.fetch import Fetcher, SourceError

PKGS = ("fortunes", "fortunes-min")
SKIP = {"ascii-art"}
_SEP = re.compile(r"^%[ \t]*$", re.MULTILINE)
_OVERSTRIKE = re.compile(r"[^\n]\x08")


def decode(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def cookies(text: str) -> list[str]:
    """The cookies of one fortune file, trimmed, empties dropped; backspace overstrikes ("_\\bx") resolved."""
    text = _OVERSTRIKE.sub("", text.replace("\r\n", "\n"))
    return [c.strip() for c in _SEP.split(text) if c.strip()]


def docs(f: Fetcher) -> tuple[list[dict], Iterator[tuple[str, str]]]:
    recs, out = [], []
    for pkg in PKGS:
        root, rec = f.deb(pkg)
        recs.append(rec)
        d = root / "usr" / "share" / "games" / "fortunes"
        files = sorted(p for p in d.iterdir() if p.is_file() and not p.is_symlink()
                       and p.suffix != ".dat" and p.name not in SKIP) if d.is_dir() else []
        if not files:
            raise SourceError(f"{pkg}: no cookie files under {d}")
        for p in files:
            for k, c in enumerate(cookies(decode(p.read_bytes()))):
                out.append((f"{pkg}/{p.name}:{k:04d}", c))
    return recs, iter(out)
