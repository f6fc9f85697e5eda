"""The dialogue soundtrack: every line spoken (or the user's recording), placed in time.

    soundtrack = build_soundtrack(scene, tts, reporter)
    soundtrack.mixed        float32 @ MIX_RATE, loudness-normalized: the video's audio
    soundtrack.speakers[j]  float32 @ SPEAKER_RATE, cast member j alone (silence while others
                            speak): what the audio encoder (wav2vec2) hears for that person
    soundtrack.timings      LineTiming per line, in seconds, from exact sample counts

Placement. Line 0 starts at 0. Line i+1 starts `pause_after` seconds after line i ends; a
negative pause overlaps the two. An overlap as long as line i or longer starts line i+1 together
with line i (it never starts earlier than line i): that is MultiTalk's "para" mode (pause =
-duration), and pause 0 is its "add" mode (turns back to back). A positive pause after the last
line is kept as silence at the end, so the video can end on a beat.

The grid. Every start and length is a whole number of ticks of 1/8000 s — 3 samples at 24 kHz,
2 at 16 kHz — so the mix and the speaker tracks place each line at exactly the same instant, with
exact zeros around it, and LineTiming values are exact. A clip is padded with silence to the
next tick (at most 2 samples at 24 kHz); pauses are rounded to the nearest tick.

Levels. Synthesized lines keep their natural level. A user recording is loudness-matched to the
synthesized lines (BS.1770 integrated loudness of all TTS lines together), so a quiet phone
recording does not vanish next to the TTS voice. The speaker tracks stay at that natural level:
the MultiTalk audio pipeline normalizes each speaker's track itself (pyloudnorm, -23 LUFS) before
wav2vec2, so normalizing here would only be undone there. The mix is normalized to
MIX_TARGET_LUFS with a true-peak ceiling (see daemon/media/loudness.py).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from daemon.media.audio_io import AudioDecodeError, decode_audio, resample, write_wav
from daemon.media.loudness import integrated_loudness, normalize_loudness
from daemon.pipeline.progress import Progress, Reporter
from daemon.tts.speech import SpeechError
from daemon.tts.subtitles import to_srt, to_vtt
from shared.voices import VoiceError

MIX_RATE = 24_000       # Kokoro's native rate: its lines are mixed without resampling
SPEAKER_RATE = 16_000   # wav2vec2's input rate
TICK_RATE = 8_000       # the placement grid: gcd(24000, 16000)
# -16 LUFS integrated is the common target for speech in online video and podcasts (AES TD1004,
# Apple/Spotify spoken word); YouTube turns louder uploads down to -14 but never turns quieter
# ones up, so -16 plays at a sensible level everywhere. -1 dBTP leaves the headroom the AAC
# encode needs (its overshoot clips a mix that peaks at full scale).
MIX_TARGET_LUFS = -16.0
MIX_TRUE_PEAK_DBTP = -1.0
USER_AUDIO_CEILING_DBTP = -1.0


class SoundtrackError(ValueError):
    """A scene whose lines cannot make a soundtrack; the message names the line and the fix."""


@dataclass(frozen=True)
class LineTiming:
    line: int       # index into scene.lines
    speaker: int    # index into scene.cast
    start: float    # seconds from the start of the soundtrack
    end: float
    text: str


@dataclass
class Soundtrack:
    mixed: np.ndarray             # float32 mono @ mix_rate
    speakers: list[np.ndarray]    # float32 mono @ speaker_rate, one per cast member, same length
    timings: list[LineTiming]
    duration: float               # seconds; len(mixed) / mix_rate == len(speakers[j]) / speaker_rate
    warnings: list[str] = field(default_factory=list)
    mix_rate: int = MIX_RATE
    speaker_rate: int = SPEAKER_RATE


@dataclass(frozen=True)
class SoundtrackFiles:
    mixed: Path
    speakers: list[Path]
    srt: Path
    vtt: Path


@dataclass
class _Clip:
    """One line's audio at both rates, each padded to `ticks`."""
    mix: np.ndarray          # @ MIX_RATE, 3 * ticks samples
    speaker: np.ndarray      # @ SPEAKER_RATE, 2 * ticks samples
    ticks: int
    seconds: float           # duration before padding
    from_user: bool


def build_soundtrack(scene, tts, reporter: Reporter | None = None) -> Soundtrack:
    """Speak every line of `scene` with `tts` (a daemon.tts.TTS) and lay them out in time."""
    reporter = reporter or Reporter()
    _check_lines(scene)
    warnings: list[str] = []
    clips = []
    total = len(scene.lines)
    for index, line in enumerate(scene.lines):
        reporter.check()
        clips.append(_line_clip(scene, index, tts, warnings))
        reporter.report(Progress(phase="tts", step=index + 1, total=total,
                                 message=f"line {index + 1} of {total}"))
    _match_user_loudness(clips)

    starts, total_ticks = place_lines([clip.ticks for clip in clips],
                                      [clip.seconds for clip in clips],
                                      [line.pause_after for line in scene.lines])
    mixed = np.zeros(total_ticks * (MIX_RATE // TICK_RATE), dtype=np.float32)
    speakers = [np.zeros(total_ticks * (SPEAKER_RATE // TICK_RATE), dtype=np.float32)
                for _ in scene.cast]
    timings = []
    for index, (line, clip, start) in enumerate(zip(scene.lines, clips, starts)):
        at_mix = start * (MIX_RATE // TICK_RATE)
        at_speaker = start * (SPEAKER_RATE // TICK_RATE)
        mixed[at_mix:at_mix + clip.mix.shape[0]] += clip.mix
        speakers[line.speaker][at_speaker:at_speaker + clip.speaker.shape[0]] += clip.speaker
        timings.append(LineTiming(index, line.speaker, start / TICK_RATE,
                                  (start + clip.ticks) / TICK_RATE, line.text.strip()))
    mixed, _ = normalize_loudness(mixed, MIX_RATE, MIX_TARGET_LUFS, MIX_TRUE_PEAK_DBTP)
    return Soundtrack(mixed, speakers, timings, total_ticks / TICK_RATE, warnings)


def place_lines(ticks: list[int], seconds: list[float], pauses: list[float]) -> tuple[list[int], int]:
    """Start tick of every line and the soundtrack's length in ticks (see the module docstring).

    `ticks` are the padded lengths, `seconds` the true durations (used to recognise a pause of
    exactly -duration, whose rounding to ticks could otherwise land a tick late).
    """
    half_tick = 0.5 / TICK_RATE
    starts = []
    start = 0
    end = 0
    for i, (length, duration, pause) in enumerate(zip(ticks, seconds, pauses)):
        starts.append(start)
        end = max(end, start + length)
        if pause < 0 and -pause >= duration - half_tick:
            following = start                      # as long an overlap as the line: together
        else:
            following = max(start, start + length + round(pause * TICK_RATE))
        if i == len(ticks) - 1:
            end = max(end, following)               # a positive last pause is a silent tail
        start = following
    return starts, end


def export_soundtrack(soundtrack: Soundtrack, folder: Path,
                      names: list[str] | None = None) -> SoundtrackFiles:
    """dialogue.wav (the mix), speaker_<n>.wav (16 kHz, per cast member), dialogue.srt/.vtt."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    mixed = write_wav(folder / "dialogue.wav", soundtrack.mixed, soundtrack.mix_rate)
    speakers = [write_wav(folder / f"speaker_{j + 1}.wav", track, soundtrack.speaker_rate)
                for j, track in enumerate(soundtrack.speakers)]
    srt = folder / "dialogue.srt"
    srt.write_text(to_srt(soundtrack.timings, names), encoding="utf-8")
    vtt = folder / "dialogue.vtt"
    vtt.write_text(to_vtt(soundtrack.timings, names), encoding="utf-8")
    return SoundtrackFiles(mixed, speakers, srt, vtt)


# ---------------------------------------------------------------------- lines → clips


def _check_lines(scene) -> None:
    if not scene.lines:
        raise SoundtrackError("the scene has no lines — add at least one line to the script")
    for index, line in enumerate(scene.lines):
        if not 0 <= line.speaker < len(scene.cast):
            raise SoundtrackError(f"line {index + 1}: speaker {line.speaker} is not in the cast "
                                  f"(0–{len(scene.cast) - 1}) — pick who says it")


def _line_clip(scene, index: int, tts, warnings: list[str]) -> _Clip:
    line = scene.lines[index]
    try:
        if line.audio is not None:
            samples, rate = decode_audio(line.audio)
            from_user = True
        else:
            speech = tts.synthesize(line.text, scene.voice_of(index), line.speed)
            samples, rate = speech.samples, speech.sample_rate
            from_user = False
            if speech.warning and speech.warning not in warnings:
                warnings.append(speech.warning)
    except (VoiceError, SpeechError, AudioDecodeError) as exc:
        # Same error type (VoiceError, SpeechError, AudioDecodeError…), with the line named.
        raise type(exc)(f"line {index + 1}: {exc}") from exc
    return _fit_to_ticks(samples, rate, from_user)


def _fit_to_ticks(samples: np.ndarray, rate: int, from_user: bool) -> _Clip:
    seconds = samples.shape[0] / rate
    mix = resample(samples, rate, MIX_RATE)
    ticks = math.ceil(mix.shape[0] / (MIX_RATE // TICK_RATE))
    speaker = resample(samples, rate, SPEAKER_RATE)
    return _Clip(_pad_or_cut(mix, ticks * (MIX_RATE // TICK_RATE)),
                 _pad_or_cut(speaker, ticks * (SPEAKER_RATE // TICK_RATE)),
                 ticks, seconds, from_user)


def _pad_or_cut(samples: np.ndarray, length: int) -> np.ndarray:
    # Resampling rounds lengths up independently per rate: at most a sample either way.
    if samples.shape[0] >= length:
        return samples[:length].astype(np.float32, copy=False)
    return np.pad(samples, (0, length - samples.shape[0])).astype(np.float32, copy=False)


def _match_user_loudness(clips: list[_Clip]) -> None:
    synthesized = [clip.mix for clip in clips if not clip.from_user]
    if not synthesized or len(synthesized) == len(clips):
        return
    reference = integrated_loudness(np.concatenate(synthesized), MIX_RATE)
    if not math.isfinite(reference):
        return
    for clip in clips:
        if clip.from_user:
            clip.mix, gain_db = normalize_loudness(clip.mix, MIX_RATE, reference,
                                                   USER_AUDIO_CEILING_DBTP)
            clip.speaker = (clip.speaker * np.float32(10.0 ** (gain_db / 20.0))).astype(np.float32)
