"""Artifact file format and byte budget: `pytest tests/test_artifact.py -q`."""

from __future__ import annotations

import hashlib
import os
import shutil
import struct
import subprocess
from pathlib import Path

import pytest
import torch

from pgolf.config import QuantConfig
from pgolf.export.artifact import (
    HEADER_BYTES,
    MAGIC,
    ArtifactError,
    pack_state,
    read_artifact,
    read_manifest,
    write_artifact,
)
from pgolf.export.budget import (
    ByteBudget,
    OverBudgetError,
    check_budget,
    code_bytes,
    make_wrapper,
    minify_source,
    validate_submission,
)
from pgolf.quant.codecs import CODECS
from pgolf.quant.int8 import CONTROL_TENSOR_PATTERNS, dequantize_state_dict, quantize_state_dict

CFG = QuantConfig(keep_float_max_numel=1024)  # small threshold keeps the fixture tiny but exercises every scheme
MIRROR = Path("/work/.mirror/openai+parameter-golf/repo")


def _state_dict() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "tok_emb.weight": torch.randn(96, 64, generator=g) * 0.5,
        "blocks.0.attn.c_q.weight": torch.randn(64, 64, generator=g) * 2.0,
        "blocks.0.mlp.fc.weight": torch.randn(128, 64, generator=g).bfloat16(),
        "blocks.0.attn_scale": torch.randn(64, generator=g),
        "blocks.0.attn.q_gain": torch.full((4,), 1.5),
        "blocks.0.conv": torch.randn(4, 16, 32, generator=g),  # 3-D → per-tensor int8
        "norm.weight": torch.randn(64, generator=g),
        "step": torch.tensor(1234, dtype=torch.int64),
        "mask": torch.arange(12).reshape(3, 4) % 3 == 0,
        "empty": torch.zeros(0, 8),
    }


def _qs():
    return quantize_state_dict(_state_dict(), CFG, keep_fp32=CONTROL_TENSOR_PATTERNS)


META = {"run": "unit", "quant": {"scheme": "int8_rowwise", "clip_percentile": 99.99984}}


@pytest.mark.parametrize("codec", CODECS)
def test_round_trip_equals_dequantized(tmp_path, codec):
    qs = _qs()
    path = tmp_path / f"a_{codec}.pgz"
    info = write_artifact(path, qs, codec=codec, meta=META)
    assert info.file_bytes == os.path.getsize(path) == info.header_bytes + info.manifest_bytes + info.payload_bytes
    assert info.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temp file left behind
    qs2, manifest = read_artifact(path)
    assert manifest["codec"] == codec and manifest["config"] == META and manifest["scheme"] == "int8_rowwise"
    assert manifest["raw_bytes"] == info.raw_bytes == qs.nbytes
    assert [t["name"] for t in manifest["tensors"]] == list(qs.tensors)
    a, b = dequantize_state_dict(qs), dequantize_state_dict(qs2)
    assert list(a) == list(b) == list(_state_dict())
    for name in a:
        assert a[name].dtype == b[name].dtype and torch.equal(a[name], b[name]), name
        for part, t in qs.tensors[name].parts.items():
            t2 = qs2.tensors[name].parts[part]
            assert t.dtype == t2.dtype and torch.equal(t, t2), (name, part)
    assert read_manifest(path) == manifest


def test_payload_is_raw_tensor_bytes_in_manifest_order():
    qs = _qs()
    raw, entries = pack_state(qs)
    pos = 0
    for e in entries:
        for p in e["parts"]:
            t = qs.tensors[e["name"]].parts[p["part"]]
            assert p["offset"] == pos and p["nbytes"] == t.numel() * t.element_size()
            assert raw[pos:pos + p["nbytes"]] == t.contiguous().view(-1).view(torch.uint8).numpy().tobytes()
            pos += p["nbytes"]
    assert pos == len(raw)
    assert b"torch" not in raw and b"\x80\x04" not in raw[:2]  # no pickle stream


def test_deterministic_bytes(tmp_path):
    i1 = write_artifact(tmp_path / "one.pgz", _qs(), codec="zlib", meta=META)
    i2 = write_artifact(tmp_path / "two.pgz", _qs(), codec="zlib", meta=dict(reversed(list(META.items()))))
    assert i1.sha256 == i2.sha256 and i1.file_bytes == i2.file_bytes
    i3 = write_artifact(tmp_path / "three.pgz", _qs(), codec="zlib", meta={"run": "other"})
    assert i3.sha256 != i1.sha256


@pytest.fixture()
def artifact(tmp_path):
    path = tmp_path / "model.pgz"
    info = write_artifact(path, _qs(), codec="zlib", meta=META)
    return path, info


def _expect_error(path: Path, what: str):
    with pytest.raises(ArtifactError) as ei:
        read_artifact(path)
    msg = str(ei.value)
    assert str(path) in msg and what in msg, msg


def test_flipped_payload_byte(artifact):
    path, info = artifact
    data = bytearray(path.read_bytes())
    data[info.header_bytes + info.manifest_bytes + info.payload_bytes // 2] ^= 0x01
    path.write_bytes(bytes(data))
    _expect_error(path, "checksum mismatch")


def test_flipped_manifest_byte(artifact):
    path, info = artifact
    data = bytearray(path.read_bytes())
    data[HEADER_BYTES + 3] ^= 0x40
    path.write_bytes(bytes(data))
    _expect_error(path, "manifest checksum")


def test_truncated(artifact):
    path, info = artifact
    data = path.read_bytes()
    for cut in (len(data) - 1, info.header_bytes + 5, 9, 0):
        path.write_bytes(data[:cut])
        _expect_error(path, "truncated")
    path.write_bytes(data + b"\x00")
    _expect_error(path, "trailing")


def test_bad_magic_and_version(artifact):
    path, _ = artifact
    data = path.read_bytes()
    path.write_bytes(b"PK\x03\x04\x00" + data[5:])
    _expect_error(path, "bad magic")
    path.write_bytes(MAGIC + struct.pack("<H", 99) + data[7:])
    _expect_error(path, "unsupported format version 99")
    _expect_error(path.with_name("missing.pgz"), "cannot read")


# ---- budget ----------------------------------------------------------------------------------------


def test_byte_budget_arithmetic_and_refusal():
    b = ByteBudget(code_bytes=50_000, model_bytes=15_950_000)
    assert b.limit == 16_000_000 and b.total == 16_000_000 and b.headroom == 0 and b.fits
    assert check_budget(b) is b
    over = ByteBudget(code_bytes=50_000, model_bytes=15_950_001)
    assert not over.fits and over.headroom == -1
    with pytest.raises(OverBudgetError, match=r"over budget by 1 bytes.*16,000,001.*limit 16,000,000"):
        check_budget(over)
    # 16 MiB must not be the limit: 16,500,000 bytes is under 16 MiB but over budget
    with pytest.raises(OverBudgetError):
        check_budget(ByteBudget(code_bytes=0, model_bytes=16_500_000))
    with pytest.raises(ValueError, match="model_bytes"):
        ByteBudget(code_bytes=1, model_bytes=-5)


def test_validate_submission(artifact):
    path, info = artifact
    b = validate_submission(path, 10_000)
    assert b.model_bytes == info.file_bytes and b.total == info.file_bytes + 10_000 and b.fits
    with pytest.raises(OverBudgetError, match=f"model {info.file_bytes:,}"):
        validate_submission(path, 10_000, limit=info.file_bytes + 9_999)
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="checksum"):
        validate_submission(path, 10_000)


SMALL_SRC = '''"""Module docstring that minification drops."""
import math

CONST = 3


def area(r: float) -> float:
    """Docstring."""
    assert r >= 0, "radius"
    total = 0.0
    for k in range(CONST):
        total += math.pi * r * r / CONST
    return total


class Acc:
    def __init__(self):
        self.items = []

    def add(self, x):
        self.items.append(f"{x:.3f}")
        return self


RESULT = (area(2.0), Acc().add(1).add(2.5).items, [i * i for i in range(5)])
'''


def _exec(src: str) -> dict:
    """Run `src` as a fresh module (registered while it runs, as dataclasses need)."""
    import sys
    import types

    mod = types.ModuleType("pgolf_wrapper_test")
    sys.modules[mod.__name__] = mod
    try:
        exec(compile(src, "<test>", "exec"), mod.__dict__)
    finally:
        del sys.modules[mod.__name__]
    return mod.__dict__


def test_wrapper_exec_equivalence():
    wrapper = make_wrapper(SMALL_SRC)
    lines = wrapper.split("\n")
    assert lines[0] == "import brotli as B,base64 as b"
    assert lines[1].startswith('exec(B.decompress(b.b85decode("') and lines[1].endswith('")))')
    assert lines[2:] == [""]
    assert _exec(wrapper)["RESULT"] == _exec(SMALL_SRC)["RESULT"]
    assert code_bytes(SMALL_SRC, "raw") == len(SMALL_SRC.encode())
    assert code_bytes(SMALL_SRC) == len(wrapper.encode())
    assert "Docstring" not in minify_source(SMALL_SRC) and "assert" not in minify_source(SMALL_SRC)
    with pytest.raises(ValueError, match="'gzip'"):
        code_bytes(SMALL_SRC, "gzip")


def test_wrapper_on_our_config_module():
    import pgolf.config as cfg_mod

    ns = _exec(make_wrapper(Path(cfg_mod.__file__).read_text()))
    ref = cfg_mod.RunConfig()
    assert ns["RunConfig"]().to_dict() == ref.to_dict()
    assert ns["apply_overrides"](ns["RunConfig"](), ["model.num_layers=11"]).model.num_layers == 11


def _official_train_gpt() -> str:
    if shutil.which("git") is None or not MIRROR.exists():
        pytest.skip("git or the official mirror is missing")
    try:
        return subprocess.run(["git", "-C", str(MIRROR), "show", "HEAD:train_gpt.py"], capture_output=True,
                              text=True, check=True, timeout=60).stdout
    except (subprocess.SubprocessError, OSError) as e:
        pytest.skip(f"cannot read train_gpt.py from the mirror: {e}")


def test_wrapper_smaller_than_raw_on_realistic_source():
    src = _official_train_gpt()
    raw = code_bytes(src, "raw")
    assert 30_000 < raw < 200_000
    wrapper = make_wrapper(src)
    assert len(wrapper.encode()) == code_bytes(src) < raw // 2
    compile(minify_source(src), "train_gpt_min.py", "exec")  # the shipped code is valid Python
    import base64

    import brotli

    body = wrapper.split('b85decode("', 1)[1].split('")))', 1)[0]
    assert brotli.decompress(base64.b85decode(body)).decode() == minify_source(src)


def test_shipped_code_imports_only_shipped_modules():
    # code bytes must cover everything the counted modules import, or the artifact total is under-reported
    import ast

    from pgolf.export.code import PACKAGE, shipped_sources

    shipped = {p.relative_to(PACKAGE).as_posix() for p in shipped_sources()}
    assert "pipeline.py" in shipped and "train/loop.py" in shipped and "cli.py" not in shipped

    def module_file(name: str) -> str | None:
        stem = "/".join(name.split(".")[1:])
        return next((c for c in (f"{stem}.py", f"{stem}/__init__.py") if (PACKAGE / c).exists()), None)

    missing = set()
    for rel in shipped:
        for node in ast.walk(ast.parse((PACKAGE / rel).read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("pgolf"):
                names = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names if a.name.startswith("pgolf")]
            else:
                continue
            missing |= {f"{rel} -> {f}" for f in map(module_file, names) if f and f not in shipped}
    assert not missing, sorted(missing)
