"""Reversible byte-level transforms used before a codec: dense bit packing and byte shuffle.

Bit packing (``pack_bits``): n unsigned values of `bits` bits (0 <= v < 2**bits) become
ceil(n*bits/8) bytes, most significant bit first; int6 rows take 3/4 of the int8 bytes.

Byte shuffle (``byte_shuffle``, stride S; PR #1089 ``_byte_shuffle``): the stream is rewritten as
all bytes at offsets = 0 (mod S), then all at 1 (mod S), ... so the low and high bytes of fp16
values form separate runs for the compressor. Any length works; the inverse restores it exactly.

    packed = pack_bits(q + 32, 6); q == unpack_bits(packed, 6, q.numel()) - 32
    byte_unshuffle(byte_shuffle(b, 2), 2) == b
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor


def _check_bits(bits: int) -> None:
    if not isinstance(bits, int) or not 1 <= bits <= 8:
        raise ValueError(f"bit packing needs 1 <= bits <= 8, got {bits!r}")


def packed_nbytes(n: int, bits: int) -> int:
    return (n * bits + 7) // 8


def pack_bits(values: Tensor, bits: int) -> Tensor:
    """Unsigned values in [0, 2**bits) (any integer dtype, any shape) -> flat uint8 tensor of packed bits."""
    _check_bits(bits)
    v = values.detach().reshape(-1).to("cpu", torch.int64)
    if v.numel() and (int(v.min()) < 0 or int(v.max()) >= 1 << bits):
        raise ValueError(f"pack_bits: values must lie in [0, {1 << bits}), got [{int(v.min())}, {int(v.max())}]")
    a = v.to(torch.uint8).numpy()
    if bits == 8:
        return torch.from_numpy(a.copy())
    bitmat = np.unpackbits(a[:, None], axis=1)[:, 8 - bits:]  # (n, bits), MSB first
    return torch.from_numpy(np.packbits(bitmat.reshape(-1)))


def unpack_bits(packed: Tensor, bits: int, n: int) -> Tensor:
    """Inverse of `pack_bits`: the first `n` values as a flat uint8 tensor."""
    _check_bits(bits)
    p = packed.detach().reshape(-1).to("cpu", torch.uint8).numpy()
    if p.size != packed_nbytes(n, bits):
        raise ValueError(f"unpack_bits: {p.size} bytes cannot hold exactly {n} values of {bits} bits "
                         f"(expected {packed_nbytes(n, bits)})")
    if bits == 8:
        return torch.from_numpy(p.copy())
    bitmat = np.unpackbits(p)[: n * bits].reshape(n, bits)
    full = np.zeros((n, 8), dtype=np.uint8)
    full[:, 8 - bits:] = bitmat
    return torch.from_numpy(np.packbits(full, axis=1).reshape(-1))


def _shuffle_input(data: bytes, stride: int) -> np.ndarray | None:
    """The bytes as uint8 for (un)shuffling, or None where the stride leaves them as they are."""
    if stride < 1:
        raise ValueError(f"byte shuffle stride must be >= 1, got {stride}")
    if stride == 1 or len(data) < 2:
        return None
    return np.frombuffer(bytes(data), dtype=np.uint8)


def byte_shuffle(data: bytes, stride: int) -> bytes:
    """Bytes at offsets 0 mod stride, then 1 mod stride, ...; stride 1 is the identity."""
    a = _shuffle_input(data, stride)
    if a is None:
        return bytes(data)
    return b"".join(a[i::stride].tobytes() for i in range(stride))


def byte_unshuffle(data: bytes, stride: int) -> bytes:
    """Inverse of `byte_shuffle` for the same stride."""
    a = _shuffle_input(data, stride)
    if a is None:
        return bytes(data)
    out = np.empty_like(a)
    n, pos = len(a), 0
    for i in range(stride):
        cnt = len(range(i, n, stride))
        out[i::stride] = a[pos:pos + cnt]
        pos += cnt
    return out.tobytes()


def transpose_bytes(data: bytes, rows: int, cols: int) -> bytes:
    """A row-major (rows, cols) byte matrix as column-major bytes (TOP per-group path)."""
    if len(data) != rows * cols:
        raise ValueError(f"transpose_bytes: {len(data)} bytes is not a {rows}x{cols} matrix")
    return np.frombuffer(bytes(data), dtype=np.uint8).reshape(rows, cols).T.tobytes()


def untranspose_bytes(data: bytes, rows: int, cols: int) -> bytes:
    """Inverse of `transpose_bytes`."""
    if len(data) != rows * cols:
        raise ValueError(f"untranspose_bytes: {len(data)} bytes is not a {rows}x{cols} matrix")
    return np.frombuffer(bytes(data), dtype=np.uint8).reshape(cols, rows).T.tobytes()
