"""Training clock: counts only training time.

Compile warm-up runs before `start()`; evaluation runs inside `paused()`. The challenge caps
this number at 600 s. On CUDA the clock synchronizes the device at every boundary so queued
kernels are charged to the right side.
"""

from __future__ import annotations

import contextlib
import time
from typing import Iterator

import torch


class Clock:
    def __init__(self, device: torch.device, elapsed_s: float = 0.0):
        self.device = device
        self._banked = elapsed_s  # time from before a resume
        self._t0: float | None = None

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def start(self) -> None:
        self._sync()
        self._t0 = time.perf_counter()

    def elapsed(self) -> float:
        """Training seconds so far (host clock; no sync, like the official loop's per-step check)."""
        if self._t0 is None:
            return self._banked
        return self._banked + time.perf_counter() - self._t0

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        self._sync()
        running = self._t0 is not None
        if running:
            self._banked += time.perf_counter() - self._t0
            self._t0 = None
        try:
            yield
        finally:
            if running:
                self.start()
