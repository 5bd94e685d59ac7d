"""benchmarks/varlen_attn_bench.py on CPU: the segment offsets it feeds both attention kernels (the timing needs CUDA)."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import varlen_attn_bench as bench


def test_segments_start_at_every_bos_and_row_start_and_are_padded():
    toks = np.array([5, 1, 7, 7, 7, 1, 9, 9, 1, 4, 4, 4], dtype=np.int32)  # bos_id 1, rows of 4, 3 rows a window
    (cu,) = bench.segment_batches(toks, rows=3, seq_len=4, bos_id=1, count=1, pad_to=10)
    assert cu.tolist() == [0, 1, 4, 5, 8, 12, 12, 12, 12, 12]
    two = bench.segment_batches(np.tile(toks, 2), rows=3, seq_len=4, bos_id=1, count=2, pad_to=6)
    assert [c.tolist() for c in two] == [[0, 1, 4, 5, 8, 12]] * 2


def test_segments_name_the_window_and_shard_that_do_not_fit():
    toks = np.ones(8, dtype=np.int32)
    with pytest.raises(ValueError, match="window 0 has 9 offsets, more than --pad-to 4"):
        bench.segment_batches(toks, rows=2, seq_len=4, bos_id=1, count=1, pad_to=4)
    with pytest.raises(ValueError, match="fewer than 3 windows of 8"):
        bench.segment_batches(toks, rows=2, seq_len=4, bos_id=1, count=3, pad_to=16)


def test_cpu_run_checks_the_batches_and_writes_json(tmp_path):
    out = tmp_path / "a.json"
    assert bench.main(["--device", "cpu", "--rows", "2", "--seq-len", "512", "--out", str(out)]) == 1
    r = json.loads(out.read_text())
    assert r["tokens"] == 1024 and r["batches"] == 8 and 0 < r["segments_mean_len"] <= r["segments_max_len"] <= 512
    assert all("needs CUDA" in v["error"] for v in r["results"])
