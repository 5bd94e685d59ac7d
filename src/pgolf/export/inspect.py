"""Where the bytes of an artifact go: ``pgolf inspect runs/<id>/artifact.pgz``.

Per tensor: shape, scheme, bits, stored (raw) bytes, compressed bytes and, when the float weights
``model_fp32.pt`` sit next to the artifact (or ``--fp32`` names them), the relative error
||w - w_hat||_F / ||w||_F. Compressed bytes are attributed by compressing each tensor's parts alone
with the artifact's own codec (for ``pergroup``: each part with its group's codec, shuffle and
transposition), so they add up to roughly, not exactly, the payload. Totals by group (tok_emb,
attn.c_q/c_k/c_v/proj, mlp.fc/proj, other quantized matrices, control/other floats), then code
bytes vs model bytes vs headroom under the 16,000,000-byte limit, and a bar chart PNG (default
``<artifact>.bytes.png``; the chart scales the group bytes to the real payload).

    rep = inspect_artifact("runs/x/artifact.pgz", png="runs/x/bytes.png")
    print(format_report(rep))
"""

from __future__ import annotations

import io
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch

from pgolf.export.artifact import HEADER_BYTES, read_artifact
from pgolf.export.budget import LIMIT_BYTES
from pgolf.fileio import atomic_write_bytes
from pgolf.quant.codecs import compress, is_pergroup
from pgolf.quant.pack import byte_shuffle, transpose_bytes
from pgolf.quant.pergroup import ROLES, group_role, part_role, read_header, tensor_role
from pgolf.quant.state import dequantize_tensor

ROW_SCHEMES = ("int_row", "int_row_asym", "int8_row", "int8_tensor")


def _part_bytes(t: torch.Tensor) -> bytes:
    t = t.detach().cpu().contiguous()
    return t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""


def _display_group(name: str, scheme: str) -> str:
    """The tensor's role (tok_emb, attn.c_q, ...); other quantized tensors -> matrix, other floats -> control."""
    role = tensor_role(name)
    if role != "matrix":
        return role
    return "matrix" if scheme in ROW_SCHEMES else "control"


def _pergroup_codecs(path: Path, manifest: dict[str, Any]) -> dict[str, tuple[str, int]]:
    data = path.read_bytes()
    start = len(data) - int(manifest["payload_bytes"])
    header, _ = read_header(data[start:])
    out: dict[str, tuple[str, int]] = {}
    for g in header["g"]:  # a split group (pergroup@N: mlp.fc#0, mlp.fc#1, ...) counts with its first part's codec
        out.setdefault(group_role(g[0]), (g[1], int(g[2])))
    return out


def _alone_bytes(entry: dict[str, Any], parts: dict[str, torch.Tensor], codec: str,
                 groups: dict[str, tuple[str, int]] | None) -> int:
    if groups is None:
        return len(compress(b"".join(_part_bytes(t) for t in parts.values()), codec))
    by_group: dict[str, list[bytes]] = {}
    for p in entry["parts"]:
        role, rows, cols = part_role(entry, p)
        b = _part_bytes(parts[p["part"]])
        by_group.setdefault(role, []).append(transpose_bytes(b, rows, cols) if rows else b)
    total = 0
    for role, chunks in by_group.items():
        c, shuffle = groups.get(role, ("zlib", 0))
        data = b"".join(chunks)
        total += len(compress(byte_shuffle(data, shuffle) if shuffle else data, c))
    return total


def inspect_artifact(path: str | Path, *, fp32: str | Path | None = None, code_bytes: int | None = None,
                     limit: int = LIMIT_BYTES, png: str | Path | None = None) -> dict[str, Any]:
    """The report as a JSON-able dict (and the chart at `png` when given)."""
    path = Path(path)
    qs, manifest = read_artifact(path)
    codec = manifest["codec"]
    groups = _pergroup_codecs(path, manifest) if is_pergroup(codec) else None
    fp32_path = Path(fp32) if fp32 else path.parent / "model_fp32.pt"
    ref = torch.load(fp32_path, map_location="cpu", weights_only=True) if fp32_path.exists() else None
    if code_bytes is None:
        from pgolf.export.code import shipped_code_bytes

        code_bytes = shipped_code_bytes()
    entries = manifest["tensors"]
    with ThreadPoolExecutor(max_workers=max(1, min(len(entries), os.cpu_count() or 1))) as pool:  # codecs drop the GIL
        alone = list(pool.map(lambda e: _alone_bytes(e, qs.tensors[e["name"]].parts, codec, groups), entries))
    rows = []
    for entry, nbytes in zip(entries, alone):
        name = entry["name"]
        qt = qs.tensors[name]
        row = {"name": name, "shape": list(qt.shape), "scheme": qt.scheme, "bits": qt.meta.get("bits"),
               "method": qt.meta.get("method", ""), "group": _display_group(name, qt.scheme),
               "stored_bytes": qt.nbytes, "compressed_bytes": nbytes,
               "extras": [k for k in ("lqer", "awq_group", "packed", "pruned") if qt.meta.get(k)]}
        if ref is not None and name in ref and ref[name].is_floating_point():
            w = ref[name].double()
            err = (w - dequantize_tensor(name, qt).double()).norm()
            row["rel_err"] = float(err / w.norm()) if float(w.norm()) > 0 else float(err)
        rows.append(row)
    order = list(ROLES[:-2]) + ["matrix", "control"]
    totals: dict[str, dict[str, Any]] = {}
    for r in rows:
        g = totals.setdefault(r["group"], {"tensors": 0, "numel": 0, "stored_bytes": 0, "compressed_bytes": 0})
        g["tensors"] += 1
        g["numel"] += int(torch.tensor(r["shape"]).prod()) if r["shape"] else 1
        g["stored_bytes"] += r["stored_bytes"]
        g["compressed_bytes"] += r["compressed_bytes"]
    totals = {k: totals[k] for k in order if k in totals}
    model_bytes = path.stat().st_size
    total = model_bytes + int(code_bytes)
    rep = {
        "artifact": str(path), "codec": codec, "scheme": manifest["scheme"], "tensors": rows, "groups": totals,
        "fp32": str(fp32_path) if ref is not None else None,
        "bytes": {"model": model_bytes, "payload": int(manifest["payload_bytes"]), "raw": int(manifest["raw_bytes"]),
                  "header_and_manifest": model_bytes - int(manifest["payload_bytes"]), "header": HEADER_BYTES,
                  "attributed": sum(r["compressed_bytes"] for r in rows), "code": int(code_bytes), "total": total,
                  "limit": int(limit), "headroom": int(limit) - total},
    }
    if png:
        rep["png"] = str(plot_bytes(rep, png))
    return rep


def format_report(rep: dict[str, Any], *, max_rows: int = 0) -> str:
    """Plain-text tables of a report (all tensors unless `max_rows` > 0: the largest ones)."""
    rows = rep["tensors"]
    if max_rows:
        rows = sorted(rows, key=lambda r: -r["compressed_bytes"])[:max_rows]
    lines = [f"artifact {rep['artifact']}  scheme {rep['scheme']}  codec {rep['codec']}", "",
             f"{'tensor':40s} {'shape':>14s} {'scheme':>12s} {'bits':>4s} {'stored':>11s} {'compressed':>11s} "
             f"{'rel_err':>8s}  extras"]
    for r in rows:
        err = f"{r['rel_err']:.4f}" if "rel_err" in r else "-"
        shape = "x".join(str(s) for s in r["shape"]) or "()"
        lines.append(f"{r['name'][:40]:40s} {shape:>14s} {r['scheme'][:12]:>12s} {str(r['bits']):>4s} "
                     f"{r['stored_bytes']:>11,} {r['compressed_bytes']:>11,} {err:>8s}  {','.join(r['extras'])}")
    lines += ["", f"{'group':12s} {'tensors':>7s} {'params':>12s} {'stored':>12s} {'compressed':>12s} {'share':>6s}"]
    att = max(rep["bytes"]["attributed"], 1)
    for g, t in rep["groups"].items():
        lines.append(f"{g:12s} {t['tensors']:>7d} {t['numel']:>12,} {t['stored_bytes']:>12,} "
                     f"{t['compressed_bytes']:>12,} {100 * t['compressed_bytes'] / att:>5.1f}%")
    b = rep["bytes"]
    lines += ["", f"model bytes {b['model']:,} (payload {b['payload']:,} + header/manifest "
                  f"{b['header_and_manifest']:,}; per-tensor attribution sums to {b['attributed']:,})",
              f"code bytes  {b['code']:,}",
              f"total       {b['total']:,} of {b['limit']:,}  headroom {b['headroom']:,}"
              + ("" if b["headroom"] >= 0 else "  OVER BUDGET")]
    return "\n".join(lines)


def plot_bytes(rep: dict[str, Any], out: str | Path) -> Path:
    """Horizontal bars: compressed bytes per group plus code and manifest; the limit in the title."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    b = rep["bytes"]
    labels = list(rep["groups"]) + ["header+manifest", "code"]
    att = max(b["attributed"], 1)
    scale = b["payload"] / att  # attribute the real payload in proportion
    values = [t["compressed_bytes"] * scale for t in rep["groups"].values()] + [b["header_and_manifest"], b["code"]]
    fig, ax = plt.subplots(figsize=(8, 0.45 * len(labels) + 1.6))
    colors = ["tab:blue"] * len(rep["groups"]) + ["tab:gray", "tab:orange"]
    ax.barh(labels[::-1], [v / 1e6 for v in values[::-1]], color=colors[::-1])
    for i, v in enumerate(values[::-1]):
        ax.text(v / 1e6, i, f" {v / 1e6:.3f}", va="center", fontsize=8)
    ax.set_xlabel("MB (decimal)")
    ax.set_title(f"{Path(rep['artifact']).name}: total {b['total'] / 1e6:.3f} MB of {b['limit'] / 1e6:.0f} MB, "
                 f"headroom {b['headroom']:,} B ({rep['codec']})", fontsize=9)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    out = Path(out)
    atomic_write_bytes(out, buf.getvalue())
    return out
