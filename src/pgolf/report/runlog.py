"""Run log: rank-0 lines to the console (rich) and to ``runs/<id>/train.log``.

The log opens with the resolved config, library versions and the GPU description, then
greppable ``key:value`` lines (``step:200/20000 loss:2.91 tok/s:1.45M ...``).
"""

from __future__ import annotations

import platform
import subprocess
import sys
import time
from pathlib import Path

from rich.console import Console


class RunLog:
    def __init__(self, path: str | Path | None, *, enabled: bool = True, console: Console | None = None):
        self.enabled = enabled
        self.path = Path(path) if (path and enabled) else None
        self.console = console or Console(highlight=False, soft_wrap=True)
        if self.path:
            self.path.parent.mkdir(parents=True, exist_ok=True)

    def __call__(self, msg: str, *, console: bool = True) -> None:
        if not self.enabled:
            return
        if console:
            self.console.print(msg, markup=False)
        if self.path:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(msg + "\n")

    def header(self, config_json: str) -> None:
        self(f"# pgolf run log, started {time.strftime('%Y-%m-%d %H:%M:%S %Z')}", console=False)
        self("# resolved config:", console=False)
        self(config_json, console=False)
        self(f"# versions: {versions_line()}", console=False)
        gpu = gpu_description()
        if gpu:
            self("# nvidia-smi:\n" + gpu, console=False)
        self("# " + "=" * 78, console=False)


def versions() -> dict[str, str]:
    import numpy
    import sentencepiece
    import torch

    import pgolf

    out = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "torch": torch.__version__,
        "cuda": str(torch.version.cuda),
        "numpy": numpy.__version__,
        "sentencepiece": sentencepiece.__version__,
        "pgolf": pgolf.__version__,
        "git": git_revision(),
    }
    if torch.cuda.is_available():
        out["gpu"] = torch.cuda.get_device_name(0)
    return out


def versions_line() -> str:
    return " ".join(f"{k}={v}" for k, v in versions().items())


def git_revision() -> str:
    try:
        root = Path(__file__).resolve().parents[3]
        rev = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             timeout=5)
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5)
        if rev.returncode != 0:
            return "unknown"
        return rev.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def gpu_description() -> str:
    try:
        r = subprocess.run(["nvidia-smi"], capture_output=True, text=True, timeout=10)
        return r.stdout.strip() if r.returncode == 0 else ""
    except (OSError, subprocess.SubprocessError):
        return ""


def fmt_rate(x: float) -> str:
    return f"{x / 1e6:.3f}M" if x >= 1e5 else f"{x / 1e3:.1f}k"


def fmt_eta(seconds: float) -> str:
    seconds = max(0, int(seconds))
    return f"{seconds // 60}m{seconds % 60:02d}s"
