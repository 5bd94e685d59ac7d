"""Byte accounting: code bytes + model bytes ≤ 16,000,000 (decimal bytes, never MiB).

Code bytes are counted as shipped. ``method="raw"`` is len(utf-8 source) (official baseline).
``method="wrapper"`` is the length of the self-extracting 2-line script the later records count
(TOP.py ``_compressed_code_size``, PR #1530 onward): python-minifier with
``--no-rename-locals --no-hoist-literals --remove-literal-statements --remove-asserts
--prefer-single-line``, then brotli q=11, base85, embedded in::

    import brotli as B,base64 as b
    exec(B.decompress(b.b85decode("...")))

Model bytes are the whole artifact file. Usage::

    budget = validate_submission("runs/x/artifact.pgz", code_bytes(src))   # raises when over
    print(budget.total, budget.headroom)
"""

from __future__ import annotations

import base64
import os
from dataclasses import dataclass
from pathlib import Path

LIMIT_BYTES = 16_000_000  # decimal; 16 MiB (16,777,216) would be wrong
WRAPPER_HEAD = 'import brotli as B,base64 as b\nexec(B.decompress(b.b85decode("'
WRAPPER_TAIL = '")))\n'


class OverBudgetError(Exception):
    """code + model bytes exceed the limit."""


def minify_source(source: str) -> str:
    """The minified source the wrapper carries (docstrings and asserts removed, names kept)."""
    import python_minifier

    return python_minifier.minify(
        source,
        remove_literal_statements=True,
        remove_asserts=True,
        rename_locals=False,
        rename_globals=False,
        hoist_literals=False,
        prefer_single_line=True,
    )


def make_wrapper(source: str) -> str:
    """Self-extracting script: exec'ing it runs the (minified) `source`."""
    import brotli

    blob = brotli.compress(minify_source(source).encode("utf-8"), quality=11)
    return WRAPPER_HEAD + base64.b85encode(blob).decode("ascii") + WRAPPER_TAIL


def code_bytes(source: str, method: str = "wrapper") -> int:
    """Counted code bytes of `source`: "raw" = utf-8 length, "wrapper" = length of `make_wrapper(source)`."""
    if method == "raw":
        return len(source.encode("utf-8"))
    if method == "wrapper":
        return len(make_wrapper(source).encode("utf-8"))
    raise ValueError(f"code_bytes: unknown method {method!r} (use 'raw' or 'wrapper')")


@dataclass(frozen=True)
class ByteBudget:
    code_bytes: int
    model_bytes: int
    limit: int = LIMIT_BYTES

    def __post_init__(self) -> None:
        for field in ("code_bytes", "model_bytes", "limit"):
            v = getattr(self, field)
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                raise ValueError(f"ByteBudget.{field} must be a non-negative int, got {v!r}")

    @property
    def total(self) -> int:
        return self.code_bytes + self.model_bytes

    @property
    def headroom(self) -> int:
        """limit − total (negative when over)."""
        return self.limit - self.total

    @property
    def fits(self) -> bool:
        return self.total <= self.limit

    def describe(self) -> str:
        return (f"total {self.total:,} bytes = code {self.code_bytes:,} + model {self.model_bytes:,}; "
                f"limit {self.limit:,}; headroom {self.headroom:,}")

    def to_dict(self) -> dict[str, int | bool]:
        return {"code_bytes": self.code_bytes, "model_bytes": self.model_bytes, "total_bytes": self.total,
                "limit_bytes": self.limit, "headroom_bytes": self.headroom, "fits": self.fits}


def check_budget(budget: ByteBudget) -> ByteBudget:
    """Return `budget` if it fits, else raise OverBudgetError with the numbers."""
    if not budget.fits:
        raise OverBudgetError(f"over budget by {-budget.headroom:,} bytes: {budget.describe()}")
    return budget


def validate_submission(artifact_path: str | Path, code_bytes: int, limit: int = LIMIT_BYTES, *,
                        verify: bool = True) -> ByteBudget:
    """Budget of a submission whose model is the artifact file at `artifact_path`.

    With `verify`, the artifact is fully read back first (magic, version, checksums), so a corrupt
    file raises `ArtifactError`; an over-budget one raises `OverBudgetError`. Never returns a
    budget that does not fit.
    """
    path = Path(artifact_path)
    if verify:
        from pgolf.export.artifact import read_artifact

        read_artifact(path)
    try:
        model_bytes = os.path.getsize(path)
    except OSError as e:
        raise FileNotFoundError(f"artifact {path}: cannot stat ({e.strerror or e})") from None
    return check_budget(ByteBudget(code_bytes=int(code_bytes), model_bytes=model_bytes, limit=int(limit)))
