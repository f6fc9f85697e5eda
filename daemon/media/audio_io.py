"""Audio in and out: decoding user clips, mono downmix, resampling, writing WAV files.

Everything inside the daemon is float32 mono numpy at an explicit sample rate; this module is
the boundary where bytes become such arrays and back.
"""
from __future__ import annotations

import io
from math import gcd
from pathlib import Path

import numpy as np
import soundfile
from scipy.signal import resample_poly

from shared.scene import AUDIO_FORMATS


class AudioDecodeError(ValueError):
    """User-supplied audio that cannot be used; the message says what to attach instead."""


def decode_audio(data: bytes) -> tuple[np.ndarray, int]:
    """WAV / FLAC / OGG bytes → (float32 mono samples, sample rate)."""
    if not data:
        raise AudioDecodeError("the audio is empty (0 bytes) — attach a WAV, FLAC or OGG file")
    try:
        kind = soundfile.info(io.BytesIO(data)).format
        samples, rate = soundfile.read(io.BytesIO(data), dtype="float32", always_2d=True)
    except (soundfile.LibsndfileError, RuntimeError, TypeError, ValueError) as exc:
        raise AudioDecodeError(f"the audio cannot be decoded ({exc}) — attach a WAV, FLAC or "
                               f"OGG file") from exc
    if kind not in AUDIO_FORMATS:
        raise AudioDecodeError(f"{kind} audio is not supported — attach a WAV, FLAC or OGG file")
    if samples.shape[0] == 0:
        raise AudioDecodeError("the audio has no samples — attach a recording that is not empty")
    if not np.all(np.isfinite(samples)):
        raise AudioDecodeError("the audio contains NaN or infinite samples — re-export it as "
                               "16- or 24-bit PCM")
    return to_mono(samples), int(rate)


def to_mono(samples: np.ndarray) -> np.ndarray:
    """[frames] or [frames, channels] → [frames] float32, averaging the channels."""
    samples = np.asarray(samples, dtype=np.float32)
    if samples.ndim == 2:
        samples = samples.mean(axis=1, dtype=np.float32)
    return np.ascontiguousarray(samples, dtype=np.float32)


def resample(samples: np.ndarray, from_rate: int, to_rate: int) -> np.ndarray:
    """Band-limited resampling (polyphase windowed-sinc FIR, Kaiser window) in float32.

    The output has exactly ceil(len * to_rate / from_rate) samples, so durations computed
    from sample counts stay exact for rates with a whole ratio (24000 → 16000 keeps 3:2).
    """
    if from_rate <= 0 or to_rate <= 0:
        raise ValueError(f"sample rates must be positive, got {from_rate} → {to_rate}")
    samples = np.asarray(samples, dtype=np.float32)
    if from_rate == to_rate or samples.size == 0:
        return samples.copy()
    common = gcd(from_rate, to_rate)
    out = resample_poly(samples, to_rate // common, from_rate // common)
    return out.astype(np.float32, copy=False)


def write_wav(path: Path, samples: np.ndarray, rate: int, subtype: str = "PCM_16") -> Path:
    """A WAV file for people and players: 16-bit PCM by default (the mix is peak-guarded below
    full scale, so nothing clips)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    soundfile.write(str(path), np.asarray(samples, dtype=np.float32), rate, subtype=subtype,
                    format="WAV")
    return path


def wav_bytes(samples: np.ndarray, rate: int, subtype: str = "PCM_16") -> bytes:
    """The same as write_wav, in memory (for previews sent over the socket)."""
    buffer = io.BytesIO()
    soundfile.write(buffer, np.asarray(samples, dtype=np.float32), rate, subtype=subtype,
                    format="WAV")
    return buffer.getvalue()
