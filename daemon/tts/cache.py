"""Content-addressed storage of synthesized lines, shared by previews and renders.

The key is the sha256 of everything that determines the audio: text, voice, speed, engine and
its fingerprint (versions, weight files, G2P mode) and the post-processing version. A preview
the user liked is therefore exactly the audio the render uses, and re-rendering a project only
synthesizes lines whose text, voice or speed changed.

Entries are float32 WAV files (lossless for the model's float output; FLAC would quantize to
24 bits and make the cached copy differ from the first synthesis) under
<cache_dir>/<key[:2]>/<key>.wav, written to a temporary name and renamed, so a reader on
another thread never sees half a file.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

import numpy as np
import soundfile


def speech_key(text: str, voice: str, speed: float, backend: str, fingerprint: str,
               postprocess: str) -> str:
    identity = json.dumps({"text": text, "voice": voice, "speed": round(float(speed), 4),
                           "backend": backend, "fingerprint": fingerprint,
                           "postprocess": postprocess}, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(identity.encode("utf-8")).hexdigest()


class SpeechCache:
    def __init__(self, folder: Path):
        self.folder = Path(folder)

    def path(self, key: str) -> Path:
        return self.folder / key[:2] / f"{key}.wav"

    def get(self, key: str) -> tuple[np.ndarray, int] | None:
        """(float32 samples, rate), or None when absent or unreadable (then it is rewritten)."""
        path = self.path(key)
        if not path.is_file():
            return None
        try:
            samples, rate = soundfile.read(str(path), dtype="float32")
        except (soundfile.LibsndfileError, RuntimeError):
            return None
        return samples, int(rate)

    def put(self, key: str, samples: np.ndarray, rate: int) -> Path:
        path = self.path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=path.parent, suffix=".partial")
        try:
            with os.fdopen(handle, "wb") as file:
                soundfile.write(file, np.asarray(samples, dtype=np.float32), rate,
                                subtype="FLOAT", format="WAV")
            os.replace(temporary, path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
        return path
