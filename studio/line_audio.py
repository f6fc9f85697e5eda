"""A line's own audio — an uploaded file or a microphone recording — played instead of TTS.

The daemon decodes, resamples and loudness-matches it; the studio only attaches it, and checks
it first with shared.scene's own rules (formats, size, length, sample rate), so that a file the
studio accepts is one a project saves and a render plays.
"""
from __future__ import annotations

import io
from dataclasses import dataclass

import soundfile

from shared.scene import MAX_AUDIO_BYTES, MAX_AUDIO_SECONDS, PAUSE_RANGE, Line, audio_duration

# The file names of what shared.scene.audio_duration accepts (its AUDIO_FORMATS: WAV, FLAC, OGG
# with Vorbis or Opus). Not MP3 (libsndfile reads it, the scene's check refuses it) nor M4A/AAC
# (libsndfile cannot read it).
UPLOAD_TYPES = ("wav", "flac", "ogg", "oga", "opus")
# The uploader refuses larger files before they travel (and says this limit under it).
MAX_UPLOAD_MB = MAX_AUDIO_BYTES // 2**20
# The daemon mixes the dialogue at 24 kHz: a finer recording would add bytes, not sound.
RECORDING_RATE = 24_000
_MIME = {"WAV": "audio/wav", "WAVEX": "audio/wav", "FLAC": "audio/flac", "OGG": "audio/ogg"}


@dataclass(frozen=True)
class OwnAudio:
    """What the studio shows about a line's own audio."""
    seconds: float
    kind: str   # soundfile's format name: "WAV", "WAVEX", "FLAC" or "OGG"

    @property
    def mime(self) -> str:
        return _MIME.get(self.kind, "audio/wav")

    @property
    def label(self) -> str:
        return f"{self.seconds:.1f} s"


def inspect_audio(data: bytes, name: str = "audio") -> OwnAudio:
    """Read the whole file as a project would. Raises ProjectError naming `name`, the problem
    and the fix (not a WAV/FLAC/OGG file, corrupt, too large, too long, odd sample rate)."""
    seconds = audio_duration(data, name)
    return OwnAudio(seconds=seconds, kind=soundfile.info(io.BytesIO(data)).format)


def attach_audio(line: Line, data: bytes, name: str = "audio") -> OwnAudio:
    """Give `line` this audio instead of TTS, once it passes inspect_audio (else the line is
    left as it was and ProjectError says why)."""
    own = inspect_audio(data, name)
    line.audio = data
    # A longer overlap than the new audio allows (left from a longer one) would not save.
    line.pause_after = max(line.pause_after, pause_floor(own.seconds))
    return own


def remove_audio(line: Line) -> None:
    """Back to TTS: the line is spoken with its voice and speed again."""
    line.audio = None
    line.pause_after = max(line.pause_after, PAUSE_RANGE[0])


def pause_floor(seconds: float | None) -> float:
    """The lowest pause_after a line may have: a line with its own audio may overlap the next
    by its whole length (both heard at once, as MultiTalk's "para" audio); others by
    PAUSE_RANGE's."""
    return PAUSE_RANGE[0] if seconds is None else min(PAUSE_RANGE[0], -seconds)


def accepted() -> str:
    """The rules in words, from shared.scene's limits."""
    return (f"WAV, FLAC or OGG (Vorbis or Opus), up to {MAX_AUDIO_SECONDS / 60:.0f} minutes "
            f"and {MAX_AUDIO_BYTES // 2**20} MB")
