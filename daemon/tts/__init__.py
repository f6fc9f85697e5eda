"""Text to speech and the dialogue soundtrack: Kokoro-82M when its weights are there, espeak-ng
always. `TTS` speaks single lines (cached); `timeline.build_soundtrack` turns a scene into the
mixed track, one track per speaker and the line timings; `subtitles` writes SRT/WebVTT."""
from daemon.tts.speech import BackendState, Speech, SpeechError
from daemon.tts.synthesizer import TTS, TTSStats

__all__ = ["TTS", "TTSStats", "Speech", "SpeechError", "BackendState"]
