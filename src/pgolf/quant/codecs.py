"""Byte codecs for the model payload, each at its strongest deterministic setting.

    zlib   level 9                         (official baseline)
    lzma   xz, preset 9 | PRESET_EXTREME   (records from 2026-03-25)
    zstd   level 22 (zstandard)            (records from 2026-03-19)
    brotli quality 11, lgwin 24            (records 2026-04-01..04-23; TOP uses lgwin 24)
    none   identity (for measuring raw sizes)

    blob = compress(raw, "brotli"); assert decompress(blob, "brotli") == raw
"""

from __future__ import annotations

import lzma
import zlib

CODECS = ("zlib", "lzma", "zstd", "brotli", "none")
_LZMA_PRESET = 9 | lzma.PRESET_EXTREME


def _check(codec: str) -> None:
    if codec not in CODECS:
        raise ValueError(f"unknown codec {codec!r}; known: {', '.join(CODECS)}")


def compress(data: bytes, codec: str) -> bytes:
    _check(codec)
    data = bytes(data)
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
    _check(codec)
    data = bytes(data)
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
