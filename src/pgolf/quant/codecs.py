"""Byte codecs for the model payload, each at its strongest deterministic setting.

    zlib   level 9                         (official baseline)
    lzma   xz, preset 9 | PRESET_EXTREME   (records from 2026-03-25)
    zstd   level 22 (zstandard)            (records from 2026-03-19)
    brotli quality 11, lgwin 24            (records 2026-04-01..04-23; TOP uses lgwin 24)
    none   identity (for measuring raw sizes)

A codec *spec* (what the artifact manifest records) is one of these names, optionally behind a
byte shuffle (``shuf2+brotli``: `pgolf.quant.pack.byte_shuffle` with stride 2, then brotli), or
``pergroup`` / ``pergroup:zstd,brotli`` / ``pergroup@3000000`` (`pgolf.quant.pergroup`: the best codec per
tensor group, large groups optionally split; needs the payload layout when compressing; decoding is
self-describing).

    blob = compress(raw, "brotli"); assert decompress(blob, "brotli") == raw
"""

from __future__ import annotations

import lzma
import re
import zlib
from typing import Any

CODECS = ("zlib", "lzma", "zstd", "brotli", "none")
_LZMA_PRESET = 9 | lzma.PRESET_EXTREME
_SHUFFLE = re.compile(r"shuf([1-9][0-9]?)")


def _check(codec: str) -> None:
    if codec not in CODECS:
        raise ValueError(f"unknown codec {codec!r}; known: {', '.join(CODECS)}")


def parse_spec(spec: str) -> tuple[int, str]:
    """(shuffle stride, base codec) of a plain spec such as ``brotli`` or ``shuf2+brotli`` (stride 0 = none)."""
    if not isinstance(spec, str):
        raise ValueError(f"codec spec must be a string, got {spec!r}")
    if "+" in spec:
        pre, base = spec.split("+", 1)
        m = _SHUFFLE.fullmatch(pre)
        if not m:
            raise ValueError(f"codec spec {spec!r}: unknown transform {pre!r} (use shufN+<codec>)")
        _check(base)
        return int(m.group(1)), base
    _check(spec)
    return 0, spec


def is_pergroup(spec: str) -> bool:
    """``pergroup``, ``pergroup:<codecs>``, either with ``@<split bytes>`` (`pgolf.quant.pergroup`)."""
    return isinstance(spec, str) and re.match(r"pergroup([:@]|$)", spec) is not None


def compress(data: bytes, codec: str, *, layout: list[dict[str, Any]] | None = None) -> bytes:
    """Compress with a codec spec. `layout` (the artifact's tensor entries) is needed by ``pergroup`` only."""
    if is_pergroup(codec):
        from pgolf.quant.pergroup import compress_pergroup

        return compress_pergroup(bytes(data), layout, codec)
    stride, codec = parse_spec(codec)
    data = bytes(data)
    if stride:
        from pgolf.quant.pack import byte_shuffle

        data = byte_shuffle(data, stride)
    if codec == "zlib":
        return zlib.compress(data, level=9)
    if codec == "lzma":
        return lzma.compress(data, format=lzma.FORMAT_XZ, preset=_LZMA_PRESET)
    if codec == "zstd":
        import zstandard

        # write_content_size lets decompress() size its output buffer; threads=0 keeps output deterministic
        return zstandard.ZstdCompressor(level=22, write_content_size=True, threads=0).compress(data)
    if codec == "brotli":
        import brotli

        return brotli.compress(data, quality=11, lgwin=24)
    return data


def decompress(data: bytes, codec: str) -> bytes:
    """Inverse of `compress`; corrupt input raises the codec's own error."""
    if is_pergroup(codec):
        from pgolf.quant.pergroup import decompress_pergroup

        return decompress_pergroup(bytes(data))
    stride, codec = parse_spec(codec)
    out = _decompress_base(bytes(data), codec)
    if stride:
        from pgolf.quant.pack import byte_unshuffle

        out = byte_unshuffle(out, stride)
    return out


def _decompress_base(data: bytes, codec: str) -> bytes:
    if codec == "zlib":
        return zlib.decompress(data)
    if codec == "lzma":
        return lzma.decompress(data, format=lzma.FORMAT_XZ)
    if codec == "zstd":
        import zstandard

        return zstandard.ZstdDecompressor().decompress(data)
    if codec == "brotli":
        import brotli

        return brotli.decompress(data)
    return data
