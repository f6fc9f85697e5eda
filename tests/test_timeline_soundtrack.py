"""The dialogue soundtrack: placement to the exact sample, speaker tracks, levels, errors.

Lines with user recordings (24 kHz tones of exact lengths) make every offset predictable; the
espeak-ng lines check the TTS path and loudness matching.
"""
import io
import math
import shutil

import numpy as np
import pytest
import soundfile

from daemon.media.audio_io import AudioDecodeError
from daemon.media.loudness import integrated_loudness, true_peak
from daemon.pipeline.progress import Cancelled, Progress, Reporter
from daemon.tts import TTS, SpeechError
from daemon.tts.timeline import (MIX_RATE, MIX_TARGET_LUFS, SPEAKER_RATE, LineTiming,
                                 SoundtrackError, build_soundtrack, place_lines)
from shared.scene import Crop, Line, Person, Placement, Scene
from shared.voices import VoiceError

needs_espeak = pytest.mark.skipif(shutil.which("espeak-ng") is None,
                                  reason="espeak-ng not installed (apt-get install -y espeak-ng)")


def person(name: str, voice: str, x: float) -> Person:
    return Person(name=name, image=None, crop=Crop(0, 0, 1, 1),
                  placement=Placement(x, 0.6, 0.8), voice=voice, lang="en")


def scene_of(*lines: Line) -> Scene:
    return Scene(cast=[person("Ada", "espeak:en-us+f3", 0.3), person("Bo", "espeak:en-us", 0.7)],
                 lines=list(lines))


def tone(samples: int, rate: int = MIX_RATE, amplitude: float = 0.3, channels: int = 1,
         fmt: str = "WAV", subtype: str = "FLOAT") -> bytes:
    t = np.arange(samples) / rate
    wave = (amplitude * np.sin(2 * np.pi * 220 * t)).astype(np.float32)
    data = np.stack([wave] * channels, axis=1) if channels > 1 else wave
    buffer = io.BytesIO()
    soundfile.write(buffer, data, rate, format=fmt, subtype=subtype)
    return buffer.getvalue()


def nonzero_span(track: np.ndarray) -> tuple[int, int]:
    idx = np.flatnonzero(track)
    return int(idx[0]), int(idx[-1]) + 1


@pytest.fixture
def tts(tmp_path):
    return TTS(tmp_path / "weights", tmp_path / "cache")


# ---------------------------------------------------------------- placement arithmetic


def test_add_mode_places_each_line_right_after_the_previous_one():
    starts, total = place_lines([4000, 2000, 1000], [0.5, 0.25, 0.125], [0.0, 0.0, 0.0])
    assert (starts, total) == ([0, 4000, 6000], 7000)


def test_pause_after_opens_a_gap_rounded_to_the_tick_grid():
    starts, total = place_lines([4000, 2000], [0.5, 0.25], [0.3, 0.0])
    assert (starts, total) == ([0, 4000 + 2400, ], 8400)


def test_negative_pause_overlaps_the_next_line():
    starts, total = place_lines([4000, 2000], [0.5, 0.25], [-0.1, 0.0])
    assert (starts, total) == ([0, 3200], 5200)


def test_para_mode_starts_the_next_line_with_this_one():
    # A pause of exactly -duration: the tick rounding of a 0.500041 s clip must not start
    # the second line a tick late.
    starts, total = place_lines([4001, 2000], [12001 / 24000, 0.25], [-12001 / 24000, 0.0])
    assert (starts, total) == ([0, 0], 4001)


def test_overlap_longer_than_the_line_is_clamped_to_its_start():
    starts, _ = place_lines([1000, 4000, 2000], [0.125, 0.5, 0.25], [0.1, -5.0, 0.0])
    assert starts == [0, 1800, 1800]


def test_pause_after_the_last_line_is_silence_at_the_end():
    assert place_lines([4000], [0.5], [0.25]) == ([0], 6000)
    assert place_lines([4000], [0.5], [-0.25]) == ([0], 4000)


# ---------------------------------------------------------------- whole soundtracks


def test_add_mode_soundtrack_to_the_exact_sample(tts):
    scene = scene_of(Line(0, "", pause_after=0.0, audio=tone(12000)),
                     Line(1, "", pause_after=0.0, audio=tone(6000)))
    track = build_soundtrack(scene, tts)
    assert track.timings == [LineTiming(0, 0, 0.0, 0.5, ""), LineTiming(1, 1, 0.5, 0.75, "")]
    assert track.duration == 0.75
    assert track.mixed.shape == (18000,)
    assert [t.shape for t in track.speakers] == [(12000,), (12000,)]
    assert nonzero_span(track.speakers[0]) == (0, 8000)        # 0.5 s at 16 kHz
    assert nonzero_span(track.speakers[1]) == (8000, 12000)
    # The mix holds the first tone unchanged but for one gain (the loudness normalization).
    original = soundfile.read(io.BytesIO(tone(12000)), dtype="float32")[0]
    gain = track.mixed[6000] / original[6000]
    np.testing.assert_allclose(track.mixed[:12000], original * gain, rtol=1e-5, atol=1e-6)


def test_para_mode_soundtrack_both_speakers_start_together(tts):
    scene = scene_of(Line(0, "", pause_after=-0.5, audio=tone(12000)),
                     Line(1, "", pause_after=0.0, audio=tone(6000)))
    track = build_soundtrack(scene, tts)
    assert [(t.start, t.end) for t in track.timings] == [(0.0, 0.5), (0.0, 0.25)]
    assert track.duration == 0.5
    assert nonzero_span(track.speakers[0]) == (0, 8000)
    assert nonzero_span(track.speakers[1]) == (0, 4000)


def test_overlap_places_the_second_speaker_inside_the_first_line(tts):
    scene = scene_of(Line(0, "", pause_after=-0.125, audio=tone(12000)),
                     Line(1, "", pause_after=0.5, audio=tone(6000)))
    track = build_soundtrack(scene, tts)
    assert [(t.start, t.end) for t in track.timings] == [(0.0, 0.5), (0.375, 0.625)]
    assert track.duration == 1.125                               # 0.5 s pause after the last line
    assert nonzero_span(track.speakers[1]) == (6000, 10000)
    assert track.speakers[1].shape == (18000,)


def test_speaker_without_lines_gets_a_silent_track_of_full_length(tts):
    scene = scene_of(Line(0, "", pause_after=0.0, audio=tone(6000)))
    track = build_soundtrack(scene, tts)
    assert track.speakers[1].shape == (4000,) and not np.any(track.speakers[1])


def test_user_audio_is_downmixed_and_resampled_to_both_rates(tts):
    stereo_16k = tone(8000, rate=16000, channels=2, fmt="FLAC", subtype="PCM_24")  # 0.5 s
    track = build_soundtrack(scene_of(Line(0, "", pause_after=0.0, audio=stereo_16k)), tts)
    assert track.timings[0].end == 0.5
    assert track.mixed.shape == (12000,) and track.speakers[0].shape == (8000,)


@needs_espeak
def test_tts_lines_are_timed_from_their_sample_counts(tts):
    scene = scene_of(Line(0, "Hello Bo, good to see you.", pause_after=0.25),
                     Line(1, "Hi Ada! Likewise.", pause_after=0.0))
    track = build_soundtrack(scene, tts)
    first = tts.synthesize("Hello Bo, good to see you.", "espeak:en-us+f3")   # cached
    ticks = math.ceil(math.ceil(first.samples.shape[0] * 24000 / 22050) / 3)
    assert track.timings[0] == LineTiming(0, 0, 0.0, ticks / 8000, "Hello Bo, good to see you.")
    assert track.timings[1].start == ticks / 8000 + 0.25
    assert track.mixed.shape[0] == round(track.duration * MIX_RATE)
    assert track.speakers[0].shape[0] == round(track.duration * SPEAKER_RATE)


def test_mix_is_normalized_to_the_target_loudness(tts):
    track = build_soundtrack(scene_of(Line(0, "", pause_after=0.0, audio=tone(48000))), tts)
    assert integrated_loudness(track.mixed, MIX_RATE) == pytest.approx(MIX_TARGET_LUFS, abs=0.05)


def test_a_peaky_mix_stays_under_the_true_peak_ceiling_instead_of_reaching_the_target(tts):
    clicks = np.zeros(48000, dtype=np.float32)
    clicks[::2400] = 0.9
    buffer = io.BytesIO()
    soundfile.write(buffer, clicks, MIX_RATE, format="WAV", subtype="FLOAT")
    track = build_soundtrack(scene_of(Line(0, "", pause_after=0.0, audio=buffer.getvalue())), tts)
    assert 20 * math.log10(true_peak(track.mixed)) == pytest.approx(-1.0, abs=0.01)
    assert integrated_loudness(track.mixed, MIX_RATE) < MIX_TARGET_LUFS - 1


@needs_espeak
def test_user_recording_is_loudness_matched_to_the_tts_lines(tts):
    quiet = tone(24000, amplitude=0.01)          # about -43 LUFS
    scene = scene_of(Line(0, "This line is synthesized by espeak.", pause_after=0.5),
                     Line(1, "", pause_after=0.0, audio=quiet))
    track = build_soundtrack(scene, tts)
    tts_line, user_line = track.timings
    rate = SPEAKER_RATE
    speech = track.speakers[0][int(tts_line.start * rate):int(tts_line.end * rate)]
    recording = track.speakers[1][int(user_line.start * rate):int(user_line.end * rate)]
    assert integrated_loudness(recording, rate) == \
        pytest.approx(integrated_loudness(speech, rate), abs=1.0)


@needs_espeak
def test_fallback_warnings_are_recorded_once_per_voice(tts):
    scene = Scene(cast=[person("Ada", "af_heart", 0.3), person("Bo", "am_michael", 0.7)],
                  lines=[Line(0, "One."), Line(1, "Two."), Line(0, "Three.")])
    track = build_soundtrack(scene, tts)
    assert [w.split(" — ")[0] for w in track.warnings] == \
        ["voice af_heart is not installed", "voice am_michael is not installed"]


@needs_espeak
def test_progress_is_reported_per_line_and_cancel_stops_between_lines(tts):
    events = []
    scene = scene_of(Line(0, "One."), Line(1, "Two."))
    build_soundtrack(scene, tts, Reporter(on_progress=events.append))
    assert [(e.phase, e.step, e.total) for e in events] == [("tts", 1, 2), ("tts", 2, 2)]

    def cancel_after_first(progress: Progress):
        cancelled.append(True)

    cancelled = []
    with pytest.raises(Cancelled):
        build_soundtrack(scene, tts, Reporter(on_progress=cancel_after_first,
                                              is_cancelled=lambda: bool(cancelled)))
    assert len(cancelled) == 1


# ---------------------------------------------------------------- bad input


def test_corrupt_user_audio_names_the_line(tts):
    scene = scene_of(Line(0, "", audio=tone(2400)), Line(1, "", audio=b"RIFF\x00\x00garbage"))
    with pytest.raises(AudioDecodeError, match="line 2: the audio cannot be decoded"):
        build_soundtrack(scene, tts)


def test_line_without_text_or_audio_names_the_line(tts):
    with pytest.raises(SpeechError, match="line 1: nothing to say"):
        build_soundtrack(scene_of(Line(0, "  ")), tts)


def test_unknown_voice_names_the_line(tts):
    with pytest.raises(VoiceError, match="line 1: unknown voice 'zz_who'"):
        build_soundtrack(scene_of(Line(0, "Hi.", voice="zz_who")), tts)


def test_speaker_outside_the_cast_is_refused(tts):
    with pytest.raises(SoundtrackError, match="line 1: speaker 2 is not in the cast"):
        build_soundtrack(scene_of(Line(2, "Hi.")), tts)


def test_scene_without_lines_is_refused(tts):
    with pytest.raises(SoundtrackError, match="no lines"):
        build_soundtrack(scene_of(), tts)
