"""SWORD modules exported with ``mod2imp``: Spurgeon's Treasury of David (one doc per psalm, 0 = preface) and the
World English Bible (one doc per chapter; a book's short heading, key ``Book 0:0``, leads chapter 1).

    text = osis_to_text(osis_xml_fragment)   # notes dropped, block tags -> newlines, other tags stripped

IMP format: a key line ``$$$Psalms 23:1`` followed by that entry's OSIS body.
"""

from __future__ import annotations

import os
import re
import subprocess
from html import unescape
from typing import Iterator

from pgolf.data.sources.fetch import Fetcher, SourceError

MODULES = {  # source name -> (Debian package, SWORD module name)
    "tdavid": ("sword-comm-tdavid", "TDavid"),
    "web": ("sword-text-web", "engWEB2015eb"),
}

_NOTE = re.compile(r"<note\b[^>]*/>|<note\b[^>]*>.*?</note\s*>", re.DOTALL)
_BREAK = re.compile(r"</?(?:div|l|lg|lb|p|title|chapter|item|list|head)\b[^>]*>")
_MILESTONE_DIV = re.compile(r"<div\b[^>]*type=\"x-milestone\"[^>]*/>")
_TAG = re.compile(r"<[^>]*>")
_NOTE_GAP = re.compile("\x02+(?=[\\s,.;:!?\u2019\u201d)\\]'\"\x02]|$)")
MIN_OWN_INTRO = 1000  # chars: a book's chapter-0 text shorter than this leads chapter 1
_KEY = re.compile(r"^(.+?) (\d+):(\d+)$")


def osis_to_text(osis: str) -> str:
    """Plain text of an OSIS fragment: paragraph, line, title and chapter tags become line breaks."""
    s = _NOTE.sub("\x02", osis)  # a dropped note may stand where a space was: "God<note/><w>created"
    s = _MILESTONE_DIV.sub("", s)
    s = _BREAK.sub("\n", s)
    s = unescape(_TAG.sub("", s))
    s = _NOTE_GAP.sub("", s).replace("\x02", " ")
    lines = (" ".join(line.split()) for line in s.split("\n"))
    return "\n".join(line for line in lines if line)


def parse_imp(imp: str) -> Iterator[tuple[str, str]]:
    """(key, body) pairs of a mod2imp export, in file order."""
    key, body = None, []
    for line in imp.split("\n"):
        if line.startswith("$$$"):
            if key is not None:
                yield key, "\n".join(body)
            key, body = line[3:].strip(), []
        elif key is not None:
            body.append(line)
    if key is not None:
        yield key, "\n".join(body)


def group_chapters(entries: Iterator[tuple[str, str]]) -> list[tuple[str, str]]:
    """Join entries into one doc per ``Book chapter``; ``[ ... ]`` module headings are skipped and a book's
    chapter 0 (title, introduction) is a doc of its own when long, else it leads chapter 1."""
    order: list[tuple[str, int]] = []
    parts: dict[tuple[str, int], list[str]] = {}
    for key, body in entries:
        if key.startswith("["):
            continue
        m = _KEY.match(key)
        if m is None:
            raise SourceError(f"mod2imp key {key!r} is not 'Book chapter:verse'")
        ch = (m.group(1), int(m.group(2)))
        if ch not in parts:
            order.append(ch)
            parts[ch] = []
        parts[ch].append(body)
    out, lead = [], {}
    for book, c in order:
        text = osis_to_text(" ".join(parts[(book, c)]))
        if c == 0 and len(text) < MIN_OWN_INTRO and (book, 1) in parts:
            lead[book] = text  # a short heading: put it in front of chapter 1
            continue
        if c == 1 and lead.get(book):
            text = lead[book] + "\n" + text
        if text:
            out.append((f"{book} {c}", text))
    return out


def docs(f: Fetcher, source: str) -> tuple[list[dict], Iterator[tuple[str, str]]]:
    pkg, module = MODULES[source]
    root, rec = f.deb(pkg)
    exe, tool_rec = f.tool("mod2imp", apt_pkg="libsword-utils")
    sword_path = root / "usr" / "share" / "sword"
    if not (sword_path / "mods.d").is_dir():
        raise SourceError(f"{pkg}: {sword_path}/mods.d missing in the extracted package")
    env = {**os.environ, "SWORD_PATH": str(sword_path)}
    p = subprocess.run([exe, module], env=env, capture_output=True)
    imp = p.stdout.decode("utf-8", errors="replace")
    if p.returncode != 0 or "$$$" not in imp:
        raise SourceError(f"{pkg}: `SWORD_PATH={sword_path} mod2imp {module}` failed (exit {p.returncode}): "
                          f"{p.stderr.decode(errors='replace').strip()[-500:]}")
    chapters = group_chapters(parse_imp(imp))
    if not chapters:
        raise SourceError(f"{pkg}: mod2imp {module} produced no text")
    return [rec, tool_rec], iter(chapters)
