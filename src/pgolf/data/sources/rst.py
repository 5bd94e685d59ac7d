"""reST documentation sources: Python 3.11 docs (``python3.11-doc``) and Linux 6.1 docs (``linux-doc-6.1``,
English only: ``translations/`` skipped), one doc per ``html/_sources/**/*.rst.txt`` file.

    text = rst_to_text(rst)   # light cleanup toward what Sphinx renders

Cleanup: roles ``:func:`x``` -> ``x`` (``title <target>`` -> ``title``), inline literals and links unwrapped,
labels / comments / section underlines removed, directive headers replaced by their argument (admonitions by
"Note:" etc.), bookkeeping directives (index, toctree, kernel-doc, ...) dropped with their bodies, directive
option lines dropped, ``::`` literal markers reduced to ``:``. Code blocks and tables are kept as they are.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Iterator

from pgolf.data.sources.fetch import Fetcher, SourceError

SOURCES = {  # source name -> (Debian package, folder of the .rst.txt files inside it)
    "python-doc": ("python3.11-doc", "usr/share/doc/python3.11/html/_sources"),
    "linux-doc": ("linux-doc-6.1", "usr/share/doc/linux-doc-6.1/html/_sources"),
}
SKIP_DIRS = {"translations"}

DROP_BLOCK = {  # directives whose header and indented body are bookkeeping, not prose
    "index", "toctree", "raw", "tabularcolumns", "highlight", "include", "literalinclude", "sectionauthor",
    "moduleauthor", "currentmodule", "module", "contents", "sectnum", "only", "kernel-doc", "kernel-abi",
    "kernel-feat", "kernel-include", "c:namespace", "c:namespace-push", "c:namespace-pop", "ifconfig",
    "image", "figure", "csv-table", "cssclass", "default-domain", "spelling", "testsetup", "testcleanup",
}
TITLES = {"note": "Note:", "warning": "Warning:", "seealso": "See also:", "tip": "Tip:", "important": "Important:",
          "caution": "Caution:", "attention": "Attention:", "danger": "Danger:", "hint": "Hint:", "todo": "To do:",
          "versionadded": "New in version {}.", "versionchanged": "Changed in version {}:",
          "deprecated": "Deprecated since version {}:", "deprecated-removed": "Deprecated since version {}:"}

LITERAL = {"code-block", "code", "sourcecode", "doctest", "testcode", "testoutput", "productionlist",
           "parsed-literal", "literal", "highlight"}  # bodies kept verbatim, argument (a language) dropped

_DIRECTIVE = re.compile(r"^(\s*)\.\.\s+([A-Za-z][\w:.+-]*)::\s*(.*)$")
_COMMENT = re.compile(r"^(\s*)\.\.(\s.*)?$")  # labels, comments, substitution definitions, footnote targets
_OPTION = re.compile(r"^\s+:[\w -]+:(\s.*)?$")
_UNDERLINE = re.compile(r"^([=\-~*^\"#+`'_:])\1{2,}\s*$")
_ROLE = re.compile(r":((?:[A-Za-z][\w.+-]*:)+)`([^`]+)`")
_LINK = re.compile(r"`([^`<]*?)\s*<[^>`]+>`__?")
_REF = re.compile(r"`([^`]+)`__?(?!\w)")
_LITERAL = re.compile(r"``(.+?)``")
_STRONG = re.compile(r"(?<![\w*])\*\*(\S(?:[^*]*?\S)?)\*\*(?![\w*])")
_EMPH = re.compile(r"(?<![\w*])\*(\S(?:[^*]*?\S)?)\*(?![\w*])")
_FOOTREF = re.compile(r"\s?\[(?:#\w*|\*|\d+)\]_")


def _role_text(m: re.Match) -> str:
    role, s = m.group(1).rstrip(":").lower(), m.group(2).lstrip("!~")
    t = re.match(r"(.*?)\s*<[^<>]+>$", s, re.DOTALL)
    s = t.group(1) if t and t.group(1) else s
    return f"{role.upper()} {s}" if role in ("pep", "rfc") else s


def _inline(line: str) -> str:
    line = _ROLE.sub(_role_text, line)
    line = _LINK.sub(lambda m: m.group(1), line)
    line = _LITERAL.sub(lambda m: m.group(1), line)
    line = _REF.sub(lambda m: m.group(1), line)
    line = _STRONG.sub(lambda m: m.group(1), line)
    line = _EMPH.sub(lambda m: m.group(1), line)
    return _FOOTREF.sub("", line)


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def rst_to_text(rst: str) -> str:
    out: list[str] = []
    lines = rst.replace("\r\n", "\n").split("\n")
    literal = -1  # indent of the line that opened a literal block, -1 outside one
    i = 0
    while i < len(lines):
        line = lines[i]
        if literal >= 0:
            if not line.strip() or _indent(line) > literal:
                out.append(line)
                i += 1
                continue
            literal = -1
        m = _DIRECTIVE.match(line)
        if m or _COMMENT.match(line):
            indent = _indent(line)
            name, arg = (m.group(2).lower(), m.group(3).strip()) if m else ("", "")
            i += 1
            if m is None or name in DROP_BLOCK or name.startswith("|"):
                start = i  # skip the block: following blank lines and lines indented deeper than the marker
                while i < len(lines) and (not lines[i].strip() or _indent(lines[i]) > indent):
                    i += 1
                while i > start and not lines[i - 1].strip():
                    i -= 1  # trailing blank lines belong to what follows
                continue
            if name in TITLES:
                head = TITLES[name].format(arg) if "{}" in TITLES[name] else f"{TITLES[name]} {arg}".strip()
            else:
                head = "" if name in LITERAL else arg
            if head:
                out.append(" " * indent + _inline(head))
            while i < len(lines) and _OPTION.match(lines[i]):
                i += 1  # directive options (:noindex:, :linenos: ...)
            if name in LITERAL:
                literal = indent
            continue
        i += 1
        if _UNDERLINE.match(line):
            continue
        stripped = line.strip()
        if stripped.startswith((">>>", "... ")) or stripped == "...":
            out.append(line)
            continue
        if stripped.endswith("::"):
            literal = _indent(line)
            if stripped == "::":
                continue
            line = line.rstrip()[:-1]
            if line.endswith(" :"):
                line = line[:-2]
        out.append(_inline(line))
    text = "\n".join(s.rstrip() for s in out)
    return re.sub(r"\n{3,}", "\n\n", text).strip()


def docs(f: Fetcher, source: str) -> tuple[list[dict], Iterator[tuple[str, str]]]:
    pkg, sub = SOURCES[source]
    root, rec = f.deb(pkg)
    base = root / sub
    files = sorted(p for p in base.rglob("*.rst.txt")
                   if p.is_file() and not SKIP_DIRS.intersection(p.relative_to(base).parts))
    if not files:
        raise SourceError(f"{pkg}: no .rst.txt files under {base}")

    def gen() -> Iterator[tuple[str, str]]:
        for p in files:
            rel = p.relative_to(base).as_posix()
            yield rel, rst_to_text(_read(p))

    return [rec], gen()


def _read(p: Path) -> str:
    raw = p.read_bytes()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")
