"""Per-group compressor: the raw payload split by tensor role, each group with its best codec (TOP, PR #1855).

TOP buckets its int8 GPTQ codes by role and runs ``lrzip`` per group; lrzip is not installable here,
so each group instead tries every codec of the spec (zlib-9, lzma-9e, zstd-22, brotli-11; the ``rest``
group also with a stride-2 byte shuffle) and keeps the smallest stream. Groups, in this order:

    tok_emb | attn.c_q | attn.c_k | attn.c_v | attn.proj | mlp.fc | mlp.proj | matrix | rest

The first eight hold the unpacked 2-D int8 code matrices (``q`` parts of row-quantized tensors) of
that role, layers concatenated in payload order, each matrix transposed to column-major; ``rest``
holds every other byte (scales, zero points, LQER/AWQ parts, floats, packed codes) in payload order.

Container (the artifact payload; decoding needs nothing else)::

    b"PGRP" | uint32 H | zlib(JSON header, H bytes) | stream_0 | stream_1 | ...
    header = {"n": raw bytes, "g": [[role, codec, shuffle, stream bytes, [[offset, nbytes, rows, cols], ...]], ...]}

(rows = cols = 0: a plain byte run). Decoding scatters each segment back to its offset and checks
that the segments cover the raw payload exactly once.

Split groups (spec ``pergroup@N``, ``quant.pergroup_split_bytes``): a group of more than N raw bytes is cut at
matrix boundaries into up to ceil(bytes / N) groups of about equal size (``mlp.fc#0``, ``mlp.fc#1``, ...), each with
its own codec, so the codec jobs run in parallel; brotli-11's time also grows faster than its input. The
container format is unchanged (any list of groups decodes). Measured on pr1855's initialized int6 codes (CPU):
mlp.fc's 11.5 MB in 1 / 2 / 4 parts took 18.5 / 8.3 / 3.3 s of brotli (longest part) for 5,065,736 / 5,065,745 /
5,065,699 bytes.

    blob = compress_pergroup(raw, entries, "pergroup");  decompress_pergroup(blob) == raw
"""

from __future__ import annotations

import json
import os
import struct
import zlib
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from pgolf.quant.codecs import _decompress_base, compress, parse_spec
from pgolf.quant.pack import byte_shuffle, byte_unshuffle, transpose_bytes, untranspose_bytes

MAGIC = b"PGRP"
ROLES = ("tok_emb", "attn.c_q", "attn.c_k", "attn.c_v", "attn.proj", "mlp.fc", "mlp.proj", "matrix", "rest")
DEFAULT_CODECS = ("zlib", "lzma", "zstd", "brotli")
ROW_SCHEMES = ("int_row", "int_row_asym", "int8_row")


class PergroupError(ValueError):
    """A per-group container is malformed."""


def tensor_role(name: str) -> str:
    """Role group of a weight by name (``matrix`` for other 2-D codes)."""
    if name.startswith(("tok_emb.", "lm_head.")):
        return "tok_emb"
    for frag, role in ((".attn.c_q.", "attn.c_q"), (".attn.c_k.", "attn.c_k"), (".attn.c_v.", "attn.c_v"),
                       (".attn.proj.", "attn.proj"), (".mlp.fc.", "mlp.fc"), (".mlp.proj.", "mlp.proj")):
        if frag in f".{name}":
            return role
    return "matrix"


def part_role(entry: dict[str, Any], part: dict[str, Any]) -> tuple[str, int, int]:
    """(group, rows, cols) of one stored part of a manifest entry; rows = cols = 0 when not transposed."""
    shape = part["shape"]
    if (entry.get("scheme") in ROW_SCHEMES and part["part"] == "q" and part["dtype"] == "int8"
            and len(shape) == 2 and not entry.get("meta", {}).get("packed") and part["nbytes"] > 0):
        return tensor_role(entry["name"]), int(shape[0]), int(shape[1])
    return "rest", 0, 0


def spec_split(spec: str) -> tuple[str, int]:
    """(spec without its split, split bytes): ``pergroup:zstd,brotli@3000000`` -> (``pergroup:zstd,brotli``, 3e6);
    0 = no split."""
    base, at, n = spec.partition("@")
    if not at:
        return spec, 0
    if not n.isdigit() or int(n) < 1:
        raise ValueError(f"codec spec {spec!r}: the split after '@' must be a positive byte count")
    return base, int(n)


def spec_codecs(spec: str) -> tuple[str, ...]:
    spec = spec_split(spec)[0]
    if spec == "pergroup":
        return DEFAULT_CODECS
    names = tuple(c for c in spec.split(":", 1)[1].split(",") if c)
    for c in names:
        if parse_spec(c)[0] or c == "none":
            raise ValueError(f"codec spec {spec!r}: per-group candidates must be plain codecs, got {c!r}")
    if not names:
        raise ValueError(f"codec spec {spec!r} lists no codecs")
    return names


def group_segments(layout: list[dict[str, Any]]) -> dict[str, list[list[int]]]:
    """Segments [offset, nbytes, rows, cols] per role (adjacent plain runs merged)."""
    groups: dict[str, list[list[int]]] = {r: [] for r in ROLES}
    for entry in layout:
        for part in entry["parts"]:
            if part["nbytes"] == 0:
                continue
            role, rows, cols = part_role(entry, part)
            segs = groups[role]
            off, nb = int(part["offset"]), int(part["nbytes"])
            if rows == 0 and segs and segs[-1][2] == 0 and segs[-1][0] + segs[-1][1] == off:
                segs[-1][1] += nb
            else:
                segs.append([off, nb, rows, cols])
    return {r: s for r, s in groups.items() if s}


def group_role(name: str) -> str:
    """The role of a container group: ``mlp.fc#1`` (a part of a split group) -> ``mlp.fc``."""
    return name.split("#")[0]


def split_groups(groups: dict[str, list[list[int]]], max_bytes: int) -> dict[str, list[list[int]]]:
    """Each group of more than `max_bytes` cut at segment boundaries into at most ceil(bytes / max_bytes) runs of
    about equal bytes, named ``role#i`` (a segment is never cut, so one large matrix stays whole); 0 = unchanged."""
    if not max_bytes:
        return groups
    out: dict[str, list[list[int]]] = {}
    for role, segs in groups.items():
        total = sum(s[1] for s in segs)
        parts = min(len(segs), -(-total // max_bytes))
        if parts <= 1:
            out[role] = segs
            continue
        bounds, acc, i = [], 0, 1
        for j, seg in enumerate(segs):  # cut after the segment that reaches each part's share of the bytes
            acc += seg[1]
            if i < parts and acc * parts >= i * total and j < len(segs) - 1:
                bounds.append(j + 1)
                i += 1
        for k, (a, b) in enumerate(zip([0, *bounds], [*bounds, len(segs)])):
            out[f"{role}#{k}"] = segs[a:b]
    return out


def _stream(raw: bytes, segs: list[list[int]]) -> bytes:
    out = []
    for off, nb, rows, cols in segs:
        chunk = raw[off:off + nb]
        out.append(transpose_bytes(chunk, rows, cols) if rows else chunk)
    return b"".join(out)


def _encode(data: bytes, codec: str, shuffle: int) -> bytes:
    return compress(byte_shuffle(data, shuffle) if shuffle else data, codec)


def encode_jobs(raw: bytes, layout: list[dict[str, Any]] | None, spec: str = "pergroup"
                ) -> tuple[dict[str, list[list[int]]], dict[str, bytes], list[tuple[str, str, int]]]:
    """(segments per group, each group's byte stream, the (group, codec, shuffle) jobs to try), in a fixed order."""
    if layout is None:
        raise ValueError("codec 'pergroup' needs the payload layout (the artifact's tensor entries)")
    codecs = spec_codecs(spec)
    groups = split_groups(group_segments(layout), spec_split(spec)[1])
    covered = sum(s[1] for segs in groups.values() for s in segs)
    if covered != len(raw):
        raise ValueError(f"per-group layout covers {covered} bytes but the raw payload has {len(raw)}")
    streams = {role: _stream(raw, segs) for role, segs in groups.items()}
    shuffles = {role: (0, 2) if group_role(role) == "rest" else (0,) for role in groups}
    jobs = [(role, c, sh) for role in groups for c in codecs for sh in shuffles[role]]
    return groups, streams, jobs


def run_job(streams: dict[str, bytes], job: tuple[str, str, int]) -> bytes:
    """One job's compressed stream."""
    role, codec, shuffle = job
    return _encode(streams[role], codec, shuffle)


def job_workers(jobs: list) -> int:
    return max(1, min(len(jobs), os.cpu_count() or 1))


def compress_pergroup(raw: bytes, layout: list[dict[str, Any]] | None, spec: str = "pergroup") -> bytes:
    """The container for `raw` given the artifact's tensor entries (`pgolf.export.artifact.pack_state`)."""
    groups, streams, jobs = encode_jobs(raw, layout, spec)
    with ThreadPoolExecutor(max_workers=job_workers(jobs)) as pool:
        blobs = list(pool.map(lambda j: run_job(streams, j), jobs))
    best: dict[str, tuple[int, str, int, bytes]] = {}
    for (role, c, sh), blob in zip(jobs, blobs):  # jobs are in a fixed order: ties keep the first
        if role not in best or len(blob) < best[role][0]:
            best[role] = (len(blob), c, sh, blob)
    header = {"n": len(raw), "g": [[role, best[role][1], best[role][2], best[role][0], groups[role]]
                                   for role in groups]}
    hbytes = zlib.compress(json.dumps(header, separators=(",", ":")).encode("ascii"), 9)
    return MAGIC + struct.pack("<I", len(hbytes)) + hbytes + b"".join(best[role][3] for role in groups)


def read_header(blob: bytes) -> tuple[dict[str, Any], int]:
    """The container header and the offset of the first stream."""
    if blob[:4] != MAGIC or len(blob) < 8:
        raise PergroupError(f"per-group payload: bad magic {blob[:4]!r} (expected {MAGIC!r})")
    (hlen,) = struct.unpack_from("<I", blob, 4)
    try:
        header = json.loads(zlib.decompress(blob[8:8 + hlen]).decode("ascii"))
    except (zlib.error, ValueError, UnicodeDecodeError) as e:
        raise PergroupError(f"per-group payload: corrupt header ({e})") from None
    return header, 8 + hlen


def decompress_pergroup(blob: bytes) -> bytes:
    header, pos = read_header(blob)
    n = int(header["n"])
    raw = bytearray(n)
    seen = 0
    for role, codec, shuffle, length, segs in header["g"]:
        stream = blob[pos:pos + length]
        if len(stream) != length:
            raise PergroupError(f"per-group payload: group {role!r} truncated ({len(stream)} of {length} bytes)")
        pos += length
        data = _decompress_base(stream, parse_spec(codec)[1])
        if shuffle:
            data = byte_unshuffle(data, int(shuffle))
        at = 0
        for off, nb, rows, cols in segs:
            chunk = data[at:at + nb]
            if len(chunk) != nb or off + nb > n:
                raise PergroupError(f"per-group payload: group {role!r} segment at {off} (+{nb}) is out of range")
            raw[off:off + nb] = untranspose_bytes(chunk, rows, cols) if rows else chunk
            at += nb
            seen += nb
        if at != len(data):
            raise PergroupError(f"per-group payload: group {role!r} has {len(data) - at} unassigned bytes")
    if pos != len(blob) or seen != n:
        raise PergroupError(f"per-group payload: segments cover {seen} of {n} bytes; {len(blob) - pos} trailing bytes")
    return bytes(raw)
