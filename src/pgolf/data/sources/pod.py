"""Perl documentation from Debian ``perl-doc`` (``usr/share/perl/<ver>/pod/*.pod``), one doc per file.

    text = pod_to_text(pod)   # directives and formatting codes removed, verbatim blocks kept

Per perlpodspec: ``=head1 NAME`` -> ``NAME``; ``=item *`` -> ``* `` before its paragraph; ``=item text`` ->
``text``; ``=over``, ``=back``, ``=cut``, ``=pod``, ``=encoding``, ``=for`` paragraphs and ``=begin``..``=end``
blocks dropped; ``B<>``, ``I<>``, ``C<>``, ``F<>``, ``S<>`` unwrapped (also the ``C<< ... >>`` form),
``X<>``/``Z<>`` removed, ``E<lt>`` etc. resolved, ``L<text|target>`` -> ``text``, ``L<name/"section">`` ->
``"section" in name``.
"""

from __future__ import annotations

import html.entities
import re
from typing import Iterator

from pgolf.data.sources.fetch import Fetcher, SourceError

PKG = "perl-doc"
_ESCAPES = {"lt": "<", "gt": ">", "verbar": "|", "sol": "/"}
_CODE = re.compile(r"([A-Z])(<+)")


def _escape(name: str) -> str:
    name = name.strip()
    if name in _ESCAPES:
        return _ESCAPES[name]
    try:
        if name.lower().startswith("0x"):
            return chr(int(name, 16))
        if name.startswith("0") and len(name) > 1:
            return chr(int(name, 8))
        if name.isdigit():
            return chr(int(name))
    except (ValueError, OverflowError):
        return ""
    return html.entities.html5.get(name + ";", html.entities.html5.get(name, ""))


def _link(inner: str) -> str:
    text, bar, target = inner.partition("|")
    if bar:
        return text
    if re.match(r"^\w+:[^:\s]\S*$", inner):  # a URL
        return inner
    name, slash, section = inner.partition("/")
    if not slash:
        return inner.strip('"')
    section = section.strip()
    return f"{section} in {name}" if name else section.strip('"')


def format_codes(s: str) -> str:
    """Expand POD formatting codes (nesting and the multi-bracket ``C<< x >>`` form included)."""
    out, i = [], 0
    while i < len(s):
        m = _CODE.search(s, i)
        if m is None:
            out.append(s[i:])
            break
        out.append(s[i:m.start()])
        code, n = m.group(1), len(m.group(2))
        j = m.end()
        if n > 1:  # C<< ... >>: ends at the first run of n '>' preceded by whitespace
            close = re.compile(r"\s" + ">" * n)
            e = close.search(s, j)
            end, inner = (e.end(), s[j:e.start()].strip()) if e else (len(s), s[j:].strip())
        else:  # C<...>: ends at the matching '>', counting nested X< openers
            depth, k = 1, j
            while k < len(s):
                if s[k] == ">":
                    depth -= 1
                    if depth == 0:
                        break
                elif s[k] == "<" and k > 0 and s[k - 1].isupper() and s[k - 1].isalpha():
                    depth += 1
                k += 1
            end, inner = min(k + 1, len(s)), s[j:k]
        inner = format_codes(inner)
        if code in "XZ":
            pass
        elif code == "E":
            out.append(_escape(inner))
        elif code == "L":
            out.append(_link(inner))
        else:  # B I C F S and unknown codes: keep the text
            out.append(inner)
        i = end
    return "".join(out)


def pod_to_text(pod: str) -> str:
    paras = re.split(r"\n[ \t]*\n", pod.replace("\r\n", "\n"))
    out: list[str] = []
    in_begin = False
    bullet = ""  # "=item *" / "=item 1." marker waiting for its paragraph
    for p in paras:
        if not p.strip():
            continue
        if p.startswith("="):
            head = p.split(None, 1)
            cmd, rest = head[0][1:], " ".join(head[1].split()) if len(head) > 1 else ""
            if in_begin:
                in_begin = cmd != "end"
                continue
            if cmd == "begin":
                in_begin = True
            elif cmd == "item" and (rest in ("", "*", "o") or re.fullmatch(r"\d+\.?", rest)):
                bullet = (rest or "*") + " "
            elif cmd.startswith("head") or cmd == "item":
                text = format_codes(rest)
                if text:
                    out.append(bullet + text if cmd == "item" and bullet else text)
                bullet = ""
            continue  # =over =back =cut =pod =encoding =for and unknown commands
        if in_begin:
            continue
        if p[0] in " \t":  # verbatim paragraph
            out.append(p.rstrip())
        else:
            out.append(bullet + format_codes(p.strip()))
            bullet = ""
    return "\n\n".join(out)


def docs(f: Fetcher) -> tuple[list[dict], Iterator[tuple[str, str]]]:
    root, rec = f.deb(PKG)
    files = sorted(root.glob("usr/share/perl/*/pod/*.pod"))
    if not files:
        raise SourceError(f"{PKG}: no usr/share/perl/*/pod/*.pod files in {root}")

    def gen() -> Iterator[tuple[str, str]]:
        for p in files:
            raw = p.read_bytes()
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                text = raw.decode("latin-1")
            yield p.name, pod_to_text(text)

    return [rec], gen()
