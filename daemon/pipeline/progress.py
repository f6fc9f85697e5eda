"""What a running pipeline reports, and how it learns that it must stop.

Pipelines call `report(Progress(...))` between steps or frames and `check()` at the same
points; the worker turns Progress into protocol events and cancel requests into `Cancelled`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable


class Cancelled(Exception):
    """The job was cancelled by a client; raised at the next check point."""


@dataclass(frozen=True)
class Progress:
    phase: str                 # "tts", "audio", "encode", "sample", "decode", "mux", "frames"
    step: int = 0              # steps (or frames) done in this phase
    total: int = 0             # steps (or frames) in this phase; 0 = unknown
    clip: int = 0              # 1-based clip being rendered; 0 = not clip-based
    clips: int = 0
    message: str = ""
    preview: bytes | None = None   # small JPEG of the current frame, when available


class Reporter:
    """Bundles the two callbacks a pipeline needs; both may be no-ops."""

    def __init__(self, on_progress: Callable[[Progress], None] | None = None,
                 is_cancelled: Callable[[], bool] | None = None):
        self._on_progress = on_progress or (lambda p: None)
        self._is_cancelled = is_cancelled or (lambda: False)

    def report(self, progress: Progress) -> None:
        self._on_progress(progress)

    def check(self) -> None:
        if self._is_cancelled():
            raise Cancelled()
