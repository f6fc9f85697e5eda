"""TTS: one object that speaks any catalog voice, choosing the engine, the fallback and the cache.

    tts = TTS(weights_dir=Path("weights"), cache_dir=Path("state/tts-cache"), device="cuda")
    speech = tts.synthesize("Hello!", "af_heart", speed=1.0)   # Speech(samples, 24000, ...)

A Kokoro voice without its weights (or its G2P) is spoken by the closest installed voice —
another Kokoro voice of the same language and gender, else espeak-ng — and `Speech.warning`
says so; only an unknown id raises VoiceError. One lock serializes synthesis: previews arrive
on the daemon's I/O thread while the worker renders, and neither the Kokoro G2P nor the model
is meant to run twice at once.
"""
from __future__ import annotations

import threading
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch

from daemon.models.loader import WeightsError
from daemon.tts.cache import SpeechCache, speech_key
from daemon.tts.espeak import EspeakBackend
from daemon.tts.kokoro import FOLDER as KOKORO_FOLDER
from daemon.tts.kokoro import KokoroBackend
from daemon.tts.speech import POSTPROCESS_VERSION, Speech, check_request, trim_silence
from shared.voices import ESPEAK, KNOWN_VOICES, KOKORO, VoiceInfo, closest_installed, voice_info


@dataclass
class TTSStats:
    """Counters for the bench and the tests (a cache hit must not synthesize)."""
    synthesized: int = 0
    cache_hits: int = 0


class TTS:
    def __init__(self, weights_dir: Path, cache_dir: Path, device: str | torch.device = "cpu",
                 espeak_program: str = "espeak-ng"):
        self.cache = SpeechCache(cache_dir)
        self.stats = TTSStats()
        self._kokoro = KokoroBackend(Path(weights_dir) / KOKORO_FOLDER, device)
        self._espeak = EspeakBackend(espeak_program)
        self._backends = {KOKORO: self._kokoro, ESPEAK: self._espeak}
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ catalog and health

    def installed_ids(self) -> set[str]:
        return self._kokoro.installed_voices() | self._espeak.installed_voices()

    def voices(self) -> list[VoiceInfo]:
        installed = self.installed_ids()
        return [replace(info, installed=info.id in installed) for info in KNOWN_VOICES.values()]

    def info(self) -> dict:
        """Engines and their state, for the daemon's `info` reply (plain JSON-able values)."""
        return {
            "backends": {name: asdict(backend.state()) for name, backend in self._backends.items()},
            "voices_installed": len(self.installed_ids()),
            "voices_known": len(KNOWN_VOICES),
            "cache_dir": str(self.cache.folder),
        }

    def preload(self) -> None:
        """Load Kokoro and the G2P of every language it has voices for, now (the daemon calls
        this at start) rather than on the first request, which would then take seconds.
        Missing or broken weights are not an error here: voices fall back, info() says why."""
        with self._lock:
            languages = {KNOWN_VOICES[v].lang for v in self._kokoro.installed_voices()}
            if not languages:
                return
            try:
                self._kokoro.load()
            except WeightsError:
                return
            for lang in sorted(languages):
                self._kokoro.g2p(lang)

    # ------------------------------------------------------------------ speaking

    def resolve(self, voice: str) -> tuple[VoiceInfo, str | None]:
        """The voice that will speak for `voice` now, and the fallback warning if it differs."""
        wanted = voice_info(voice)
        used, warning = closest_installed(voice, self.installed_ids())
        if warning and wanted.backend == KOKORO:
            warning = f"{warning} ({self._kokoro.why_missing(voice)})"
        return used, warning

    def synthesize(self, text: str, voice: str, speed: float = 1.0) -> Speech:
        text = check_request(text, speed)
        with self._lock:
            used, warning = self.resolve(voice)
            try:
                return self._speak(text, used, speed, warning)
            except WeightsError:
                # Kokoro failed to load (a corrupt download…): it now reports itself
                # unavailable, so resolving again picks an installed fallback voice.
                used, warning = self.resolve(voice)
                return self._speak(text, used, speed, warning)

    def _speak(self, text: str, used: VoiceInfo, speed: float, warning: str | None) -> Speech:
        backend = self._backends[used.backend]
        key = speech_key(text, used.id, speed, used.backend, backend.fingerprint(used.id),
                         POSTPROCESS_VERSION)
        hit = self.cache.get(key)
        if hit is not None:
            self.stats.cache_hits += 1
            samples, rate = hit
            return Speech(samples, rate, used.id, used.backend, warning, cached=True)
        samples, rate = backend.synthesize(text, used.id, speed)
        samples = trim_silence(np.asarray(samples, dtype=np.float32), rate)
        self.cache.put(key, samples, rate)
        self.stats.synthesized += 1
        return Speech(samples, rate, used.id, used.backend, warning)
