"""The artifact file: everything needed to rebuild the model weights, no pickle.

Layout (all integers little-endian)::

    offset 0   b"PGOLF"                 magic, 5 bytes
           5   uint16 format version    (1)
           7   uint16 flags             bit 0: manifest is zlib-9 compressed
           9   uint32 manifest length   M
          13   uint32 crc32 of the M stored manifest bytes
          17   manifest (M bytes)       compact sorted JSON (ascii)
        17+M   payload (P bytes)        codec(concatenation of every stored tensor's raw bytes)

The manifest records format version, export scheme, codec, the caller's config summary, each
model tensor (name, per-tensor scheme, meta, and its stored parts with dtype, shape, offset and
nbytes inside the raw payload), plus payload length P, raw length and the sha256 of the payload.
The whole file counts as model bytes. Writing is atomic and deterministic (same state → same bytes).

    info = write_artifact("runs/x/artifact.pgz", qs, codec="zlib", meta={"run": "x"})
    qs, manifest = read_artifact("runs/x/artifact.pgz")
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import sys
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from pgolf.fileio import atomic_write_bytes
from pgolf.quant.codecs import compress, decompress
from pgolf.quant.state import QTensor, QuantizedState, dtype_from_name, dtype_name

MAGIC = b"PGOLF"
FORMAT_VERSION = 1
SUPPORTED_VERSIONS = (1,)
FLAG_MANIFEST_ZLIB = 1
_KNOWN_FLAGS = FLAG_MANIFEST_ZLIB
_PREFIX = struct.Struct("<5sHHII")  # magic, version, flags, manifest length, manifest crc32
HEADER_BYTES = _PREFIX.size  # 17

if sys.byteorder != "little":  # raw tensor bytes are written in host order
    raise ImportError("pgolf.export.artifact assumes a little-endian host")


class ArtifactError(Exception):
    """An artifact file is malformed, truncated, corrupted or of an unsupported version."""


@dataclass(frozen=True)
class ArtifactInfo:
    path: str
    file_bytes: int  # = model bytes counted toward the budget
    header_bytes: int
    manifest_bytes: int  # as stored (compressed if flagged)
    payload_bytes: int  # compressed payload
    raw_bytes: int  # payload before compression
    codec: str
    sha256: str  # of the whole file


def _tensor_bytes(t: Tensor) -> bytes:
    t = t.detach().to("cpu").contiguous()
    if t.numel() == 0:
        return b""
    return t.reshape(-1).view(torch.uint8).numpy().tobytes()


def _tensor_from_bytes(buf: bytes, dtype: torch.dtype, shape: list[int]) -> Tensor:
    if len(buf) == 0:
        return torch.empty(shape, dtype=dtype)
    return torch.frombuffer(bytearray(buf), dtype=torch.uint8).view(dtype).reshape(shape).clone()


def _json_bytes(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode("ascii")


def pack_state(qs: QuantizedState) -> tuple[bytes, list[dict[str, Any]]]:
    """Raw payload (tensor bytes concatenated in manifest order) and the per-tensor manifest entries."""
    chunks: list[bytes] = []
    entries: list[dict[str, Any]] = []
    offset = 0
    for name, qt in qs.tensors.items():
        parts = []
        for part, t in qt.parts.items():
            b = _tensor_bytes(t)
            parts.append({"part": part, "dtype": dtype_name(t.dtype), "shape": list(t.shape), "offset": offset,
                          "nbytes": len(b)})
            chunks.append(b)
            offset += len(b)
        entries.append({"name": name, "scheme": qt.scheme, "meta": qt.meta, "parts": parts})
    return b"".join(chunks), entries


def write_artifact(path: str | Path, qs: QuantizedState, *, codec: str, meta: dict[str, Any],
                   compress_manifest: bool = True) -> ArtifactInfo:
    """Serialize `qs` with `codec` to `path` (atomically). `meta` is a JSON-able config summary."""
    raw, entries = pack_state(qs)
    payload = compress(raw, codec, layout=entries)  # the layout is used by codec 'pergroup' only
    manifest = {
        "format_version": FORMAT_VERSION,
        "scheme": qs.scheme,
        "codec": codec,
        "config": meta,
        "tensors": entries,
        "payload_sha256": hashlib.sha256(payload).hexdigest(),
        "payload_bytes": len(payload),
        "raw_bytes": len(raw),
    }
    try:
        mbytes = _json_bytes(manifest)
    except (TypeError, ValueError) as e:
        raise ValueError(f"artifact {path}: manifest/meta is not JSON-serializable: {e}") from None
    flags = 0
    if compress_manifest:
        mbytes, flags = zlib.compress(mbytes, level=9), FLAG_MANIFEST_ZLIB
    data = _PREFIX.pack(MAGIC, FORMAT_VERSION, flags, len(mbytes), zlib.crc32(mbytes)) + mbytes + payload
    atomic_write_bytes(path, data)
    size = os.path.getsize(path)
    if size != len(data):
        raise ArtifactError(f"artifact {path}: wrote {len(data)} bytes but the file has {size}")
    return ArtifactInfo(path=str(path), file_bytes=size, header_bytes=HEADER_BYTES, manifest_bytes=len(mbytes),
                        payload_bytes=len(payload), raw_bytes=len(raw), codec=codec,
                        sha256=hashlib.sha256(data).hexdigest())


def _parse_header(path: Path, data: bytes) -> tuple[dict[str, Any], int]:
    """Manifest dict and the payload's start offset; checks magic, version, flags, lengths."""
    if len(data) < HEADER_BYTES:
        if not MAGIC.startswith(data[:5]):
            raise ArtifactError(f"artifact {path}: bad magic {data[:5]!r} (expected {MAGIC!r})")
        raise ArtifactError(f"artifact {path}: truncated: {len(data)} bytes, "
                            f"shorter than the {HEADER_BYTES}-byte header")
    magic, version, flags, mlen, mcrc = _PREFIX.unpack_from(data, 0)
    if magic != MAGIC:
        raise ArtifactError(f"artifact {path}: bad magic {magic!r} (expected {MAGIC!r}); not a pgolf artifact")
    if version not in SUPPORTED_VERSIONS:
        raise ArtifactError(f"artifact {path}: unsupported format version {version} (supported: {SUPPORTED_VERSIONS})")
    if flags & ~_KNOWN_FLAGS:
        raise ArtifactError(f"artifact {path}: unknown header flags 0x{flags:04x}")
    end = HEADER_BYTES + mlen
    if len(data) < end:
        raise ArtifactError(f"artifact {path}: truncated: manifest needs {end} bytes, file has {len(data)}")
    mbytes = data[HEADER_BYTES:end]
    if zlib.crc32(mbytes) != mcrc:
        raise ArtifactError(f"artifact {path}: manifest checksum mismatch (crc32 {zlib.crc32(mbytes):08x}, "
                            f"header says {mcrc:08x})")
    try:
        if flags & FLAG_MANIFEST_ZLIB:
            mbytes = zlib.decompress(mbytes)
        manifest = json.loads(mbytes.decode("ascii"))
    except (zlib.error, UnicodeDecodeError, ValueError) as e:
        raise ArtifactError(f"artifact {path}: corrupt manifest ({e})") from None
    if not isinstance(manifest, dict) or manifest.get("format_version") != version:
        raise ArtifactError(f"artifact {path}: manifest format_version does not match header version {version}")
    for key in ("scheme", "codec", "tensors", "payload_sha256", "payload_bytes", "raw_bytes"):
        if key not in manifest:
            raise ArtifactError(f"artifact {path}: manifest lacks field {key!r}")
    return manifest, end


def read_manifest(path: str | Path) -> dict[str, Any]:
    """Only the manifest (no payload check); cheap inspection of an artifact."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ArtifactError(f"artifact {path}: cannot read ({e.strerror or e})") from None
    return _parse_header(path, data)[0]


def read_artifact(path: str | Path) -> tuple[QuantizedState, dict[str, Any]]:
    """Load and verify an artifact: magic, version, lengths, sha256, then every tensor's extent."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ArtifactError(f"artifact {path}: cannot read ({e.strerror or e})") from None
    manifest, start = _parse_header(path, data)
    plen = manifest["payload_bytes"]
    if len(data) < start + plen:
        raise ArtifactError(f"artifact {path}: truncated: expected {start + plen} bytes, file has {len(data)}")
    if len(data) > start + plen:
        raise ArtifactError(f"artifact {path}: {len(data) - start - plen} trailing bytes after the payload")
    payload = data[start:]
    digest = hashlib.sha256(payload).hexdigest()
    if digest != manifest["payload_sha256"]:
        raise ArtifactError(f"artifact {path}: payload checksum mismatch (sha256 {digest}, manifest says "
                            f"{manifest['payload_sha256']})")
    try:
        raw = decompress(payload, manifest["codec"])
    except ValueError as e:
        raise ArtifactError(f"artifact {path}: {e}") from None
    except Exception as e:  # codec-specific corruption errors
        raise ArtifactError(f"artifact {path}: payload does not decompress with {manifest['codec']} ({e})") from None
    if len(raw) != manifest["raw_bytes"]:
        raise ArtifactError(f"artifact {path}: raw payload is {len(raw)} bytes, manifest says {manifest['raw_bytes']}")
    try:
        qs = _unpack_state(path, manifest, raw)
    except (KeyError, TypeError, AttributeError) as e:
        raise ArtifactError(f"artifact {path}: malformed manifest tensor entry ({type(e).__name__}: {e})") from None
    return qs, manifest


def _unpack_state(path: Path, manifest: dict[str, Any], raw: bytes) -> QuantizedState:
    qs = QuantizedState(scheme=manifest["scheme"])
    expected_offset = 0
    for entry in manifest["tensors"]:
        name = entry.get("name")
        parts: dict[str, Tensor] = {}
        for p in entry["parts"]:
            where = f"tensor {name!r} part {p.get('part')!r}"
            try:
                dtype = dtype_from_name(p["dtype"])
            except ValueError as e:
                raise ArtifactError(f"artifact {path}: {where}: {e}") from None
            off, nb, shape = p["offset"], p["nbytes"], p["shape"]
            numel = 1
            for s in shape:
                numel *= s
            if off != expected_offset or nb != numel * dtype.itemsize or off + nb > len(raw):
                raise ArtifactError(f"artifact {path}: {where}: bad extent offset={off} nbytes={nb} "
                                    f"for {p['dtype']}{shape} (raw payload {len(raw)} bytes)")
            parts[p["part"]] = _tensor_from_bytes(raw[off:off + nb], dtype, shape)
            expected_offset = off + nb
        qs.tensors[name] = QTensor(entry["scheme"], parts, entry["meta"])
    if expected_offset != len(raw):
        raise ArtifactError(f"artifact {path}: {len(raw) - expected_offset} raw payload bytes not owned by any tensor")
    return qs
