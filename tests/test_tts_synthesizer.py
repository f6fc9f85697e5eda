"""TTS: request checks, voice fallback, the content-addressed cache (espeak-ng, no Kokoro weights)."""
import shutil

import numpy as np
import pytest

from daemon.tts import TTS, SpeechError
from daemon.tts.cache import speech_key
from daemon.tts.speech import TRIM_MARGIN_S, trim_silence
from shared.voices import VoiceError

pytestmark = pytest.mark.skipif(shutil.which("espeak-ng") is None,
                                reason="espeak-ng not installed (apt-get install -y espeak-ng)")


@pytest.fixture
def tts(tmp_path):
    return TTS(weights_dir=tmp_path / "weights", cache_dir=tmp_path / "cache")


def test_second_request_for_the_same_line_comes_from_the_cache(tts):
    first = tts.synthesize("See you tomorrow.", "espeak:en-us", 1.0)
    second = tts.synthesize("See you tomorrow.", "espeak:en-us", 1.0)
    assert (tts.stats.synthesized, tts.stats.cache_hits) == (1, 1)
    assert (first.cached, second.cached) == (False, True)
    assert second.sample_rate == first.sample_rate == 22050
    np.testing.assert_array_equal(second.samples, first.samples)


def test_cache_is_shared_by_every_tts_on_the_same_folder(tmp_path):
    preview = TTS(tmp_path / "weights", tmp_path / "cache")
    preview.synthesize("Shared line.", "espeak:en-us+f3", 1.25)
    render = TTS(tmp_path / "weights", tmp_path / "cache")
    speech = render.synthesize("Shared line.", "espeak:en-us+f3", 1.25)
    assert speech.cached and render.stats.synthesized == 0


def test_text_voice_and_speed_each_make_a_new_cache_entry(tts):
    tts.synthesize("One.", "espeak:en-us", 1.0)
    tts.synthesize("Two.", "espeak:en-us", 1.0)
    tts.synthesize("One.", "espeak:en-us+f3", 1.0)
    tts.synthesize("One.", "espeak:en-us", 1.5)
    assert (tts.stats.synthesized, tts.stats.cache_hits) == (4, 0)


def test_surrounding_whitespace_does_not_change_the_line(tts):
    tts.synthesize("Hello.", "espeak:en-us")
    assert tts.synthesize("  Hello.\n", "espeak:en-us").cached


def test_a_damaged_cache_file_is_synthesized_again(tts):
    tts.synthesize("Damage me.", "espeak:en-us")
    [entry] = list(tts.cache.folder.rglob("*.wav"))
    entry.write_bytes(b"not a wav")
    speech = tts.synthesize("Damage me.", "espeak:en-us")
    assert not speech.cached and tts.stats.synthesized == 2


def test_key_covers_engine_fingerprint_and_postprocessing():
    base = speech_key("Hi", "af_heart", 1.0, "kokoro", "v1", "trim")
    assert base == speech_key("Hi", "af_heart", 1.0, "kokoro", "v1", "trim")
    assert len({base, speech_key("Hi", "af_heart", 1.0, "kokoro", "v2", "trim"),
                speech_key("Hi", "af_heart", 1.0, "kokoro", "v1", "no-trim")}) == 3


def test_kokoro_voice_without_weights_is_spoken_by_espeak_with_a_warning(tts):
    speech = tts.synthesize("Hello there.", "af_heart")
    assert (speech.voice_used, speech.backend) == ("espeak:en-us+f3", "espeak")
    assert speech.warning.startswith("voice af_heart is not installed — using espeak:en-us+f3")
    assert "Kokoro-82M/config.json missing — run weights/download.sh kokoro" in speech.warning


def test_mandarin_kokoro_voice_falls_back_to_mandarin_espeak(tts):
    speech = tts.synthesize("你好。", "zm_yunxi")
    assert speech.voice_used == "espeak:cmn"
    assert speech.samples.shape[0] > 0.2 * speech.sample_rate


@pytest.mark.parametrize("text", ["", "   \n\t"])
def test_empty_text_is_refused(tts, text):
    with pytest.raises(SpeechError, match="nothing to say"):
        tts.synthesize(text, "espeak:en-us")


@pytest.mark.parametrize("speed", [0.49, 2.01, 0.0, -1.0])
def test_speed_outside_half_to_double_is_refused(tts, speed):
    with pytest.raises(SpeechError, match=r"out of range 0.5–2.0"):
        tts.synthesize("Hello.", "espeak:en-us", speed)


def test_unknown_voice_is_refused(tts):
    with pytest.raises(VoiceError, match="unknown voice 'am_nobody'"):
        tts.synthesize("Hello.", "am_nobody")


def test_voice_list_marks_what_is_installed(tts):
    installed = {v.id for v in tts.voices() if v.installed}
    assert "espeak:cmn+f3" in installed and "af_heart" not in installed
    assert len(tts.voices()) == 72


def test_info_reports_each_engine_and_why_kokoro_is_off(tts):
    info = tts.info()
    assert info["backends"]["espeak"]["available"] is True
    kokoro = info["backends"]["kokoro"]
    assert kokoro["available"] is False
    assert kokoro["detail"].endswith("config.json missing — run weights/download.sh kokoro")
    assert info["voices_installed"] == 18


def test_synthesized_lines_are_trimmed_to_a_short_margin(tts):
    speech = tts.synthesize("Trim me.", "espeak:en-us")
    raw, _ = tts._espeak.synthesize("Trim me.", "espeak:en-us", 1.0)
    margin = int(round(TRIM_MARGIN_S * speech.sample_rate))
    loud = np.flatnonzero(np.abs(speech.samples) >= np.max(np.abs(speech.samples)) * 0.01)
    assert loud[0] <= margin        # espeak starts speaking within the margin already
    assert speech.samples.shape[0] - 1 - loud[-1] == margin
    assert speech.samples.shape[0] < raw.shape[0]


def test_trim_keeps_the_margin_around_the_sound():
    rate = 1000
    samples = np.zeros(3000, dtype=np.float32)
    samples[1000:1500] = 0.5
    trimmed = trim_silence(samples, rate)
    assert trimmed.shape[0] == 500 + 2 * 50
    assert trim_silence(np.zeros(10, np.float32), rate).shape[0] == 10
