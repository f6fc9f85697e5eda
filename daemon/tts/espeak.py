"""espeak-ng: the always-available voice (formant synthesis, no weights, ~25 ms per line).

Runs the Debian `espeak-ng` program with `--stdout` (a WAV on stdout, no temp files) and the text
on stdin (so a line starting with "-" is never taken for an option). A process per line keeps
espeak's global C state out of the daemon, so previews on the I/O thread and renders on the
worker never share it.
"""
from __future__ import annotations

import io
import shutil
import subprocess

import numpy as np
import soundfile

from daemon.tts.speech import BackendState, SpeechError
from shared.voices import ESPEAK, ESPEAK_PREFIX, KNOWN_VOICES

PROGRAM = "espeak-ng"
INSTALL_HINT = "install it with: apt-get install -y espeak-ng"
# espeak-ng's default rate; Line.speed scales it (0.5 → 87, 2.0 → 350 words per minute).
WORDS_PER_MINUTE = 175
TIMEOUT_S = 60.0


class EspeakBackend:
    name = ESPEAK

    def __init__(self, program: str = PROGRAM):
        self._path = shutil.which(program)
        self._version = ""
        self._languages: set[str] = set()
        self._error = ""
        if self._path is None:
            self._error = f"{program} not found — {INSTALL_HINT}"
            return
        try:
            self._version = _run([self._path, "--version"]).decode().split(":", 1)[1].split()[0]
            self._languages = _parse_languages(_run([self._path, "--voices"]).decode())
        except (OSError, subprocess.SubprocessError, IndexError) as exc:
            self._error = f"{self._path} does not run ({exc}) — reinstall: apt-get install " \
                          f"--reinstall -y espeak-ng"

    def state(self) -> BackendState:
        if self._error:
            return BackendState(ESPEAK, False, "", self._error)
        return BackendState(ESPEAK, True, self._version,
                            f"espeak-ng {self._version} at {self._path}")

    def installed_voices(self) -> set[str]:
        return {voice_id for voice_id, info in KNOWN_VOICES.items()
                if info.backend == ESPEAK and _espeak_voice(voice_id).split("+")[0]
                in self._languages}

    def fingerprint(self, voice_id: str) -> str:
        """What changes this voice's audio for the same text: the espeak-ng version."""
        return f"espeak-ng-{self._version}"

    def synthesize(self, text: str, voice_id: str, speed: float) -> tuple[np.ndarray, int]:
        if self._error:
            raise SpeechError(self._error)
        command = [self._path, "-v", _espeak_voice(voice_id),
                   "-s", str(int(round(WORDS_PER_MINUTE * speed))), "--stdout"]
        try:
            wav = _run(command, stdin=text.encode("utf-8"))
        except subprocess.SubprocessError as exc:
            raise SpeechError(f"espeak-ng failed on {text[:40]!r} ({exc})") from exc
        # espeak streams its WAV with placeholder sizes in the header; libsndfile reads to the end.
        samples, rate = soundfile.read(io.BytesIO(wav), dtype="float32")
        return samples, int(rate)


def _espeak_voice(voice_id: str) -> str:
    # "espeak:en-us+f3" → "en-us+f3"
    return voice_id[len(ESPEAK_PREFIX):]


def _run(command: list[str], stdin: bytes | None = None) -> bytes:
    result = subprocess.run(command, input=stdin, capture_output=True, timeout=TIMEOUT_S)
    if result.returncode != 0:
        raise subprocess.SubprocessError(
            f"exit {result.returncode}: {result.stderr.decode(errors='replace').strip()}")
    return result.stdout


def _parse_languages(listing: str) -> set[str]:
    """Language column of `espeak-ng --voices` (rows: Pty Language Age/Gender VoiceName …)."""
    languages = set()
    for row in listing.splitlines()[1:]:
        fields = row.split()
        if len(fields) >= 2:
            languages.add(fields[1])
    return languages
