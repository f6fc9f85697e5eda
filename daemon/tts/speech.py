"""What a synthesizer returns, the checks on what it is asked, and the one post-processing step.

Kept apart from the engines so the cache, the timeline and both backends share one definition.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from shared.scene import SPEED_RANGE

# Leading/trailing silence is trimmed to this margin, so `pause_after` is the gap the user asked
# for: Kokoro pads each utterance with ~0.2–0.3 s of near-silence and espeak-ng with ~0.1 s,
# which would otherwise add up to half a second of dead air between turns.
TRIM_THRESHOLD_DB = -40.0   # relative to the clip's peak
TRIM_MARGIN_S = 0.05
# Bump when trimming (or anything else applied after synthesis) changes: it is part of the
# cache key, so old cached audio is not reused with new post-processing.
POSTPROCESS_VERSION = "trim-40dB-50ms"


class SpeechError(ValueError):
    """A synthesis request that cannot be honoured as asked; the message says the fix."""


@dataclass(frozen=True)
class Speech:
    samples: np.ndarray          # float32 mono
    sample_rate: int
    voice_used: str              # the voice that spoke (differs from the request on fallback)
    backend: str                 # "kokoro" | "espeak"
    warning: str | None = None   # set when voice_used is a fallback
    cached: bool = False         # True when the audio came from the cache

    @property
    def duration(self) -> float:
        return self.samples.shape[0] / self.sample_rate


@dataclass(frozen=True)
class BackendState:
    """One engine's health, for `TTS.info()` and the studio's status panel."""
    name: str
    available: bool
    version: str      # engine version ("" when unavailable)
    detail: str       # where it runs / why it is unavailable and how to fix it
    notes: tuple[str, ...] = ()   # degraded-but-working pieces (e.g. offline G2P fallbacks)


class Backend(Protocol):
    name: str

    def state(self) -> BackendState: ...

    def installed_voices(self) -> set[str]: ...

    def fingerprint(self, voice_id: str) -> str: ...

    def synthesize(self, text: str, voice_id: str, speed: float) -> tuple[np.ndarray, int]: ...


def check_request(text: str, speed: float) -> str:
    """The text to speak (whitespace-trimmed); SpeechError for empty text or a bad speed."""
    if not isinstance(text, str) or not text.strip():
        raise SpeechError("nothing to say: the text is empty — type the line, or attach a "
                          "recording to it")
    low, high = SPEED_RANGE
    if not (low <= float(speed) <= high):
        raise SpeechError(f"speed {speed} is out of range {low}–{high} (1.0 = normal)")
    return text.strip()


def trim_silence(samples: np.ndarray, rate: int) -> np.ndarray:
    """Cut leading and trailing silence down to TRIM_MARGIN_S; silence stays as it is."""
    samples = np.asarray(samples, dtype=np.float32)
    peak = float(np.max(np.abs(samples))) if samples.size else 0.0
    if peak == 0.0:
        return samples
    loud = np.flatnonzero(np.abs(samples) >= peak * 10.0 ** (TRIM_THRESHOLD_DB / 20.0))
    margin = int(round(TRIM_MARGIN_S * rate))
    start = max(0, int(loud[0]) - margin)
    end = min(samples.shape[0], int(loud[-1]) + 1 + margin)
    return np.ascontiguousarray(samples[start:end])
