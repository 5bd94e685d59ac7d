"""Code bytes as shipped: the modules a submission needs to train from shards and score, minified,
brotli-compressed and wrapped in a self-extracting stub (techniques.md §1.1). Data building, the demo, plots,
the throughput report, the inspector and the CLI are not shipped; everything else in the package is counted,
and what is counted imports nothing that is not (tests/test_artifact.py checks the closure)."""

from __future__ import annotations

from pathlib import Path

from pgolf.export.budget import code_bytes

PACKAGE = Path(__file__).resolve().parents[1]
NOT_SHIPPED = ("cli.py", "__main__.py", "demo.py", "report/plots.py", "report/throughput.py", "data/corpus.py",
               "data/sources/", "data/fineweb.py", "data/build.py", "export/inspect.py")


def shipped_sources() -> list[Path]:
    files = sorted(p for p in PACKAGE.rglob("*.py"))
    rel = lambda p: p.relative_to(PACKAGE).as_posix()  # noqa: E731
    return [p for p in files if not any(rel(p) == s or rel(p).startswith(s) for s in NOT_SHIPPED)]


def shipped_source_text() -> str:
    return "\n".join(f"# ---- {p.relative_to(PACKAGE).as_posix()}\n{p.read_text()}" for p in shipped_sources())


def shipped_code_bytes() -> int:
    return code_bytes(shipped_source_text(), method="wrapper")
